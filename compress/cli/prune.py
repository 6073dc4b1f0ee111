from __future__ import annotations

from compress.cli.common import add_data_args, add_train_args, data_args, print_summary, train_config
from compress.cli.flags import add_config_args, config_from_args
from compress.core.config import DistillConfig, PruneConfig, RetrainFreeConfig


def register(sub):
    p = sub.add_parser("prune", help="prune an encoder with one of the methods (see `compress methods`)")
    p.add_argument("--model", "-m", help="student: a local dir or hub name (default: minilm = all-MiniLM-L6-v2, or $COMPRESS_MODEL)")
    add_config_args(p, PruneConfig)
    add_config_args(p, DistillConfig, title="distillation")
    add_config_args(p, RetrainFreeConfig, title="retrain-free (post-training, no SGD; budget from --target-*)")
    add_target_args(p)
    add_data_args(p)
    add_train_args(p)
    p.set_defaults(func=run)


def run(a):
    from compress.api import prune

    cfg = config_from_args(PruneConfig, a, train=train_config(a), distill=config_from_args(DistillConfig, a),
                           retrain_free=config_from_args(RetrainFreeConfig, a), **target_fields(a))
    result = prune(cfg, a.output, model=a.model, data=data_args(a))
    print_summary(result.report, a.output)


def add_target_args(p) -> None:
    """Speed-target flags (shared with `compress run`)."""
    from compress.cli.latency_table import add_deploy_args

    g = p.add_argument_group("speed target (struct, hybrid, retrain-free, smp-struct): the final structure meets it, no --lambda needed")
    g.add_argument("--target-speedup", type=float, help="x faster than the dense fp32 ONNX graph on the deployment below, e.g. 3")
    g.add_argument("--target-latency-ms", type=float, help="absolute latency budget at --deploy-shape")
    g.add_argument("--target-flops", type=float, help="fraction of dense encoder FLOPs to keep (hardware-free), e.g. 0.33")
    g.add_argument("--ffn-block", type=int, default=32, help="kept FFN widths are multiples of this (default: %(default)s)")
    g.add_argument("--no-measure-speed", action="store_true", help="skip timing the shrunk graph after pruning")
    add_deploy_args(p)


def target_fields(a) -> dict:
    return dict(target_speedup=a.target_speedup, target_latency_ms=a.target_latency_ms, target_flops=a.target_flops,
                deploy=a.deploy, deploy_shape=a.deploy_shape, deploy_threads=a.threads, deploy_provider=a.provider,
                ffn_block=a.ffn_block, measure_speed=not a.no_measure_speed)
