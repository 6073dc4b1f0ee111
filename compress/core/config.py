"""Configuration dataclasses. Every field is a hyper-parameter recorded in compression.json; output
paths are arguments of the functions that write them, never config fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from compress.core.errors import InvalidConfigError


@dataclass
class DistillConfig:
    teacher: str | None = None
    alpha_ce: float = 0.1  # weight of the task cross-entropy when a teacher is given
    alpha_teacher: float = 0.9  # weight of T^2 * KL(student || teacher)
    temperature: float = 2.0


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 64
    eval_max_length: int = 128
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # W = warmup_ratio * T: LR warm-up and the unit of the pruning schedule
    seed: int = 42
    save_steps: int = 500
    logging_steps: int = 25
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class RetrainFreeConfig:
    fisher_samples: int = 2048  # examples for the Fisher information (the paper: 2k)
    tune_samples: int = 512  # examples for the layer-wise least-squares mask tuning
    fisher_labels: str = "model"  # "model": the model's own predictions (no labels needed); "data": the dataset's
    rearrange_swaps: int = 128  # max greedy swaps per layer and unit type (0 disables rearrangement)
    damping: float = 1e-3  # ridge toward the untuned masks, relative to the mean diagonal of A^T A
    max_mask_value: float = 10.0  # a tuned value beyond this (ill-conditioned solve) raises the ridge tenfold
    batch_size: int = 32

    def validate(self) -> None:
        if self.fisher_samples < 1 or self.tune_samples < 1:
            raise InvalidConfigError("--fisher-samples and --tune-samples must be >= 1, e.g. 2048 and 512")
        if self.fisher_labels not in ("model", "data"):
            raise InvalidConfigError(f"--fisher-labels {self.fisher_labels!r}: use 'model' or 'data'")
        if self.rearrange_swaps < 0 or self.damping < 0 or self.batch_size < 1:
            raise InvalidConfigError("--rearrange-swaps and damping must be >= 0, batch size >= 1")


@dataclass
class PruneConfig:
    method: str = "hybrid"
    sparsity: float | None = None  # target fraction of zeros (top-k methods); None -> method default
    lambda_reg: float | None = None  # final regularisation lambda (soft methods); None -> method default
    lambda_att: float = 1.0  # multipliers on lambda for attention / FFN groups
    lambda_ffn: float = 1.0
    block_size: int = 32  # `block` method: N x N blocks; hybrid attention blocks are 32 x 32 (paper)
    tau: float = 0.1  # final sigmoid threshold of soft methods (ramps from 0)
    initial_warmup: float = 1.0  # in units of W warm-up steps
    final_warmup: float = 2.0
    score_lr: float | None = None  # None -> method default (1e-2 movement, 2e-2 SMP)
    head_lr: float = 1e-3  # SMP (frozen encoder): lr of the fresh classifier head, which --lr (3e-5) barely moves
    score_init: float | str | None = None  # a constant, or "magnitude" (default for per-weight top-k: |W| / mean|W|)
    source: str | None = None  # hybrid-filled: the hybrid result to fill
    label_words: list[str] | None = None  # SMP head-free mode
    # Speed targets (struct, hybrid, retrain-free, smp-struct): the final structure is chosen to meet one of them
    # (compress.speed), measured on the deployment below; no lambda needed.
    target_speedup: float | None = None  # x faster than the dense fp32 deploy graph
    target_latency_ms: float | None = None  # absolute budget at the deploy shape
    target_flops: float | None = None  # fraction of dense encoder FLOPs to keep (hardware-free)
    deploy: str = "fp32"  # precision the model ships in: fp32 | int8
    deploy_shape: str = "32x128"  # batch x sequence length
    deploy_threads: int | None = 2
    deploy_provider: str = "cpu"
    measure_speed: bool = True  # after a latency target: time the shrunk deploy graph against dense (compression.json)
    ffn_block: int = 32  # kept FFN widths are multiples of this (the budget is met within one block or one head)
    fill_steps: int = 0  # retrain-free: distillation steps afterwards with the structure frozen (0: none, no SGD at all)
    retrain_free: RetrainFreeConfig = field(default_factory=RetrainFreeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise InvalidConfigError(f"--sparsity {self.sparsity} is out of range; give a fraction in [0, 1), e.g. 0.5")
        if self.lambda_reg is not None and self.lambda_reg < 0:
            raise InvalidConfigError(f"--lambda {self.lambda_reg} is negative; give a value >= 0")
        if not 4 <= self.block_size <= 64:
            raise InvalidConfigError(f"--block-size {self.block_size} is out of range; use 4..64")
        if self.head_lr <= 0:
            raise InvalidConfigError(f"--head-lr {self.head_lr} must be > 0, e.g. 1e-3")
        if isinstance(self.score_init, str) and self.score_init != "magnitude":
            raise InvalidConfigError(f"score_init {self.score_init!r} must be a number or 'magnitude'")
        if not 0.0 < self.tau < 1.0:
            raise InvalidConfigError(f"--tau {self.tau} is out of range; use (0, 1)")
        if self.target_flops is not None and not 0.0 < self.target_flops <= 1.0:
            raise InvalidConfigError(f"--target-flops {self.target_flops} is out of range; give the fraction kept in (0, 1], e.g. 0.5")
        if self.fill_steps < 0:
            raise InvalidConfigError(f"--fill-steps {self.fill_steps} must be >= 0")
        self.retrain_free.validate()
        if self.ffn_block < 1:
            raise InvalidConfigError(f"--ffn-block {self.ffn_block} must be >= 1, e.g. 32")
        d = self.distill
        if d.temperature <= 0 or d.alpha_ce < 0 or d.alpha_teacher < 0:
            raise InvalidConfigError("distillation needs --temperature > 0 and non-negative alphas")
        t = self.train
        if t.batch_size < 1 or t.lr <= 0 or (t.epochs <= 0 and t.max_steps <= 0):
            raise InvalidConfigError("training needs --batch-size >= 1, --lr > 0 and positive --epochs or --max-steps")

    def to_dict(self) -> dict:
        return asdict(self)


def from_dict(cls, data: dict):
    """Build a (nested) config dataclass from a dict, refusing unknown keys with a clear error."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise InvalidConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    kw = {}
    for k, v in data.items():
        sub = {"train": TrainConfig, "distill": DistillConfig, "retrain_free": RetrainFreeConfig}.get(k) if cls is PruneConfig else None
        kw[k] = from_dict(sub, v) if sub and isinstance(v, dict) else v
    return cls(**kw)
