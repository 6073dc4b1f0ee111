"""`compress prune`: prune an encoder with one of the methods of `compress methods`."""

from __future__ import annotations

from compress.cli.common import add_data_args, add_train_args, data_args, print_summary, train_config
from compress.cli.flags import add_config_args, config_from_args
from compress.core.config import DistillConfig, PruneConfig, RetrainFreeConfig


def register(sub):
    p = sub.add_parser("prune", help="prune an encoder with one of the methods (see `compress methods`)")
    p.add_argument(
        "--model",
        "-m",
        help="student: a local dir or hub name (default: minilm = all-MiniLM-L6-v2, or $COMPRESS_MODEL)",
    )
    add_config_args(p, PruneConfig)
    add_config_args(p, DistillConfig, title="distillation")
    add_config_args(p, RetrainFreeConfig, title="retrain-free (post-training, no SGD; budget from --target-*)")
    add_data_args(p)
    add_train_args(p)
    p.set_defaults(func=run)


def run(a):
    from compress.api import prune

    cfg = config_from_args(
        PruneConfig,
        a,
        train=train_config(a),
        distill=config_from_args(DistillConfig, a),
        retrain_free=config_from_args(RetrainFreeConfig, a),
    )
    result = prune(a.model, a.output, cfg, data=data_args(a))
    print_summary(result.report, a.output)
