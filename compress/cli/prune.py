from __future__ import annotations

from compress.cli.common import add_data_args, add_train_args, data_args, print_summary, train_config


def register(sub):
    p = sub.add_parser("prune", help="prune an encoder with one of the methods (see `compress methods`)")
    p.add_argument("--model", "-m", help="student: a local dir or hub name (default: minilm = all-MiniLM-L6-v2, or $COMPRESS_MODEL)")
    p.add_argument("--method", default="hybrid", help="pruning method (default: %(default)s)")
    p.add_argument("--sparsity", type=float, help="target fraction of zeros for top-k methods (magnitude, movement, smp-l, smp-s)")
    p.add_argument("--lambda", dest="lambda_reg", type=float, help="final regularisation weight for soft methods")
    p.add_argument("--lambda-att", type=float, default=1.0, help="multiplier of lambda on attention groups")
    p.add_argument("--lambda-ffn", type=float, default=1.0, help="multiplier of lambda on FFN groups")
    p.add_argument("--block-size", type=int, default=32, help="block method: N x N blocks, 4..64")
    p.add_argument("--tau", type=float, default=0.1, help="final sigmoid threshold of soft methods")
    p.add_argument("--initial-warmup", type=float, default=1.0, help="steps (in units of W) before pruning starts")
    p.add_argument("--final-warmup", type=float, default=2.0, help="cool-down steps (in units of W) at the final mask")
    p.add_argument("--score-lr", type=float, help="mask-score learning rate (default 1e-2; SMP 2e-2)")
    p.add_argument("--score-init", type=_score_init, help="initial mask scores: a constant (the papers' 0), or "
                   "'magnitude' (|W| / mean|W|; the default for per-weight top-k methods: movement, smp-l, smp-s; a constant "
                   "init leaves their top-k near-random in short runs)")
    p.add_argument("--head-lr", type=float, default=1e-3, help="SMP methods: lr of the fresh classifier head (the "
                   "encoder is frozen, so --lr is not used)")
    p.add_argument("--source", help="hybrid-filled: the output directory of a hybrid run")
    p.add_argument("--label-words", nargs="+", help="SMP head-free mode: one word per label read from the MLM head "
                   "(e.g. terrible great); needs a model saved with its MLM head")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", help="fine-tuned teacher (same task and vocabulary; may be larger)")
    g.add_argument("--alpha-ce", type=float, default=0.1)
    g.add_argument("--alpha-teacher", type=float, default=0.9)
    g.add_argument("--temperature", type=float, default=2.0)
    add_data_args(p)
    add_train_args(p, epochs=1.0, lr=3e-5)
    p.set_defaults(func=run)


def run(a):
    from compress.core.config import DistillConfig, PruneConfig
    from compress.training.driver import prune

    cfg = PruneConfig(
        method=a.method, sparsity=a.sparsity, lambda_reg=a.lambda_reg, lambda_att=a.lambda_att, lambda_ffn=a.lambda_ffn,
        block_size=a.block_size, tau=a.tau, initial_warmup=a.initial_warmup, final_warmup=a.final_warmup,
        score_lr=a.score_lr, score_init=a.score_init, head_lr=a.head_lr, source=a.source, label_words=a.label_words, train=train_config(a),
        distill=DistillConfig(teacher=a.teacher, alpha_ce=a.alpha_ce, alpha_teacher=a.alpha_teacher, temperature=a.temperature),
    )
    info = prune(cfg, data_args(a), a.model)
    print_summary(info, a.output)


def _score_init(text: str) -> float | str:
    if text == "magnitude":
        return text
    try:
        return float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'magnitude'") from None
