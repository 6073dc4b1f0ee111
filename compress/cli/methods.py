"""`compress methods`: the pruning methods and the flags that control each."""


def register(sub):
    p = sub.add_parser("methods", help="list the pruning methods")
    p.set_defaults(func=run)


def run(args):
    from rich.console import Console
    from rich.table import Table

    from compress.pruning.methods import METHODS

    t = Table(show_header=True)
    t.add_column("method")
    t.add_column("controls")
    t.add_column("description")
    for m in METHODS.values():
        ctl = "--sparsity" if m.targets_sparsity else ("--lambda" if m.regularised else "--source")
        if m.needs_budget:
            ctl = "--target-speedup / --target-flops"
        elif m.budget_as:
            ctl = "--sparsity or --target-speedup / --target-flops"
        elif m.targets_sparsity and m.regularised:
            ctl = "--sparsity, --lambda"
        t.add_row(m.name, ctl, m.help)
    Console(width=160).print(t)
