"""Every configuration dataclass a user passes, in the order of the pipeline: data, training and
distillation, pruning, export and shrink, quantization, evaluation, benchmark, and the whole run.
One module on purpose, past the size of the others: it is the reference a user reads top to bottom.

Each field's default and help text live here once: compress.cli.flags turns the fields into the
command-line flags. Output paths are arguments of the functions that write them, never config fields;
`overwrite` and `threads` are config fields wherever a step has them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from compress.core.errors import InvalidConfigError


def _score_init(text: str) -> float | str:
    if text == "magnitude":
        return text
    try:
        return float(text)
    except ValueError as e:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'magnitude'") from e


def arg(default, help: str = "", **meta):
    """A config field whose help text (and CLI flag details) live beside its default: compress.cli.flags
    turns these into command-line flags, so a default is written once."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# ------------------------------------------------------------------------------------------ data
# The task types (compress.training.tasks holds one entry per type) and the built-in tasks of each.
TASK_TYPES = ("sequence-classification", "question-answering", "token-classification", "embedding")
BUILTIN_TASKS = {
    "sst2": "sequence-classification",
    "mrpc": "sequence-classification",
    "squad": "question-answering",
    "squad-split": "question-answering",
    "embedding": "embedding",
}


@dataclass
class DataConfig:
    """Where the task data comes from: a built-in task (GLUE layout, SQuAD, the embedding corpus, or the
    hub) or generic files, and the task type they are read as."""

    task: str | None = arg(
        None,
        "built-in task: sst2, mrpc (sentence classification), squad (SQuAD v1.1 train/dev files), squad-split "
        "(the offline article split of SQuAD dev), embedding (sentence embeddings on the offline corpus); "
        "prune, finetune and eval default to sst2 unless data files are given",
    )
    task_type: str | None = arg(
        None,
        "what the model learns: sequence-classification, question-answering, token-classification or embedding "
        "(default: the built-in task's, else sequence-classification)",
        choices=list(TASK_TYPES),
    )
    data_dir: str | None = arg(
        None, "local data folder holding <task>/train.tsv, dev.tsv, squad/*.json (default: $COMPRESS_DATA_DIR)"
    )
    train_file: str | None = arg(
        None,
        "generic training file (.tsv, .csv, .json, .jsonl; SQuAD JSON for question answering, CoNLL or jsonl "
        "for token classification, .txt too for embeddings, several comma-separated); overrides --task files",
    )
    validation_file: str | None = arg(None, "generic validation file")
    text_column: str | None = arg(None, "text column of the data files (token classification: the words column)")
    text_pair_column: str | None = arg(None, "second text column (sentence pairs)")
    label_column: str | None = arg(None, "label column of the data files (token classification: the tags column)")
    num_labels: int | None = arg(None, "number of labels (default: from the data)")
    doc_stride: int = arg(128, "question answering: tokens shared by consecutive windows of a long context")
    pooling: str | None = arg(
        None,
        "embedding: mean, cls or max pooling (default: the model's sentence-transformers files, else mean)",
        choices=["mean", "cls", "max"],
    )
    normalize: bool | None = arg(
        None, "embedding: L2-normalise the pooled embedding (default: the model's files, else no)"
    )

    @property
    def kind(self) -> str:
        """The task type: --task-type, else the built-in task's, else sequence classification."""
        return self.task_type or BUILTIN_TASKS.get(self.task or "", "sequence-classification")

    def validate(self) -> None:
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise InvalidConfigError(f"--task-type {self.task_type!r}: choose one of {', '.join(TASK_TYPES)}")
        builtin = BUILTIN_TASKS.get(self.task or "")
        if self.task_type and builtin and builtin != self.task_type:
            raise InvalidConfigError(
                f"--task {self.task} is a {builtin} task, not {self.task_type}; drop --task-type or pick another task"
            )
        if self.doc_stride < 1:
            raise InvalidConfigError(f"--doc-stride {self.doc_stride} must be >= 1 (e.g. 128)")

    def source(self, train: bool = True) -> dict:
        """The keyword arguments of compress.training.data.load_task_data that say where the data is
        (the training file only when a training split is wanted)."""
        keys = ("data_dir", "validation_file", "text_column", "text_pair_column", "label_column", "num_labels")
        return {k: getattr(self, k) for k in (("train_file",) if train else ()) + keys}

    def resolved(self) -> "DataConfig":
        """With data files and no task, the files define the task (generic columns); with neither, sst2
        (or the embedding corpus for --task-type embedding)."""
        if self.task is None and not (self.train_file or self.validation_file):
            return replace(self, task="embedding" if self.task_type == "embedding" else "sst2")
        return self


# ------------------------------------------------------------------------------------------ training
@dataclass
class TrainConfig:
    epochs: float = arg(1.0, "training epochs")
    max_steps: int = arg(-1, "> 0 overrides --epochs")
    batch_size: int = arg(32, "training batch size")
    eval_batch_size: int = arg(64, "evaluation batch size")
    max_length: int | None = arg(
        None, "training sequence length (default: 64; question answering 384, token classification and embeddings 128)"
    )
    eval_max_length: int | None = arg(
        None, "evaluation sequence length (default: 128; question answering 384, embeddings 256)"
    )
    lr: float = arg(3e-5, "learning rate of the weights")
    weight_decay: float = arg(0.0, "AdamW weight decay")
    warmup_ratio: float = arg(0.1, "W = ratio * total steps: LR warm-up and the unit of the pruning schedule")
    seed: int = arg(42, "random seed")
    save_steps: int = arg(500, "periodic checkpoint interval (for --resume)")
    logging_steps: int = arg(25, "log every N steps")
    max_train_samples: int | None = arg(None, "use at most N training rows")
    max_eval_samples: int | None = arg(None, "use at most N dev rows")
    resume: bool = arg(False, "continue an interrupted run from its last checkpoint")
    overwrite: bool = arg(False, "replace a non-empty output directory")
    progress: bool = arg(True, "progress bars")

    def validate(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or (self.epochs <= 0 and self.max_steps <= 0):
            raise InvalidConfigError("training needs --batch-size >= 1, --lr > 0 and positive --epochs or --max-steps")
        # -1 is the "not set" default (train for --epochs); other values <= 0 are typos, not requests.
        if self.max_steps == 0 or self.max_steps < -1:
            raise InvalidConfigError(
                f"--max-steps {self.max_steps} is not a step count; give a number >= 1, or leave it "
                "out to train for --epochs"
            )
        for flag, n in (("--max-length", self.max_length), ("--eval-max-length", self.eval_max_length)):
            if n is not None and n < 1:
                raise InvalidConfigError(f"{flag} {n} must be >= 1 (the tokens kept per row, e.g. 128)")
        for flag, n in (("--max-train-samples", self.max_train_samples), ("--max-eval-samples", self.max_eval_samples)):
            if n is not None and n < 1:
                raise InvalidConfigError(f"{flag} {n} must be >= 1 (leave it out to use every row)")
        if self.eval_batch_size < 1:
            raise InvalidConfigError(f"--batch-size {self.eval_batch_size} must be >= 1")

    @classmethod
    def for_evaluation(
        cls, kind: str, batch_size: int, max_length: int | None, max_eval_samples: int | None, progress: bool = True
    ) -> "TrainConfig":
        """The settings an evaluation alone reads (checkpoints and ONNX graphs alike), validated."""
        t = cls(
            eval_batch_size=batch_size,
            max_length=max_length,
            eval_max_length=max_length,
            max_eval_samples=max_eval_samples,
            progress=progress,
        ).for_task(kind)
        t.validate()
        return t

    def for_task(self, kind: str) -> "TrainConfig":
        """With the sequence lengths left unset filled in with the task type's defaults: windows of 384
        tokens for question answering (the papers' SQuAD setting), whole sentences elsewhere."""
        train, evaluation = TASK_LENGTHS.get(kind, TASK_LENGTHS["sequence-classification"])
        return replace(
            self,
            max_length=self.max_length if self.max_length is not None else train,
            eval_max_length=self.eval_max_length if self.eval_max_length is not None else evaluation,
        )


@dataclass
class DistillConfig:
    teacher: str | None = arg(None, "fine-tuned teacher (same task and vocabulary; may be larger)")
    alpha_ce: float = arg(0.1, "weight of the task cross-entropy when a teacher is given")
    alpha_teacher: float = arg(0.9, "weight of T^2 * KL(student || teacher)")
    temperature: float = arg(2.0, "distillation temperature T")
    embedding_loss: str = arg(
        "cosine",
        "embedding task: distil the pooled, normalised embeddings with 1 - cosine, MSE, or both",
        choices=["cosine", "mse", "cosine+mse"],
    )
    hidden_weight: float = arg(0.0, "embedding task: weight of the last hidden state's MSE to the teacher's")
    layer_weight: float = arg(
        0.0,
        "layer-wise distillation (CoFi): weight of the MSE between every student layer's output, through one "
        "learned linear map, and the teacher's layer at the same relative depth (runs the teacher every step)",
    )


# (training, evaluation) sequence lengths per task type when --max-length / --eval-max-length are not given
TASK_LENGTHS = {
    "sequence-classification": (64, 128),
    "question-answering": (384, 384),
    "token-classification": (128, 128),
    "embedding": (128, 256),
}


def bench_length(kind: str | None) -> int:
    """The length a task's graph is timed and deployed at by default: SQuAD's 384-token windows for
    question answering, 128 else."""
    return 384 if kind == "question-answering" else 128


def default_deploy_shape(kind: str | None) -> str:
    """--deploy-shape when not given: batch 32 at the task's bench_length."""
    return f"32x{bench_length(kind)}"


# ------------------------------------------------------------------------------------------ pruning
@dataclass
class RetrainFreeConfig:
    """retrain-free (Kwon et al. 2022): sample sizes and solver settings of the post-training search."""

    fisher_samples: int = arg(2048, "retrain-free: examples for the Fisher information of the masks (the paper: 2k)")
    tune_samples: int = arg(512, "retrain-free: examples for the layer-wise least-squares mask tuning")
    fisher_labels: str = arg(
        "model",
        "retrain-free: labels of the Fisher loss, the model's own predictions (no labels needed) or the data's",
        choices=("model", "data"),
    )
    rearrange_swaps: int = arg(
        128, "retrain-free: max greedy swaps per layer and unit type in mask rearrangement (0: off)"
    )
    damping: float = arg(1e-3, "retrain-free: ridge toward the untuned masks, relative to the mean diagonal of A^T A")
    # a tuned value beyond this (ill-conditioned solve) raises the ridge tenfold
    max_mask_value: float = field(default=10.0, metadata={"cli": False})
    batch_size: int = field(default=32, metadata={"cli": False})  # of the Fisher / tuning passes (not --batch-size)

    def validate(self) -> None:
        if self.fisher_samples < 1 or self.tune_samples < 1:
            raise InvalidConfigError("--fisher-samples and --tune-samples must be >= 1, e.g. 2048 and 512")
        if self.fisher_labels not in ("model", "data"):
            raise InvalidConfigError(f"--fisher-labels {self.fisher_labels!r}: use 'model' or 'data'")
        if self.rearrange_swaps < 0 or self.damping < 0 or self.batch_size < 1:
            raise InvalidConfigError("--rearrange-swaps and damping must be >= 0, batch size >= 1")


@dataclass
class PruneConfig:
    method: str = arg("hybrid", "pruning method (see `compress methods`)")
    sparsity: float | None = arg(None, "target fraction of zeros for top-k methods (magnitude, movement, smp-l, smp-s)")
    lambda_reg: float | None = arg(None, "final regularisation weight for soft methods", flag="--lambda")
    lambda_att: float = arg(1.0, "multiplier of lambda on attention groups")
    lambda_ffn: float = arg(1.0, "multiplier of lambda on FFN groups")
    prune_hidden: bool = arg(
        False,
        "struct, hybrid, smp-struct: also prune the hidden dimension (one mask over the residual stream, shared "
        "by every layer); the LayerNorms then normalise over the kept dims, so the cut is exact",
    )
    lambda_hidden: float = arg(1.0, "multiplier of lambda on the hidden-dimension mask (--prune-hidden)")
    hidden_sparsity: float = arg(
        0.25, "top-k methods (smp-struct) with --prune-hidden: fraction of hidden dims removed at the end"
    )
    # `block` method: N x N blocks; hybrid attention blocks are 32 x 32 (paper)
    block_size: int = arg(32, "block method: N x N blocks, 4..64")
    tau: float = arg(0.1, "final sigmoid threshold of soft methods (ramps from 0)")
    initial_warmup: float = arg(1.0, "steps (in units of W) before pruning starts")
    final_warmup: float = arg(2.0, "cool-down steps (in units of W) at the final mask")
    score_lr: float | None = arg(None, "mask-score learning rate (default 1e-2; SMP 2e-2)")
    head_lr: float = arg(
        1e-3,
        "SMP methods: lr of the fresh classifier head (the encoder is frozen, so --lr (3e-5) would barely move it)",
    )
    score_init: float | str | None = arg(
        None,
        "initial mask scores: a constant (the papers' 0), or 'magnitude' (|W| / mean|W|; the default for "
        "per-weight top-k methods: movement, smp-l, smp-s; a constant init leaves their top-k near-random in short runs)",
        type=_score_init,
    )
    source: str | None = arg(None, "hybrid-filled: the output directory of a hybrid run")
    label_words: list[str] | None = arg(
        None,
        "SMP head-free mode: one word per label read from the MLM head "
        "(e.g. terrible great); needs a model saved with its MLM head",
        metavar="WORD",
    )
    # Speed targets (struct, hybrid): the final structure is chosen to meet one of them (compress.speed),
    # measured on the deployment below; no lambda needed.
    target_speedup: float | None = arg(None, "x faster than the dense fp32 ONNX graph on the deployment below, e.g. 3")
    target_latency_ms: float | None = arg(None, "absolute latency budget (ms) at --deploy-shape")
    target_flops: float | None = arg(None, "fraction of dense encoder FLOPs to keep (hardware-free), e.g. 0.33")
    deploy: str = arg(
        "fp32",
        "precision the model ships in: fp32, or int8 (compress quantize's dynamic int8)",
        choices=["fp32", "int8"],
    )
    deploy_shape: str | None = arg(
        None,
        "deployment batch x sequence length (default: 32x384 for question answering, else 32x128); SEQ 'data' "
        "(e.g. 32xdata) is the p90 token length of the task's dev data under the student's tokenizer, rounded "
        "up to a multiple of 8",
        metavar="BATCHxSEQ",
    )
    deploy_threads: int | None = arg(2, "ONNX Runtime intra-op threads of the deployment", flag="--threads")
    deploy_provider: str = arg(
        "cpu", "execution provider of the deployment", flag="--provider", choices=["cpu", "cuda"]
    )
    measure_speed: bool = arg(
        True, "after a latency target: time the shrunk deploy graph against dense (compression.json)"
    )
    calibrate: bool = arg(
        False,
        "with a measured table: before training, time the deploy graph of a uniform structure at the budget "
        "and scale the budget by measured / predicted (about a minute; can overcorrect, see compress.speed.calibrate)",
    )
    budget_importance: str = arg(
        "fisher",
        "what ranks heads and FFN dims against their latency under a target: fisher (squared mask gradients, "
        "averaged over steps) or scores (the method's mask scores x weights held)",
        choices=["fisher", "scores"],
    )
    ffn_block: int = arg(32, "kept FFN widths are multiples of this (the budget is met within one block or one head)")
    fill_steps: int = arg(
        0,
        "retrain-free: distillation steps afterwards with the structure frozen, from --teacher or else "
        "the dense input model (0: no SGD at all)",
    )
    retrain_free: RetrainFreeConfig = field(default_factory=RetrainFreeConfig, metadata={"cli": False})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"cli": False})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={"cli": False})

    def validate(self) -> None:
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise InvalidConfigError(f"--sparsity {self.sparsity} is out of range; give a fraction in (0, 1), e.g. 0.5")
        if self.sparsity == 0:
            raise InvalidConfigError(
                "--sparsity 0 removes nothing; give a fraction in (0, 1), e.g. 0.5 "
                "(or use `compress finetune` for a dense model)"
            )
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
            raise InvalidConfigError(
                f"--target-flops {self.target_flops} is out of range; give the fraction kept in (0, 1], e.g. 0.5"
            )
        if self.fill_steps < 0:
            raise InvalidConfigError(f"--fill-steps {self.fill_steps} must be >= 0")
        if not 0.0 <= self.hidden_sparsity < 1.0 or self.lambda_hidden < 0:
            raise InvalidConfigError("--hidden-sparsity must be in [0, 1) and --lambda-hidden >= 0, e.g. 0.25 and 1")
        self.retrain_free.validate()
        if self.ffn_block < 1:
            raise InvalidConfigError(f"--ffn-block {self.ffn_block} must be >= 1, e.g. 32")
        d = self.distill
        if d.temperature <= 0 or d.alpha_ce < 0 or d.alpha_teacher < 0:
            raise InvalidConfigError("distillation needs --temperature > 0 and non-negative alphas")
        if d.layer_weight < 0:
            raise InvalidConfigError(f"--layer-weight {d.layer_weight} must be >= 0, e.g. 1")
        if d.layer_weight and not d.teacher:
            raise InvalidConfigError("--layer-weight distils the teacher's layers: give --teacher too")
        self.train.validate()

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ export, shrink
EXPORTER_NAMES = ("torchscript", "dynamo")  # first is the default
DEFAULT_OPSET = 17  # first opset with LayerNormalization; ORT's fusions handle it
DEFAULT_ATOL = 1e-4


@dataclass
class ExportConfig:
    # The task names are exporters.spec.TASKS (the CLI lists them; exporters refuses others).
    task: str | None = arg(None, "which head to export (default: from the checkpoint's architecture)")
    shrink: bool | None = arg(
        None,
        "remove pruned heads / FFN dims from the graph (default: whenever the checkpoint "
        "has any, from compression.json or all-zero weights; --no-shrink keeps the full graph)",
    )
    optimize: bool = arg(False, "apply ONNX Runtime transformer fusions (kept only if outputs match)")
    exporter: str = arg(
        "torchscript",
        "torch.onnx exporter (torchscript: fast, and ORT can fuse its attention; the other is tried if it fails)",
        choices=list(EXPORTER_NAMES),
    )
    opset: int = arg(DEFAULT_OPSET, "ONNX opset (dynamo uses at least 18)")
    atol: float = arg(
        DEFAULT_ATOL,
        "max abs output difference allowed against PyTorch, per unit of the output's scale max(1, max |output|)",
    )
    validate: bool = arg(True, "compare the graph with PyTorch (not recommended to turn off)")
    overwrite: bool = arg(False, "replace a non-empty output directory")


@dataclass
class ShrinkConfig:
    compression_json: str | None = arg(
        None, "structure to keep (default: the input's folder's compression.json)", metavar="PATH"
    )
    from_weights: bool = arg(False, "ignore compression.json; remove structures whose weights are zero")
    head_size: int | None = arg(None, "attention head size (default: compression.json, config.json, or the graph)")
    optimize: bool = arg(False, "then apply ONNX Runtime's transformer fusions (kept only if outputs match)")
    hidden: str = arg(
        "auto",
        "auto: also cut pruned hidden dims (compression.json's `hidden`, else all-zero LayerNorm and embedding "
        "dims); off: keep the hidden size",
        choices=["auto", "off"],
    )
    atol: float = arg(1e-4, "max abs output difference allowed")
    overwrite: bool = arg(False, "replace the output if it exists")


# ------------------------------------------------------------------------------------------ quantize
# Weighted ops worth quantizing in an encoder. Gather makes the embedding tables int8 (4x smaller
# files, a dequantize of the gathered rows only); Attention/EmbedLayerNormalization appear after fusion.
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Gather", "Attention", "EmbedLayerNormalization")

# Keyword for --keep-fp32: the last MatMul/Gemm before the logits, found from the graph structure
# because exporters name it differently (/classifier/MatMul, node_linear_3, ...).
CLASSIFIER = "classifier"

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantizeConfig:
    mode: str = arg(
        "dynamic",
        "dynamic: activation ranges at run time, no data needed; static: calibrated",
        choices=["dynamic", "static"],
    )
    format: str = arg(
        "qoperator",
        "static only: integer ops (QLinearMatMul) or QuantizeLinear/DequantizeLinear pairs "
        "(dynamic quantization always emits QOperator ops)",
        choices=["qoperator", "qdq"],
    )
    # One scale per output channel of each weight. Default since it held accuracy on both CPUs measured:
    # on AVX2 without VNNI (where ORT's u8*s8 kernels can saturate) the SST-2 teacher lost 0.46 points
    # per-tensor and 0.00 per-channel (benchmarks/results/quantize.md), three pruned frontier graphs
    # -0.34..0.00 vs +0.12..+0.46 (int8_side_checks.md); on AVX-512 VNNI -0.23 vs -0.35. Same speed.
    per_channel: bool = arg(
        True, "one weight scale per output channel (--no-per-channel or --per-tensor: one per matrix)"
    )
    reduce_range: bool = arg(
        False,
        "7-bit weights: only for CPUs without VNNI where u8*s8 sums can saturate (costs "
        "accuracy; see benchmarks/results/quantize.md)",
    )
    keep_fp32: tuple[str, ...] = arg(
        (CLASSIFIER,),
        f"nodes left in fp32: op types, node-name globs/substrings, or "
        f"{CLASSIFIER!r} (the final MatMul before the logits). Pass the flag alone to "
        "quantize everything",
        metavar="PATTERN",
    )
    op_types: tuple[str, ...] = arg(DEFAULT_OP_TYPES, "op types to quantize", metavar="OP")
    optimize: bool = arg(
        False,
        "fuse with ORT's transformer optimizer (Attention, ...) before quantizing; kept only "
        "if it matches the unfused graph numerically. On CPU the fused int8 graph (QAttention) measured "
        "slower (benchmarks/results/quantize.md)",
    )
    calibration_method: str = arg(
        "minmax", "static only: how activation ranges are calibrated", choices=list(CALIBRATION_METHODS)
    )
    num_samples: int = arg(128, "static only: calibration sentences")
    symmetric_activations: bool = arg(False, "static only: symmetric activation ranges")
    # Quantize only MatMuls with a constant weight. False also quantizes the attention products
    # (Q K^T, P V): optimum's default; measured slower and less accurate here (bench_quantize).
    const_b_only: bool = arg(True, "quantize only MatMuls with a constant weight (not the attention products)")
    # How the data (quantize's `data`, a DataConfig) is used: dev accuracy before and after, and the
    # calibration rows of static mode (its training split, or this file).
    calibration_file: str | None = arg(
        None, "calibration text: .txt (one sentence a line) or .tsv/.csv/.jsonl (column: --text-column)"
    )
    max_length: int = arg(128, "tokens kept per row, for evaluation and calibration")
    max_eval_samples: int | None = arg(None, "limit the dev sentences used for accuracy")
    eval_batch_size: int | None = arg(
        None,
        "evaluation batch size (default 1 for dynamic int8, whose accuracy depends on the batch; 32 for static)",
        flag="--batch-size",
    )
    threads: int | None = arg(None, "ONNX Runtime threads for checks and evaluation")
    overwrite: bool = arg(False, "replace an existing output")

    def validate(self) -> None:
        if self.mode not in ("dynamic", "static"):
            raise InvalidConfigError(f"unknown quantization mode {self.mode!r}; choose dynamic or static")
        if self.format not in ("qoperator", "qdq"):
            raise InvalidConfigError(f"unknown format {self.format!r}; choose qoperator or qdq")
        if self.mode == "dynamic" and self.format == "qdq":
            raise InvalidConfigError("--format qdq needs --mode static (dynamic quantization emits QOperator ops)")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise InvalidConfigError(
                f"unknown calibration method {self.calibration_method!r}; choose {', '.join(CALIBRATION_METHODS)}"
            )
        if self.num_samples < 1:
            raise InvalidConfigError(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.max_length < 1:
            raise InvalidConfigError(f"--max-length {self.max_length} must be >= 1 (tokens kept per row, e.g. 128)")


# ------------------------------------------------------------------------------------------ evaluate, bench
@dataclass
class EvalConfig:
    batch_size: int | None = arg(
        None,
        "evaluation batch size (default 64; 1 for dynamic int8 graphs, whose accuracy "
        "depends on the batch: benchmarks/results/int8_batch_dependence.md)",
    )
    max_length: int | None = arg(
        None,
        "sequence length, longer rows are truncated (default: the task's: 128; question answering 384, embeddings 256)",
    )
    max_eval_samples: int | None = arg(None, "use at most N dev rows")
    provider: str = arg("cpu", "ONNX Runtime provider for .onnx models", choices=["cpu", "cuda"])
    threads: int | None = arg(None, "ONNX Runtime intra-op threads (default: all cores)")


# How `compress bench --data` groups the dev rows into batches (compress.ort.bench_data).
BUCKETINGS = ("arrival", "length")


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = arg((1, 32), "batch sizes of the grid", metavar="N")
    seq_lens: tuple[int, ...] = arg(
        (128,), "sequence lengths of the grid (compress bench: 384 for question answering graphs)", metavar="N"
    )
    provider: str = arg(
        "cpu",
        "execution provider; cuda uses IO binding (inputs live on the GPU) and needs onnxruntime-gpu",
        choices=["cpu", "cuda"],
    )
    threads: int | None = arg(
        2, "intra-op threads, recorded in the report (0 or None: ONNX Runtime's default, all cores)"
    )
    warmup: int = arg(3, "untimed runs per model and grid point")
    spinning: bool = arg(
        True,
        "ONNX Runtime's intra-op threads spin between ops and after a run (its default, as deployed); "
        "--no-spinning makes them sleep, so every op waits for a wake-up",
    )
    settle_ms: float = arg(
        50.0,
        "with spinning and several models: pause before each timed run, then one untimed run, so the threads "
        "of the model that ran before have stopped spinning (ORT spins ~30 ms after a run)",
    )
    iterations: int = arg(20, "timed runs per model and grid point")
    seed: int = arg(0, "seed of the random token ids")
    # Real text instead of the grid (compress.ort.bench_data): the dev set is tokenized with each model's
    # tokenizer and run batch by batch, each batch padded to its own longest row, as a server batches it.
    data: str | None = arg(
        None,
        "time real text instead of the grid: a built-in task's dev set (sst2, mrpc, squad, squad-split, "
        "embedding) or a data file (.tsv/.csv/.json/.jsonl with --text-column, default sentence or text; .txt: "
        "one text a line); each batch is padded to its longest row",
        metavar="TASK|FILE",
    )
    bucketing: tuple[str, ...] = arg(
        BUCKETINGS,
        "with --data: batch the rows in arrival order (file order), by length (sorted, then batched), or both",
        choices=list(BUCKETINGS),
        metavar="ORDER",
    )
    tokenizer: str | None = arg(
        None, "with --data: the tokenizer folder (default: the one beside each model.onnx, else its parent's)"
    )
    max_length: int | None = arg(
        None,
        "with --data: tokens kept per row (default: the task's evaluation length, 128; question answering 384, "
        "embeddings 256; at most the model's positions)",
    )
    max_eval_samples: int | None = arg(None, "with --data: use at most N rows of the set (default: all)")

    def validate(self) -> None:
        if not self.batch_sizes or not self.seq_lens or min(self.batch_sizes) < 1 or min(self.seq_lens) < 1:
            raise InvalidConfigError("batch sizes and sequence lengths must be positive integers")
        if not self.bucketing or set(self.bucketing) - set(BUCKETINGS):
            raise InvalidConfigError(f"--bucketing {' '.join(self.bucketing)}: choose from {', '.join(BUCKETINGS)}")
        for flag, n in (("--max-length", self.max_length), ("--max-eval-samples", self.max_eval_samples)):
            if n is not None and n < 1:
                raise InvalidConfigError(f"{flag} {n} must be >= 1")
        if self.iterations < 1 or self.warmup < 0:
            raise InvalidConfigError("--iterations must be >= 1 and --warmup >= 0")
        if self.provider not in ("cpu", "cuda"):
            raise InvalidConfigError(f"unknown provider {self.provider!r}; choose cpu or cuda")
        if self.settle_ms < 0:
            raise InvalidConfigError("--settle-ms must be >= 0")


# ------------------------------------------------------------------------------------------ the whole run
def _main_job_prune() -> PruneConfig:
    """The pruning step of `compress run` (the main job's recipe)."""
    return PruneConfig(
        method="hybrid",
        lambda_reg=10.0,
        score_lr=0.05,
        lambda_att=1.0,
        lambda_ffn=1.0,
        # max_length None: the task type's (64 for sentence classification, 384 windows for question answering)
        train=TrainConfig(max_steps=600, batch_size=32, lr=3e-5, warmup_ratio=0.1, logging_steps=50),
        distill=DistillConfig(alpha_ce=0.1, alpha_teacher=0.9, temperature=2.0),
    )


DEFAULT_RUN_TASK = "sst2"  # the main job's


def _data_field(name: str):
    """A RunConfig field that is DataConfig's field `name`: one default and help text for both."""
    f = next(f for f in fields(DataConfig) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


@dataclass
class RunConfig:
    """`compress run`'s recipe (flags, or a YAML/JSON file with the same keys: `prune` holds PruneConfig
    fields, `train` and `distill` nest inside it); saved into the output as recipe.json."""

    model: str | None = arg(
        None, "student (default: the teacher when given, i.e. prune the fine-tuned model; else minilm)", aliases=("-m",)
    )
    task: str | None = arg(
        DEFAULT_RUN_TASK,
        "built-in task: sst2, mrpc, squad-split, squad or embedding; with data files or another --task-type "
        "the default (sst2) gives way to them",
    )
    task_type: str | None = _data_field("task_type")
    data_dir: str | None = arg(
        None, "data folder holding <task>/train.tsv, dev.tsv, squad/ (default: $COMPRESS_DATA_DIR)"
    )
    train_file: str | None = _data_field("train_file")
    validation_file: str | None = _data_field("validation_file")
    text_column: str | None = _data_field("text_column")
    text_pair_column: str | None = _data_field("text_pair_column")
    label_column: str | None = _data_field("label_column")
    num_labels: int | None = _data_field("num_labels")
    doc_stride: int = _data_field("doc_stride")
    pooling: str | None = _data_field("pooling")
    normalize: bool | None = _data_field("normalize")
    prune: PruneConfig = field(default_factory=_main_job_prune, metadata={"cli": False})
    # Hybrid Filled (Block Pruning paper, section 4): after hybrid pruning, re-initialise the zeroed
    # weights inside the surviving heads / FFN dims and fine-tune this many steps with the structure
    # frozen: same speed, accuracy recovered (+0.7 points on the main job). 0 skips it.
    fill_steps: int = arg(
        300,
        "then Hybrid Filled: fine-tune this many steps with the structure frozen and the zeroed "
        "weights inside kept heads/dims re-initialised (0: skip)",
    )
    quantize: bool = arg(True, "also quantize the dense and pruned graphs to int8 (dynamic)")
    # ORT transformer fusions after surgery (Attention, BiasGelu: exporters.optimize.fusion_options);
    # faster at batch 1 and 32 on our CPU, int8 is quantized from the fused graph (results/shrink.md, quantize.md)
    optimize: bool = arg(True, "ORT transformer fusions on the exported graphs")
    bench_batch_sizes: list[int] = arg([1, 32], "batch sizes timed", metavar="N")
    bench_seq_len: int | None = arg(
        None, "sequence length timed (default: the task's: 384 for question answering, else 128)"
    )
    bench_threads: int = arg(2, "ONNX Runtime intra-op threads when timing")
    bench_iterations: int = arg(20, "timed runs per model and shape, interleaved")
    # Padded shapes misstate what users see on short text (SST-2 dev: ~25 tokens a row): time the dev rows
    # too, each batch padded to its own longest row (compress.ort.bench_data).
    bench_data: bool = arg(
        True, "also time the dev set's real text (dynamic padding, arrival order and length-bucketed)"
    )
    bench_data_samples: int | None = arg(1024, "dev rows timed by the real-text benchmark (default 1024; all: 0)")
    overwrite: bool = arg(
        False, "replace a non-empty output directory; discard an interrupted run's work folder and start from scratch"
    )
    # The work folder .OUTPUT.partial survives a kill; its stages.json says what finished (compress.core.stages).
    resume: bool = arg(
        False,
        "continue an interrupted run from its work folder (.OUTPUT.partial beside the output): finished stages "
        "are verified and skipped, an unfinished prune or fill continues from its last checkpoint",
    )

    def data(self) -> DataConfig:
        """The run's task data (its DataConfig fields). The default task gives way to data files and to
        another task type, so `--train-file a.tsv` or `--task-type embedding` alone say what is run."""
        kw = {f.name: getattr(self, f.name) for f in fields(DataConfig)}
        other_type = (self.task_type or "sequence-classification") != "sequence-classification"
        if self.task == DEFAULT_RUN_TASK and (self.train_file or self.validation_file or other_type):
            kw["task"] = None
        return DataConfig(**kw).resolved()

    def recipe(self) -> dict:
        """The recipe as recorded (recipe.json, summary.json): everything but `overwrite` and `resume`, which
        are about this output folder, so a recorded recipe run again never replaces a folder unasked."""
        d = asdict(self)
        d.pop("overwrite")
        d.pop("resume")
        return d

    @classmethod
    def load(cls, path: str) -> RunConfig:
        p = Path(path)
        if not p.exists():
            raise InvalidConfigError(f"recipe file {p} not found")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:
            raise InvalidConfigError(f"cannot parse recipe {p}: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise InvalidConfigError(
                f"recipe {p} must be a mapping of RunConfig keys (model: ..., prune: {{...}}), "
                f"not a {type(data).__name__}"
            )
        prune = data.pop("prune", None)
        cfg = from_dict(cls, data)
        if prune is not None:
            cfg.prune = from_dict(PruneConfig, prune)
        return cfg


def from_dict(cls, data: dict):
    """Build a (nested) config dataclass from a dict, refusing unknown keys with a clear error."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise InvalidConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    kw = {}
    for k, v in data.items():
        sub = (
            {"train": TrainConfig, "distill": DistillConfig, "retrain_free": RetrainFreeConfig}.get(k)
            if cls is PruneConfig
            else None
        )
        kw[k] = from_dict(sub, v) if sub and isinstance(v, dict) else v
    return cls(**kw)
