"""int8 quantization of exported encoders with ONNX Runtime's quantization tools.

Two recipes:
- dynamic (default): int8 weights, activation ranges computed per batch at run time
  (DynamicQuantizeLinear + MatMulInteger, fused by ORT into DynamicQuantizeMatMul). No data needed.
- static: activation ranges calibrated on real task text, emitted as QOperator ops (QLinearMatMul...)
  or as QuantizeLinear/DequantizeLinear pairs (QDQ) that ORT fuses at load time.

Pre-processing matters more than the recipe for graphs coming from other tools:
- exporters leave `graph.value_info` entries whose concrete shapes disagree with what ONNX shape
  inference derives for dynamic axes, and quantize_dynamic then stops with a ShapeInferenceError;
  the stale entries are dropped first.
- ORT's transformer optimizer emits com.microsoft ops (Attention, SkipLayerNormalization, ...) that
  ONNX shape inference cannot type, and the quantizer then fails with "Unable to find data type for
  weight_name=..."; ORT's symbolic shape inference knows those ops, so it is run on such graphs.
Together these make export -> shrink -> (optional fusion) -> quantize work in one chain.

Defaults follow benchmarks/results/quantize.md (MiniLM-L6 SST-2, ORT 1.31-1.32): dynamic, per-channel
weight scales (see QuantizeConfig.per_channel), no reduce_range (-2.9 points on VNNI CPUs, which do not
need it), no fusion (the fused QAttention graph was slower), attention score MatMuls left fp32
(quantizing them cost 0.5 point and gained nothing), classifier kept fp32 (free, and a guard for small
heads). Writing the output folder (sidecars, compression.json) is compress.core.artifacts' job.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compress.core.artifacts import check_derived_output, write_derived_output
from compress.core.config import CLASSIFIER, QuantizeConfig
from compress.core.errors import CompressError, GraphPatternError, InvalidConfigError
from compress.ort.calibration import calibration_reader
from compress.ort.evaluate import output_index, read_pad_id
from exporters.files import (
    SIDECAR_FILES,
    first_line,
    has_contrib_ops,
    import_contrib_domains,
    read_config,
    resolve_onnx,
    save_model,
)
from exporters.inputs import graph_inputs, load_tokenizer, random_feeds, sample_inputs, vocab_size
from exporters.optimize import optimize as fuse_and_check
from exporters.sessions import checked_diff, make_session, ort_logging
from exporters.spec import MODEL_FILE
from exporters.surgery.rewrite import normalize_heads

# Ops whose presence shows that a graph was really quantized (QOperator and QDQ forms).
INTEGER_OPS = (
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
    "QEmbedLayerNormalization",
    "QLinearAdd",
    "QLinearMul",
    "QuantizeLinear",
    "DequantizeLinear",
)


@dataclass
class QuantizeReport:
    output: Path
    size_before: int
    size_after: int
    config: dict
    kept_fp32: list[str]  # node names excluded from quantization
    op_counts: dict[str, int]  # integer ops in the output graph
    fusion: dict[str, int] | None = None  # fused-op counts when config.optimize
    max_abs_diff: float | None = None  # logits, fp32 vs int8, on random tokens (a sanity check)
    metrics_before: dict[str, float] | None = None
    metrics_after: dict[str, float] | None = None
    eval_batch_size: int | None = None  # the batch the metrics were measured at (dynamic int8 depends on it)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output"] = str(self.output)
        return d

    def record(self) -> dict:
        """compression.json's `quantization` section."""
        q = self.to_dict()
        return {
            k: q[k]
            for k in (
                "config",
                "kept_fp32",
                "op_counts",
                "fusion",
                "size_before",
                "size_after",
                "max_abs_diff",
                "metrics_before",
                "metrics_after",
                "eval_batch_size",
            )
        }


# ---------------------------------------------------------------------------------------------
# Pre-processing


def prepare_graph(model):
    """Drop stale value_info; type contrib ops with ORT's symbolic shape inference when present."""
    del model.graph.value_info[:]
    if not has_contrib_ops(model):
        return model  # the quantizer's own ONNX shape inference is enough (and is what it runs)
    import_contrib_domains(model)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        with ort_logging(logging.ERROR):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as e:
        raise GraphPatternError(
            f"shape inference failed on this graph's fused (com.microsoft) ops ({first_line(e)}); "
            "quantize the graph before running ORT's optimizer on it, or quantize without --optimize"
        ) from e


# ---------------------------------------------------------------------------------------------
# Which nodes stay in fp32


def classifier_nodes(model) -> list[str]:
    """Names of the last MatMul/Gemm on the path from each graph output back into the graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for out in model.graph.output:
        seen, stack = set(), [out.name]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("MatMul", "Gemm"):
                found.append(node.name)
                continue  # stop at the first one on this path: that is the classifier
            stack.extend(node.input)
    return sorted(set(found))


def match_nodes(model, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Node names selected by `patterns`: an op type, a glob over node names, a plain substring of a
    node name, or the keyword `classifier`. A pattern that selects nothing is an error (a typo would
    otherwise silently quantize what the user meant to protect)."""
    names: set[str] = set()
    for pat in patterns:
        hit = set()
        if pat == CLASSIFIER:
            hit.update(classifier_nodes(model))
        for n in model.graph.node:
            if (
                n.op_type == pat
                or fnmatch.fnmatchcase(n.name, pat)
                or (not any(c in pat for c in "*?[") and pat in n.name)
            ):
                hit.add(n.name)
        if not hit:
            raise InvalidConfigError(
                f"--keep-fp32 {pat!r} matches no node; give an op type (MatMul), a node-name glob "
                f"(*classifier*) or the keyword {CLASSIFIER!r}"
            )
        names |= hit
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed and names:
        # The quantizer identifies nodes by name; name the anonymous ones so exclusion is exact.
        for k, n in enumerate(unnamed):
            n.name = f"{n.op_type}_unnamed_{k}"
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# Checks on the result


def integer_op_counts(model) -> dict[str, int]:
    counts = Counter(n.op_type for n in model.graph.node)
    return {op: counts[op] for op in INTEGER_OPS if counts.get(op)}


def _logits(path: Path, feeds: dict, threads: int | None) -> np.ndarray:
    session = make_session(path, "cpu", threads, check=False)
    try:
        return session.run(None, feeds)[output_index(session)]
    except Exception as e:  # ORT kernel errors (bad shapes, out-of-range indices) on this graph
        raise GraphPatternError(f"ONNX Runtime cannot run {path.name}: {first_line(e)}") from e


# ---------------------------------------------------------------------------------------------
# Main entry


def _run_ort_quantizer(src: Path, dst: Path, config: QuantizeConfig, exclude: list[str], reader) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    op_types = list(config.op_types)
    if config.mode == "dynamic":
        # quantize_dynamic first rewrites each Gemm "X" into MatMul "X_MatMul" + Add "X_Add" and then
        # matches nodes_to_exclude by name, so an excluded Gemm must be named in its rewritten form too.
        exclude = exclude + [f"{n}_MatMul" for n in exclude]
    try:
        with ort_logging(logging.ERROR):
            if config.mode == "dynamic":
                quantize_dynamic(
                    src,
                    dst,
                    op_types_to_quantize=op_types,
                    per_channel=config.per_channel,
                    reduce_range=config.reduce_range,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    extra_options={"MatMulConstBOnly": config.const_b_only},
                )
            else:
                method = {
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[config.calibration_method]
                quantize_static(
                    src,
                    dst,
                    reader,
                    quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                    op_types_to_quantize=op_types,
                    per_channel=config.per_channel,
                    reduce_range=config.reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    calibrate_method=method,
                    extra_options={
                        "MatMulConstBOnly": config.const_b_only,
                        "ActivationSymmetric": config.symmetric_activations,
                    },
                )
    except CompressError:
        raise
    except Exception as e:  # ORT raises RuntimeError/ValueError/InferenceError with internals in them
        raise GraphPatternError(
            f"ONNX Runtime could not quantize this graph ({e.__class__.__name__}: {first_line(e)}); "
            "try --keep-fp32 on the failing node, or quantize before running other graph optimizers"
        ) from e


def quantize_onnx(
    model_path: str | Path,
    output: str | Path,
    config: QuantizeConfig | None = None,
    *,
    calibration_data=None,
    task_data=None,
    overwrite: bool = False,
    threads: int | None = None,
    eval_batch_size: int | None = None,
) -> QuantizeReport:
    """Quantize `model_path` (a .onnx file or a dir with model.onnx) into `output`.

    `output` ending in .onnx is a file (sidecars copied next to it when missing there); anything else
    is a directory that receives model.onnx, the sidecars and an updated compression.json.
    `calibration_data`: tokenized dataset for static mode. `task_data`: TaskData whose dev split is
    used to report accuracy before and after, at `eval_batch_size` (default: 1 for dynamic int8, whose
    result depends on the batch it runs in, see compress.ort.evaluate; 32 for static).
    """
    config = config or QuantizeConfig()
    config.validate()
    if config.mode == "static" and calibration_data is None:
        raise InvalidConfigError("static quantization needs calibration data: pass --task or --calibration-file")
    import onnx

    src = resolve_onnx(model_path)
    src_dir = src.parent
    out = Path(output)
    graph = out if out.suffix == ".onnx" else out / MODEL_FILE
    check_derived_output(src, out, graph, overwrite)
    if eval_batch_size is not None and eval_batch_size < 1:
        raise InvalidConfigError(f"--batch-size {eval_batch_size} must be >= 1")
    eval_batch_size = eval_batch_size or (1 if config.mode == "dynamic" else 32)

    warnings: list[str] = []
    model = onnx.load(str(src))
    already = integer_op_counts(model)
    if already:
        raise InvalidConfigError(
            f"{src} is already quantized ({', '.join(f'{k} x{v}' for k, v in already.items())}); "
            "quantize the fp32 export instead"
        )
    fusion = None
    if config.optimize:
        model, fusion = _fuse(model, src_dir, warnings)
    model = prepare_graph(model)
    exclude = match_nodes(model, config.keep_fp32) if config.keep_fp32 else []

    with tempfile.TemporaryDirectory(prefix="compress-quant-") as tmp:
        quantized, ops, diff = _quantize_graph(model, src, Path(tmp), config, exclude, calibration_data, threads)
        result = QuantizeReport(
            output=graph,
            size_before=onnx_size(src),
            size_after=quantized.stat().st_size,
            config=asdict(config),
            kept_fp32=exclude,
            op_counts=ops,
            fusion=fusion,
            max_abs_diff=diff,
            warnings=warnings,
        )
        if task_data is not None:
            from compress.ort.evaluate import evaluate_onnx

            result.eval_batch_size = eval_batch_size
            pad = read_pad_id(src)  # the quantized graph sits in a temporary folder without the tokenizer
            result.metrics_before = evaluate_onnx(src, task_data, eval_batch_size, threads=threads, pad_id=pad)
            result.metrics_after = evaluate_onnx(quantized, task_data, eval_batch_size, threads=threads, pad_id=pad)
        result.warnings += write_derived_output(
            quantized,
            src,
            out,
            graph,
            overwrite=overwrite,
            sidecars=SIDECAR_FILES,
            sections={"quantization": result.record()},
        )
    return result


def _quantize_graph(
    model, src: Path, tmp: Path, config: QuantizeConfig, exclude: list[str], calibration_data, threads: int | None
) -> tuple[Path, dict[str, int], float]:
    """Quantize the prepared `model` (of `src`) into tmp/quantized.onnx: (that file, its integer op
    counts, the largest logit difference from `src` on random tokens)."""
    import onnx

    prepared, quantized = tmp / "prepared.onnx", tmp / "quantized.onnx"
    save_model(model, prepared)
    reader = None
    if config.mode == "static":
        reader = calibration_reader(model, calibration_data, config.num_samples, read_pad_id(src))
    _run_ort_quantizer(prepared, quantized, config, exclude, reader)

    qmodel = onnx.load(str(quantized))
    if qmodel.graph.value_info:
        # The quantizer's shape inference writes value_info; with it, ORT's runtime optimizer
        # fuses residual Add + LayerNorm into SkipLayerNormalization, whose CPU kernel is
        # slower than the two ops it replaces (ORT 1.31: 22 vs 9 ms per run at 32x128 on
        # MiniLM-L6; int8 speedup 1.82x -> 1.94x without it). ORT re-infers shapes at load
        # (exporters.surgery.validate.finalize drops them for the same reason).
        del qmodel.graph.value_info[:]
        onnx.save(qmodel, str(quantized))  # one file: an int8 graph past 2 GiB (fp32 past 8 GiB) is not supported
    ops = integer_op_counts(qmodel)
    if not ops:
        raise GraphPatternError(
            f"nothing in {src} was quantized (no {', '.join(config.op_types)} ops outside --keep-fp32); "
            "check --keep-fp32 and the op types"
        )
    # The quantized graph must load and run, and compute numbers where fp32 does; its largest logit
    # difference from fp32 is a sanity figure (int8 rounding has no tolerance that fits every model).
    feeds = random_feeds(graph_inputs(qmodel), vocab_size(model, src.parent))
    diff = checked_diff(
        _logits(src, feeds, threads), _logits(quantized, feeds, threads), "logits", "the int8 graph", "the fp32 graph"
    )
    return quantized, ops, diff


def onnx_size(path: Path) -> int:
    """Bytes of a model: the .onnx file plus the external-data files its tensors point at."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in t.external_data if e.key == "location")
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def _fuse(model, model_dir: Path, warnings: list[str]):
    """ORT transformer fusion, kept only if it computes what the unfused graph does.

    Each layer's head count is first written into its head Reshapes (normalize_heads), so shrunk
    layers that kept fewer heads fuse with their own count; only a graph whose attention cannot be
    matched falls back to the global count in config.json. That fallback silently miscomputes shrunk
    layers, which the numeric check catches: the unfused graph (still quantizable) is used instead.
    """
    try:
        model, heads, hidden = normalize_heads(model), 0, 0
    except GraphPatternError:
        cfg = read_config(model_dir)
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_heads") or 0)
        hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 0)
    names = [name for name, _ in graph_inputs(model)]
    batches = sample_inputs(names, load_tokenizer(model_dir), vocab_size(model, model_dir))
    fused, report = fuse_and_check(model, batches, num_heads=heads, hidden_size=hidden)
    if not report["fusions"]:
        why = f" ({report['note']})" if report["note"] else ""
        warnings.append(f"ORT's optimizer fused nothing in this graph{why}; quantizing it unfused")
        return model, None
    if not report["applied"]:
        warnings.append(f"the fused graph is not equivalent ({report['note']}); quantizing the unfused graph instead")
        return model, None
    return fused, report["fusions"]
