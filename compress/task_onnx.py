"""The ONNX steps as each task type needs them, shared by the API (compress.api) and `compress run`
(compress.pipeline): which export row a checkpoint takes and the model it is exported from, what int8
keeps in fp32 when there is no classifier, where an embedding model's int8 graph goes, and the
sequence length a task's graph is timed at.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from compress.core.config import CLASSIFIER, ExportConfig, QuantizeConfig, bench_length
from compress.core.errors import InvalidConfigError

# sentence-transformers' name for a dynamic int8 graph with QInt8 weights and no reduce_range
# (export_dynamic_quantized_onnx_model(model, "avx512_vnni")), beside onnx/model.onnx
INT8_FILE = "model_qint8_avx512_vnni.onnx"


def export(checkpoint: str | os.PathLike, output: str | os.PathLike, config: ExportConfig):
    """exporters.export.export_checkpoint for the checkpoint's task type: an embedding model is loaded
    here (an encoder with its pooling, eager attention) and exported into a sentence-transformers
    folder, with a note on where its int8 graph belongs. Returns the ExportReport."""
    from compress.core.artifacts import check_output_dir
    from exporters.export import export_checkpoint

    if config.atol <= 0:
        raise InvalidConfigError("--atol must be positive")
    check_output_dir(output, config.overwrite, inputs=(checkpoint,))  # before loading anything
    task = config.task or export_task(checkpoint)
    model = None
    if task == "sentence-embedding":
        from compress.core.models import load_config
        from compress.tasks.embedding import load_model

        load_config(str(checkpoint))  # a missing folder or config: one line before the weights
        model = load_model(str(checkpoint), attn_implementation="eager")
    report = export_checkpoint(
        checkpoint,
        output,
        task=task,
        overwrite=config.overwrite,
        opset=config.opset,
        validate=config.validate,
        atol=config.atol,
        exporter=config.exporter,
        shrink=config.shrink,
        optimize=config.optimize,
        model=model,
    )
    if task == "sentence-embedding":
        report.notes.append(
            f"a sentence-transformers folder: SentenceTransformer({str(output)!r}) loads it; int8 where "
            f"sentence-transformers looks: compress quantize {report.path} -o {report.path.with_name(INT8_FILE)}"
        )
    return report


def export_task(checkpoint: str | os.PathLike) -> str | None:
    """The export row of a checkpoint's task type (compression.json), sentence-embedding for a
    sentence-transformers folder, else None: exporters read the head from the architecture."""
    from compress.core.artifacts import read_compression_json
    from compress.training.tasks import task_type

    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        return None  # export_checkpoint says what is wrong with the folder
    kind = (read_compression_json(folder, verify=False) or {}).get("task_type")
    if kind:
        return task_type(kind).export_task
    return "sentence-embedding" if (folder / "modules.json").is_file() else None


def int8_config(config: QuantizeConfig, kind: str | None) -> QuantizeConfig:
    """The quantization recipe for a graph of task type `kind` (None: a bare encoder). Without a
    classifier the default keep_fp32 would find the last MatMul on every path back from the outputs,
    each layer's output projections (the residual stream reaches them all): everything is quantized."""
    if kind in ("embedding", None) and config.keep_fp32 == (CLASSIFIER,):
        return replace(config, keep_fp32=())
    return config


def default_seq_lens(models: list) -> tuple[int, ...]:
    """bench_length of each graph's task (one length each for a mixed set)."""
    from compress.ort.evaluate import graph_task_type

    return tuple(sorted({bench_length(graph_task_type(m)) for m in models})) or (128,)
