"""The public Python API: one function per step of the pipeline, all of one shape,

    verb(input, output, config=None, *, data=None)

where `config` is the step's dataclass from compress.core.config (None: its defaults; `overwrite` and
`threads` are fields of it wherever the step has them) and `data` a DataConfig for the steps that read
task data (prune, finetune, quantize, run); export_onnx and shrink read none. evaluate and benchmark
write nothing: `evaluate(model, config, *, data)`, `benchmark(models, config)`. Each returns a small
Result (path, metrics, report). The CLI is a thin shell over these functions.

    import compress
    data = compress.DataConfig(task="sst2")
    pruned = compress.prune("minilm", "runs/pruned", compress.PruneConfig(method="hybrid", lambda_reg=10), data=data)
    onnx = compress.export_onnx(pruned.path, "runs/onnx", compress.ExportConfig(shrink=True, optimize=True))
    int8 = compress.quantize(onnx.path, "runs/int8")
    print(compress.evaluate(int8.path, data=data).metrics)
    print(compress.benchmark([onnx.path, int8.path]).report["results"])

Heavy libraries (torch, transformers, onnxruntime) load inside the functions, so `import compress`
stays quick.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from compress import _API
from compress.core.config import (
    BenchConfig,
    DataConfig,
    DistillConfig,  # noqa: F401  (public: compress.DistillConfig)
    EvalConfig,
    ExportConfig,
    PruneConfig,
    QuantizeConfig,
    RunConfig,
    ShrinkConfig,
    TrainConfig,
)
from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.record import LayerKeep, as_layer_keeps
from exporters.spec import MODEL_FILE

PathLike = str | os.PathLike


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
    """metrics: p50 ms per `model@batchxseq` (on real text: `model@batch/order`); report: the full
    benchmark report (environment included)."""


@dataclass
class RunResult(Result):
    """path: the run folder; metrics: the task's metrics and speedup per model row; report: summary.json."""


# ------------------------------------------------------------------------------------------ steps
def prune(
    model: PathLike | None,
    output: PathLike,
    config: PruneConfig | None = None,
    *,
    data: DataConfig | None = None,
    callbacks: list | None = None,
) -> PruneResult:
    """Prune `model` (a local dir, a hub name, `minilm`, or None: the default model; hybrid-filled reads
    it from config.source) with config.method; writes a Hugging Face checkpoint with compression.json
    to `output`. `callbacks`: transformers TrainerCallbacks for the training loop."""
    from compress.training.driver import prune as run_prune

    model = str(model) if model is not None else None
    info = run_prune(config or PruneConfig(), _data(data), model, output=output, callbacks=callbacks)
    return _checkpoint_result(output, info)


def finetune(
    model: PathLike | None, output: PathLike, config: TrainConfig | None = None, *, data: DataConfig | None = None
) -> PruneResult:
    """Dense fine-tuning (a teacher or a baseline) with the same data plumbing."""
    from compress.training.driver import finetune as run_finetune

    model = str(model) if model is not None else None
    info = run_finetune(config or TrainConfig(), _data(data), model, output=output)
    return _checkpoint_result(output, info)


def _data(data: DataConfig | None) -> DataConfig:
    """The task data of a training or evaluation step (default: sst2)."""
    return (data or DataConfig()).resolved()


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


def evaluate(model: PathLike, config: EvalConfig | None = None, *, data: DataConfig | None = None) -> EvalResult:
    """Dev metrics of a checkpoint directory or of an ONNX model (a .onnx or a folder holding model.onnx),
    for any task type. Without a task, task type or data files in `data`, the task is the model's own
    (its compression.json, or the one beside the graph; else its outputs), sst2 for a model with none."""
    config = config or EvalConfig()
    if config.batch_size is not None and config.batch_size < 1:
        raise InvalidConfigError(f"--batch-size {config.batch_size} must be >= 1")
    onnx = is_onnx(model)
    if not onnx and not Path(model).exists():
        raise ArtifactError(f"model path {model} not found")
    data = _eval_data(model, data, onnx)
    kind = data.kind
    note = None
    if onnx:
        from compress.ort.evaluate import eval_batch_size, evaluate_onnx_path, evaluate_task_onnx

        # Dynamic int8 depends on the batch it runs in: evaluated row by row unless asked otherwise, and said so.
        batch, note = eval_batch_size(model, config.batch_size)
        if kind == "sequence-classification":
            metrics = evaluate_onnx_path(
                str(model),
                data,
                batch_size=batch,
                max_length=128 if config.max_length is None else config.max_length,
                max_eval_samples=config.max_eval_samples,
                provider=config.provider,
                threads=config.threads,
            )
        else:
            metrics = evaluate_task_onnx(
                model,
                data,
                kind,
                batch_size=batch,
                max_length=config.max_length,
                max_eval_samples=config.max_eval_samples,
                provider=config.provider,
                threads=config.threads,
                teacher_predict=_embedding_teacher(model, data) if kind == "embedding" else None,
            )
    else:
        from compress.training.driver import evaluate_checkpoint

        batch = config.batch_size or 64
        metrics = evaluate_checkpoint(
            str(model), data, batch_size=batch, max_length=config.max_length, max_eval_samples=config.max_eval_samples
        )
    report = {"model": str(model), "task": data.task or "custom", **metrics, "batch_size": batch}
    if kind != "sequence-classification":
        report["task_type"] = kind
    if note:
        report["note"] = note
    return EvalResult(None, metrics, report)


def _recorded(model: PathLike, onnx: bool) -> tuple[dict, str | None]:
    """(compression.json of a checkpoint or beside a graph, the model's task type when it can tell)."""
    from compress.core.artifacts import read_compression_json

    if onnx:
        from compress.ort.evaluate import graph_info, graph_task_type

        return graph_info(model), graph_task_type(model)
    info = read_compression_json(model, verify=False) or {}
    st_folder = (Path(model) / "modules.json").is_file()  # a sentence-transformers model: an encoder with pooling
    return info, info.get("task_type") or ("embedding" if st_folder else None)


def _eval_data(model: PathLike, data: DataConfig | None, onnx: bool) -> DataConfig:
    """The data to evaluate `model` on: what was given, completed by the model's record: its built-in
    task when none is given, its task type when data files are given without one."""
    from compress.core.config import BUILTIN_TASKS
    from compress.core.errors import DataError

    data = data or DataConfig()
    info, kind = _recorded(model, onnx)
    given_kind = data.task_type or BUILTIN_TASKS.get(data.task or "")
    if data.task is None and not (data.train_file or data.validation_file):
        recorded = info.get("task")
        kind = given_kind or kind
        if recorded in BUILTIN_TASKS and BUILTIN_TASKS[recorded] == (kind or BUILTIN_TASKS[recorded]):
            data = replace(data, task=recorded)
        elif kind == "embedding":  # its evaluation sets are built in, whatever corpus it was distilled on
            data = replace(data, task="embedding")
        elif kind not in (None, "sequence-classification") or recorded:
            raise DataError(
                f"{model} is a {kind or 'sequence-classification'} model trained on data files ({recorded or 'not recorded'}); "
                "pass --validation-file (or a built-in --task)"
            )
    if given_kind is None and kind is not None and data.task is None:
        data = replace(data, task_type=kind)
    return data.resolved()


def _embedding_teacher(model: PathLike, data: DataConfig):
    """`predict` of the PyTorch teacher an embedding graph is compared with: the teacher (else the base
    model) its compression.json records; None (no fidelity metrics) for a graph with no record."""
    from compress.core.models import resolve_model
    from compress.ort.evaluate import graph_info
    from compress.tasks.batching import torch_predict
    from compress.training.tasks import task_type

    info = graph_info(model)
    name = info.get("teacher") or info.get("base_model")
    if not name:
        return None
    task = task_type("embedding")
    return torch_predict(task.load_teacher(resolve_model(name), None, data), task.outputs)


def export_onnx(checkpoint: PathLike, output: PathLike, config: ExportConfig | None = None) -> ExportResult:
    """Export a checkpoint to `output`/model.onnx, validated against PyTorch; optionally shrunk and fused.

    The head is the checkpoint's task type (compression.json, else a sentence-transformers folder's
    modules.json, else its architecture). An embedding model exports as one graph with
    `last_hidden_state` and `sentence_embedding` (pooling and normalisation inside) into a
    sentence-transformers folder: `output` holds the checkpoint's model files, the graph is
    `output`/onnx/model.onnx, where sentence-transformers looks for it."""
    from compress.task_onnx import export

    r = export(checkpoint, output, config or ExportConfig())
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
        **hidden_structure(model, config),
    )
    report["structure_from"] = source
    metrics = {"params_before": report["params_before"], "params_after": report["params_after"]}
    return ShrinkResult(Path(output), metrics, report)


def hidden_structure(model: PathLike, config: ShrinkConfig) -> dict:
    """shrink_file's hidden keywords: compression.json's `hidden` kept dims when it has them (and
    --from-weights is not given), else detection from zero LayerNorm / embedding dims; none with --hidden off."""
    from compress.core.artifacts import read_compression_json

    if config.hidden == "off":
        return {}
    path = Path(config.compression_json) if config.compression_json else Path(model).parent / "compression.json"
    data = read_compression_json(path.parent, verify=False) if path.is_file() and not config.from_weights else None
    section = (data or {}).get("hidden")
    if section and section["kept_count"] < section["size"]:
        return {"hidden_kept": list(section["kept"])}
    return {"detect_hidden": True}


def quantize(
    model: PathLike, output: PathLike, config: QuantizeConfig | None = None, *, data: DataConfig | None = None
) -> QuantizeResult:
    """int8 quantization with ONNX Runtime (dynamic by default). With `data` (a task or data files), dev
    metrics before and after; static mode calibrates on config.calibration_file, else on data's
    training split (sentence classification only)."""
    from compress.ort.evaluate import graph_task_type
    from compress.ort.quantize import quantize_onnx
    from compress.task_onnx import int8_config

    config = config or QuantizeConfig()
    config.validate()  # bad flags fail before any data is loaded
    given = data is not None and bool(data.task or data.task_type or data.train_file or data.validation_file)
    kind = data.kind if given else graph_task_type(model)
    config = int8_config(config, kind)
    if kind == "sequence-classification":
        task_data, calibration = _quantize_data(model, config, data)
        r = quantize_onnx(
            model,
            output,
            config,
            calibration_data=calibration,
            task_data=task_data,
            overwrite=config.overwrite,
            threads=config.threads,
            eval_batch_size=config.eval_batch_size,
        )
        return QuantizeResult(Path(r.output), dict(r.metrics_after or {}), r.to_dict())
    if config.mode == "static" and not config.calibration_file:
        raise InvalidConfigError(
            f"static int8 of a {kind or 'bare encoder'} graph calibrates on --calibration-file (text)"
        )
    _, calibration = _quantize_data(model, config, None)
    r = quantize_onnx(
        model, output, config, calibration_data=calibration, overwrite=config.overwrite, threads=config.threads
    )
    if given:
        from compress.ort.evaluate import evaluate_task_onnx

        data = _eval_data(model, data, onnx=True)
        r.eval_batch_size = config.eval_batch_size or (1 if config.mode == "dynamic" else 32)
        teacher = _embedding_teacher(model, data) if kind == "embedding" else None
        kw = dict(batch_size=r.eval_batch_size, max_eval_samples=config.max_eval_samples, threads=config.threads)
        r.metrics_before = evaluate_task_onnx(model, data, kind, teacher_predict=teacher, **kw)
        r.metrics_after = evaluate_task_onnx(r.output, data, kind, teacher_predict=teacher, **kw)
    return QuantizeResult(Path(r.output), dict(r.metrics_after or {}), {**r.to_dict(), "task_type": kind})


def _quantize_data(model: PathLike, config: QuantizeConfig, data: DataConfig | None):
    """(task data for dev metrics, tokenized calibration rows), each None when not asked for. Unlike the
    training steps there is no default task: without data, quantize measures nothing."""
    task_given = data is not None and bool(data.task or data.train_file or data.validation_file)
    if not task_given and not config.calibration_file:
        return None, None
    from compress.ort.calibration import read_calibration_file, tokenized_texts
    from compress.training.data import label_names_of, load_task_data
    from exporters.files import read_config, resolve_onnx
    from exporters.inputs import load_tokenizer

    folder = resolve_onnx(model, check=False).parent
    tok = load_tokenizer(folder, required=True)
    task_data = calibration = None
    if task_given:
        splits = ("train", "dev") if config.mode == "static" and not config.calibration_file else ("dev",)
        task_data = load_task_data(
            data.task,
            tok,
            **data.source(train="train" in splits),
            splits=splits,
            max_length=config.max_length,
            max_train_samples=config.num_samples,
            max_eval_samples=config.max_eval_samples,
            label_names=label_names_of(read_config(folder)),
        )
        calibration = task_data.train
    if config.calibration_file:
        column = (data.text_column if data else None) or "sentence"
        texts = read_calibration_file(config.calibration_file, column)
        calibration = tokenized_texts(texts, tok, config.max_length)
    return task_data, calibration


def benchmark(
    models: list[PathLike],
    config: BenchConfig | None = None,
    *,
    data: DataConfig | None = None,
    labels: list[str] | None = None,
    torch_checkpoint: PathLike | None = None,
    command: str | None = None,
    progress=None,
) -> BenchResult:
    """Interleaved ONNX Runtime latency of `models` over the config's batch x length grid; without a
    config, the defaults at the graphs' task's length (384 for question answering, else 128).

    On real text instead when config.data names a task or a file, or `data` a task or a validation file
    (`data` also gives the columns and the data folder): the dev rows under each model's tokenizer, each
    batch padded to its longest row, in arrival and length order (compress.ort.bench_data); metrics are
    then the p50 ms per `model@batch/order`."""
    from compress.ort.bench import onnx_runner, run_benchmark, torch_runner

    if config is None:
        from compress.task_onnx import default_seq_lens

        config = BenchConfig(seq_lens=default_seq_lens(models))
    if config.threads == 0:  # the CLI's "all cores"
        config = replace(config, threads=None)
    config.validate()
    if labels and len(labels) != len(models):
        raise InvalidConfigError(f"--labels has {len(labels)} names for {len(models)} models")
    from compress.ort.bench_data import data_source, run_data_benchmark

    source = data_source(config.data, data)
    if source is not None:
        if torch_checkpoint:
            raise InvalidConfigError("--torch is timed on the grid only; drop it or --data")
        report = run_data_benchmark(models, config, source, labels=labels, command=command, progress=progress)
        metrics = {f"{r['model']}@{r['batch_size']}/{r['bucketing']}": r["p50_ms"] for r in report["results"]}
        return BenchResult(None, metrics, report)
    runners = [onnx_runner(str(m), config, lab) for m, lab in zip(models, labels or [None] * len(models))]
    if torch_checkpoint:
        runners.append(torch_runner(str(torch_checkpoint), config))
    report = run_benchmark(runners, config, command=command, progress=progress)
    metrics = {f"{r['model']}@{r['batch_size']}x{r['seq_len']}": r["p50_ms"] for r in report["results"]}
    return BenchResult(None, metrics, report)


def run(
    model: PathLike | None, output: PathLike, config: RunConfig | None = None, *, data: DataConfig | None = None
) -> RunResult:
    """The main job: prune -> (fill) -> export + shrink + fuse -> quantize -> eval -> bench, with a report.
    Every task type runs through it (sentence classification, question answering, token classification,
    embeddings). `model` and `data` fill the recipe's `model` and data fields (task, task type, folder,
    files, columns) when given; None keeps the recipe's (the student defaults to the teacher)."""
    from compress.pipeline import run_pipeline

    cfg = config or RunConfig()
    if model is not None:
        cfg = replace(cfg, model=str(model))
    if data is not None:
        given = {f.name: getattr(data, f.name) for f in fields(data) if getattr(data, f.name) != f.default}
        if given.get("train_file") or given.get("validation_file"):
            given.setdefault("task", None)  # the files are the task, not the recipe's default one
        cfg = replace(cfg, **given)
    summary = run_pipeline(cfg, output)
    metrics = {
        f"{row['model']} {k}": v
        for row in summary["rows"]
        for k, v in row.items()
        if k.startswith(("dev_", "speedup_"))
    }
    return RunResult(Path(output), metrics, summary)


__all__ = list(_API)  # one list of the public names, kept in compress/__init__.py
