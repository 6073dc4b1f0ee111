"""`compress finetune`: dense fine-tuning (a teacher or a baseline)."""

from compress.cli.common import add_data_args, add_train_args, data_args, print_summary, train_config


def register(sub):
    p = sub.add_parser("finetune", help="dense fine-tuning (a teacher or a baseline)")
    p.add_argument("--model", "-m", help="a local dir or hub name (default: minilm)")
    add_data_args(p)
    add_train_args(p, lr=5e-5)
    p.set_defaults(func=run)


def run(a):
    from compress.api import finetune

    result = finetune(a.model, a.output, train_config(a), data=data_args(a))
    print_summary(result.report, a.output)
