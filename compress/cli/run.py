"""`compress run`: the whole chain from one recipe (compress.pipeline), flags overriding the recipe.
Any task type: a built-in --task (sst2, mrpc, squad-split, squad, embedding) or data files with
--task-type and the column flags."""

# The speed-target and deployment fields of PruneConfig that `compress run` takes as flags.
TARGET_FIELDS = (
    "target_speedup",
    "target_latency_ms",
    "target_flops",
    "deploy",
    "deploy_shape",
    "deploy_threads",
    "deploy_provider",
    "measure_speed",
    "calibrate",
    "budget_importance",
    "ffn_block",
)
# Training and distillation fields of the recipe's prune section that `compress run` takes as flags.
TRAIN_FIELDS = ("max_length", "eval_max_length", "max_train_samples", "max_eval_samples")
DISTILL_FIELDS = ("embedding_loss", "hidden_weight", "layer_weight")
# The structure fields of the recipe's prune section that `compress run` takes as flags.
STRUCTURE_FIELDS = ("prune_hidden", "lambda_hidden", "hidden_sparsity")


def register(sub):
    from compress.cli.flags import add_config_args
    from compress.core.config import DistillConfig, PruneConfig, RunConfig, TrainConfig

    p = sub.add_parser(
        "run",
        help="the whole chain: prune -> export -> shrink -> quantize -> eval -> bench, with a report "
        "(--resume continues an interrupted run)",
    )
    p.add_argument("--recipe", help="YAML or JSON recipe (RunConfig keys); flags below override it")
    add_config_args(p, RunConfig)
    g = p.add_argument_group("pruning (shortcuts into the recipe's `prune` section)")
    g.add_argument("--teacher", help="fine-tuned teacher and dense baseline (e.g. ../shared/models/minilm-l6-sst2)")
    g.add_argument("--method", help="pruning method (default: hybrid)")
    g.add_argument("--lambda", dest="lambda_reg", type=float, help="final regularisation weight (default: 10)")
    g.add_argument("--sparsity", type=float, help="target fraction of zeros for top-k methods")
    g.add_argument("--max-steps", type=int, help="pruning steps (default 600)")
    add_config_args(g, TrainConfig, only=TRAIN_FIELDS)
    add_config_args(g, DistillConfig, only=DISTILL_FIELDS)
    add_config_args(g, PruneConfig, only=STRUCTURE_FIELDS)
    add_config_args(
        p,
        PruneConfig,
        only=TARGET_FIELDS,
        title="speed target (struct, hybrid): the final structure meets it, no --lambda needed",
    )
    p.add_argument("--output", "-o", required=True)
    p.set_defaults(func=run)


def run(a):
    from compress.api import run
    from compress.cli.flags import given_fields
    from compress.core.config import DistillConfig, PruneConfig, RunConfig, TrainConfig

    cfg = RunConfig.load(a.recipe) if a.recipe else RunConfig()
    given = given_fields(RunConfig, a)
    if (given.get("train_file") or given.get("validation_file")) and "task" not in given:
        given["task"] = None  # the files are the task, not the default one
    for key, value in given.items():
        setattr(cfg, key, value)
    for key, value in given_fields(TrainConfig, a, only=TRAIN_FIELDS).items():
        setattr(cfg.prune.train, key, value)
    for key, value in given_fields(DistillConfig, a, only=DISTILL_FIELDS).items():
        setattr(cfg.prune.distill, key, value)
    if a.teacher:
        cfg.prune.distill.teacher = a.teacher
    if a.method:
        from compress.pruning.methods import get_method

        cfg.prune.method = a.method
        if not get_method(a.method).regularised:  # the recipe's default lambda belongs to soft methods
            cfg.prune.lambda_reg = None
    targets = given_fields(PruneConfig, a, only=TARGET_FIELDS)
    if any(k.startswith("target_") for k in targets):
        # A target replaces the recipe's lambda: the structure is chosen to meet it (struct or hybrid).
        cfg.prune.lambda_reg = None
    for k, v in {**targets, **given_fields(PruneConfig, a, only=STRUCTURE_FIELDS)}.items():
        setattr(cfg.prune, k, v)
    if a.lambda_reg is not None:
        cfg.prune.lambda_reg = a.lambda_reg
    if a.sparsity is not None:
        cfg.prune.sparsity = a.sparsity
    if a.max_steps:
        cfg.prune.train.max_steps = a.max_steps
    run(None, a.output, cfg)
