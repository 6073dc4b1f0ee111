"""Configuration dataclasses. Every field is a hyper-parameter recorded in compression.json."""

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
    output_dir: str = "runs/prune"
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
        sub = {"train": TrainConfig, "distill": DistillConfig}.get(k) if cls is PruneConfig else None
        kw[k] = from_dict(sub, v) if sub and isinstance(v, dict) else v
    return cls(**kw)
