"""The public Python API: one function per step of the pipeline, each taking its config dataclass and
its output path, each returning a small result (path, metrics, report). The CLI is a thin shell over
these functions.

    import compress
    pruned = compress.prune(compress.PruneConfig(method="hybrid", lambda_reg=10), "runs/pruned",
                            model="minilm", data=compress.DataConfig(task="sst2"))
    onnx = compress.export_onnx(pruned.path, "runs/onnx", compress.ExportConfig(shrink=True, optimize=True))
    int8 = compress.quantize(onnx.path, "runs/int8")
    print(compress.evaluate(int8.path, compress.DataConfig(task="sst2")).metrics)
    print(compress.benchmark([onnx.path, int8.path]).report["results"])

Heavy libraries (torch, transformers, onnxruntime) load inside the functions, so `import compress`
stays quick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from compress.core.config import DataConfig, DistillConfig, PruneConfig, TrainConfig, arg
from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.record import LayerKeep, as_layer_keeps
from compress.ort.bench import BenchConfig
from compress.ort.quantize import QuantizeConfig
from compress.pipeline import RunConfig
from exporters.spec import DEFAULT_ATOL, DEFAULT_OPSET, EXPORTER_NAMES, MODEL_FILE
from exporters.spec import TASKS as EXPORT_TASKS

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------ configs
@dataclass
class EvalConfig:
    batch_size: int | None = arg(
        None,
        "evaluation batch size (default 64; 1 for dynamic int8 graphs, whose accuracy "
        "depends on the batch: benchmarks/results/int8_batch_dependence.md)",
    )
    max_length: int = arg(128, "sequence length (longer rows are truncated)")
    max_eval_samples: int | None = arg(None, "use at most N dev rows")
    provider: str = arg("cpu", "ONNX Runtime provider for .onnx models", choices=["cpu", "cuda"])
    threads: int | None = arg(None, "ONNX Runtime intra-op threads (default: all cores)")


@dataclass
class ExportConfig:
    task: str | None = arg(
        None, "which head to export (default: from the checkpoint's architecture)", choices=sorted(EXPORT_TASKS)
    )
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
    atol: float = arg(DEFAULT_ATOL, "max abs output difference allowed")
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
    atol: float = arg(1e-4, "max abs output difference allowed")
    overwrite: bool = arg(False, "replace the output if it exists")


# ------------------------------------------------------------------------------------------ results
@dataclass
class Result:
    """What every API function returns: the artifact written (None when nothing is written), its
    metrics (task metrics or latency figures), and the full report behind them."""

    path: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


@dataclass
class PruneResult(Result):
    """A pruned (or fine-tuned) checkpoint; report is its compression.json."""

    @property
    def layers(self) -> list[LayerKeep]:
        return as_layer_keeps(self.report.get("layers", []))


@dataclass
class EvalResult(Result):
    pass


@dataclass
class ExportResult(Result):
    """report: validation, shrink and optimize sections, notes."""


@dataclass
class ShrinkResult(Result):
    """report: per-layer heads / FFN dims found and removed, parameter and node counts."""


@dataclass
class QuantizeResult(Result):
    """metrics: dev metrics after quantization when data was given; report: sizes, ops, config."""


@dataclass
class BenchResult(Result):
    """metrics: p50 ms per `model@batchxseq`; report: the full benchmark report (environment included)."""


@dataclass
class RunResult(Result):
    """path: the run folder; metrics: accuracy and speedup per model row; report: summary.json."""


# ------------------------------------------------------------------------------------------ steps
def prune(
    config: PruneConfig,
    output: PathLike,
    *,
    model: str | None = None,
    data: DataConfig | None = None,
    callbacks: list | None = None,
) -> PruneResult:
    """Prune `model` (a local dir, a hub name, or `minilm`) with config.method; writes a Hugging Face
    checkpoint with compression.json to `output`."""
    from compress.training.driver import prune as run_prune

    info = run_prune(config, (data or DataConfig()).resolved(), model, output=output, callbacks=callbacks)
    return _checkpoint_result(output, info)


def finetune(
    config: TrainConfig, output: PathLike, *, model: str | None = None, data: DataConfig | None = None
) -> PruneResult:
    """Dense fine-tuning (a teacher or a baseline) with the same data plumbing."""
    from compress.training.driver import finetune as run_finetune

    info = run_finetune(config, (data or DataConfig()).resolved(), model, output=output)
    return _checkpoint_result(output, info)


def _checkpoint_result(output: PathLike, info: dict) -> PruneResult:
    """The compression.json as written (geometry and checksums included); under DDP, ranks other than
    0 write nothing and get the in-memory record."""
    from compress.core.artifacts import read_compression_json

    report = (
        read_compression_json(output, verify=False) if Path(output, "compression.json").exists() else None
    ) or info
    return PruneResult(Path(output), dict(report.get("metrics", {})), report)


def is_onnx(path: PathLike) -> bool:
    p = Path(path)
    return p.suffix == ".onnx" or (p.is_dir() and (p / MODEL_FILE).exists() and not (p / "model.safetensors").exists())


def evaluate(model: PathLike, data: DataConfig | None = None, config: EvalConfig | None = None) -> EvalResult:
    """Dev metrics of a checkpoint directory or of an ONNX model (a .onnx or a folder holding model.onnx)."""
    config = config or EvalConfig()
    data = (data or DataConfig()).resolved()
    if config.batch_size is not None and config.batch_size < 1:
        raise InvalidConfigError(f"--batch-size {config.batch_size} must be >= 1")
    note = None
    if is_onnx(model):
        from compress.ort.evaluate import eval_batch_size, evaluate_onnx_path

        # Dynamic int8 depends on the batch it runs in: evaluated row by row unless asked otherwise, and said so.
        batch, note = eval_batch_size(model, config.batch_size)
        metrics = evaluate_onnx_path(
            str(model),
            data,
            batch_size=batch,
            max_length=config.max_length,
            max_eval_samples=config.max_eval_samples,
            provider=config.provider,
            threads=config.threads,
        )
    else:
        from compress.training.driver import evaluate_checkpoint

        if not Path(model).exists():
            raise ArtifactError(f"model path {model} not found")
        batch = config.batch_size or 64
        metrics = evaluate_checkpoint(
            str(model), data, batch_size=batch, max_length=config.max_length, max_eval_samples=config.max_eval_samples
        )
    report = {"model": str(model), "task": data.task or "custom", **metrics, "batch_size": batch}
    if note:
        report["note"] = note
    return EvalResult(None, metrics, report)


def export_onnx(checkpoint: PathLike, output: PathLike, config: ExportConfig | None = None) -> ExportResult:
    """Export a checkpoint to `output`/model.onnx, validated against PyTorch; optionally shrunk and fused."""
    from exporters.export import export_checkpoint

    c = config or ExportConfig()
    if c.atol <= 0:
        raise InvalidConfigError("--atol must be positive")
    r = export_checkpoint(
        checkpoint,
        output,
        task=c.task,
        overwrite=c.overwrite,
        opset=c.opset,
        validate=c.validate,
        atol=c.atol,
        exporter=c.exporter,
        shrink=c.shrink,
        optimize=c.optimize,
    )
    report = {
        "task": r.task,
        "exporter": r.exporter,
        "opset": r.opset,
        "inputs": r.inputs,
        "outputs": r.outputs,
        "validation": r.validation,
        "shrink": r.shrink,
        "optimize": r.optimize,
        "notes": r.notes,
    }
    return ExportResult(r.path, {"max_abs_diff": r.validation["max_abs_diff"]} if r.validation else {}, report)


def shrink_structure(model: PathLike, config: ShrinkConfig) -> tuple[list | None, int | None, int | None, str]:
    """(kept layers, dense head count, head size, where they came from) for shrinking `model`."""
    from compress.core.artifacts import read_compression_json

    if config.from_weights:
        return None, None, config.head_size, "zero weights (--from-weights)"
    given = config.compression_json
    path = Path(given) if given else Path(model).parent / "compression.json"
    if given and not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    if not path.is_file():
        return None, None, config.head_size, "zero weights (no compression.json next to the input)"
    if path.name != "compression.json":
        raise InvalidConfigError(
            f"--compression-json must name a file called compression.json (its checksums are "
            f"relative to its folder), got {path}"
        )
    data = read_compression_json(path.parent, verify=True)
    if data.get("onnx", {}).get("shrunk") and path.parent.resolve() == Path(model).parent.resolve():
        raise ArtifactError(f"{model} is already shrunk (see {path}); shrink the dense export, or pass --from-weights")
    geo = data.get("geometry") or {}
    layers = data.get("layers")
    if not layers:
        raise ArtifactError(
            f"{path} has no per-layer `layers` structure; pass --from-weights to detect it from the graph"
        )
    return layers, geo.get("num_heads"), config.head_size or geo.get("head_size"), str(path)


def _head_size_from_config(directory: Path) -> int | None:
    """Head size from a config.json next to the graph (exports copy it there)."""
    if not (directory / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        from compress.core.structure import geometry

        return geometry(AutoConfig.from_pretrained(str(directory))).head_size
    except Exception:  # unknown family or unreadable config: the graph itself is the next source
        return None


def shrink(model: PathLike, output: PathLike, config: ShrinkConfig | None = None) -> ShrinkResult:
    """Cut the pruned heads / FFN dims out of an ONNX graph (structure from compression.json or zero
    weights); checked against the input with ONNX Runtime and written atomically."""
    from exporters.optimize import optimize
    from exporters.surgery.shrink import shrink_file

    config = config or ShrinkConfig()
    kept, num_heads, head_size, source = shrink_structure(model, config)
    head_size = head_size or _head_size_from_config(Path(model).parent)
    report = shrink_file(
        model,
        output,
        kept,
        num_heads,
        head_size,
        atol=config.atol,
        overwrite=config.overwrite,
        optimize=optimize if config.optimize else None,
    )
    report["structure_from"] = source
    metrics = {"params_before": report["params_before"], "params_after": report["params_after"]}
    return ShrinkResult(Path(output), metrics, report)


def quantize(
    model: PathLike,
    output: PathLike,
    config: QuantizeConfig | None = None,
    *,
    calibration_data=None,
    task_data=None,
    overwrite: bool = False,
    threads: int | None = None,
    eval_batch_size: int | None = None,
) -> QuantizeResult:
    """int8 quantization with ONNX Runtime (dynamic by default); `task_data` (a loaded TaskData) adds dev
    metrics before and after, `calibration_data` (tokenized rows) feeds static mode."""
    from compress.ort.quantize import quantize_onnx

    r = quantize_onnx(
        model,
        output,
        config,
        calibration_data=calibration_data,
        task_data=task_data,
        overwrite=overwrite,
        threads=threads,
        eval_batch_size=eval_batch_size,
    )
    return QuantizeResult(Path(r.output), dict(r.metrics_after or {}), r.to_dict())


def benchmark(
    models: list[PathLike],
    config: BenchConfig | None = None,
    *,
    labels: list[str] | None = None,
    torch_checkpoint: PathLike | None = None,
    command: str | None = None,
    progress=None,
) -> BenchResult:
    """Interleaved ONNX Runtime latency of `models` over the config's batch x length grid."""
    from compress.ort.bench import onnx_runner, run_benchmark, torch_runner

    config = config or BenchConfig()
    if config.threads == 0:  # the CLI's "all cores"
        config = replace(config, threads=None)
    config.validate()
    if labels and len(labels) != len(models):
        raise InvalidConfigError(f"--labels has {len(labels)} names for {len(models)} models")
    runners = [onnx_runner(str(m), config, lab) for m, lab in zip(models, labels or [None] * len(models))]
    if torch_checkpoint:
        runners.append(torch_runner(str(torch_checkpoint), config))
    report = run_benchmark(runners, config, command=command, progress=progress)
    metrics = {f"{r['model']}@{r['batch_size']}x{r['seq_len']}": r["p50_ms"] for r in report["results"]}
    return BenchResult(None, metrics, report)


def run(config: RunConfig, output: PathLike, *, overwrite: bool = False) -> RunResult:
    """The main job: prune -> (fill) -> export + shrink + fuse -> quantize -> eval -> bench, with a report."""
    from compress.pipeline import run_pipeline

    summary = run_pipeline(config, output, overwrite=overwrite)
    metrics = {
        f"{row['model']} {k}": v
        for row in summary["rows"]
        for k, v in row.items()
        if k.startswith(("dev_", "speedup_"))
    }
    return RunResult(Path(output), metrics, summary)


__all__ = [
    "BenchConfig",
    "BenchResult",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "EvalResult",
    "ExportConfig",
    "ExportResult",
    "PruneConfig",
    "PruneResult",
    "QuantizeConfig",
    "QuantizeResult",
    "Result",
    "RunConfig",
    "RunResult",
    "ShrinkConfig",
    "ShrinkResult",
    "TrainConfig",
    "benchmark",
    "evaluate",
    "export_onnx",
    "finetune",
    "prune",
    "quantize",
    "run",
    "shrink",
]
