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

Defaults follow benchmarks/results/quantize.md (MiniLM-L6 SST-2, ORT 1.31, AVX512-VNNI CPU): dynamic,
per-tensor, no reduce_range (-2.9 points on VNNI CPUs, which do not need it), no fusion (the fused
QAttention graph was slower), attention score MatMuls left fp32 (quantizing them cost 0.5 point and
gained nothing), classifier kept fp32 (free, and a guard for small heads).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import (
    COMPRESSION_JSON, atomic_dir, atomic_file, check_output_dir, check_output_file, record_checksums, write_json,
)
from .errors import CompressError, DataError, GraphPatternError, InvalidConfigError
from .onnx_runtime import MODEL_FILE, first_line, iter_batches, make_session, model_inputs, output_index, read_pad_id, resolve_onnx

# Files that describe the model next to model.onnx; copied so the quantized model stays usable alone.
SIDECAR_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)

# Ops whose presence shows that a graph was really quantized (QOperator and QDQ forms).
INTEGER_OPS = (
    "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "QLinearMatMul", "QGemm", "QAttention", "QEmbedLayerNormalization", "QLinearAdd", "QLinearMul",
    "QuantizeLinear", "DequantizeLinear",
)

# Weighted ops worth quantizing in an encoder. Gather makes the embedding tables int8 (4x smaller
# files, a dequantize of the gathered rows only); Attention/EmbedLayerNormalization appear after fusion.
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Gather", "Attention", "EmbedLayerNormalization")

# Keyword for --keep-fp32: the last MatMul/Gemm before the logits, found from the graph structure
# because exporters name it differently (/classifier/MatMul, node_linear_3, ...).
CLASSIFIER = "classifier"

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class QuantizeConfig:
    mode: str = "dynamic"  # "dynamic" | "static"
    format: str = "qoperator"  # "qoperator" | "qdq"; dynamic quantization always emits QOperator ops
    # One scale per output channel of each weight. Default since it held accuracy on both CPUs measured:
    # on AVX2 without VNNI (where ORT's u8*s8 kernels can saturate) the SST-2 teacher lost 0.46 points
    # per-tensor and 0.00 per-channel (benchmarks/results/quantize.md), three pruned frontier graphs
    # -0.34..0.00 vs +0.12..+0.46 (int8_side_checks.md); on AVX-512 VNNI -0.23 vs -0.35. Same speed.
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI where u8*s8 sums can saturate
    keep_fp32: tuple[str, ...] = (CLASSIFIER,)  # node-name globs, op types, or the `classifier` keyword
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    optimize: bool = False  # ORT transformer fusion (Attention, SkipLayerNorm, ...) before quantizing
    # (works on shrunk graphs: per-layer head counts are made explicit first; result checked numerically)
    calibration_method: str = "minmax"  # static only
    num_samples: int = 128  # static only: calibration sentences
    symmetric_activations: bool = False  # static only
    # Quantize only MatMuls with a constant weight. False also quantizes the attention products
    # (Q K^T, P V): optimum's default; measured slower and less accurate here (bench_quantize).
    const_b_only: bool = True

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


@dataclass
class QuantizeResult:
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


@contextlib.contextmanager
def _quiet_ort_logging():
    """ORT's quantizer logs advice through the root logger (`logging.warning`); keep stderr clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Pre-processing


def has_contrib_ops(model) -> bool:
    return any(n.domain not in ("", "ai.onnx") for n in model.graph.node)


def import_contrib_domains(model) -> None:
    """ORT's optimizer returns graphs using com.microsoft ops without importing that domain (only its
    save_model_to_file adds it); the checker and shape inference reject such graphs."""
    import onnx

    domains = {o.domain for o in model.opset_import}
    for d in sorted({n.domain for n in model.graph.node} - domains - {"", "ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(d, 1))


def prepare_graph(model):
    """Drop stale value_info; type contrib ops with ORT's symbolic shape inference when present."""
    del model.graph.value_info[:]
    if not has_contrib_ops(model):
        return model  # the quantizer's own ONNX shape inference is enough (and is what it runs)
    import_contrib_domains(model)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        with _quiet_ort_logging():
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as e:
        raise GraphPatternError(
            f"shape inference failed on this graph's fused (com.microsoft) ops ({first_line(e)}); "
            "quantize the graph before running ORT's optimizer on it, or quantize without --optimize"
        ) from None


def _read_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _constant_values(model) -> dict[str, np.ndarray]:
    """Values of initializers and Constant-node outputs, by tensor name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def explicit_head_counts(model) -> int:
    """Write each layer's real head count into the Q/K/V Reshape shapes; returns how many were set.

    transformers 5 reshapes projections to (batch, seq, -1, head_size). ORT's attention fusion reads
    the head count from that shape and, finding -1, falls back to one global --num_heads, which is
    wrong for layers of a shrunk graph that kept fewer heads. The projection's output width / head
    size is the true count, so it replaces the -1 here (a new initializer per Concat).
    """
    from onnx import numpy_helper

    consts = _constant_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        concat, data = producer.get(node.input[1]), producer.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4 or data is None:
            continue
        heads_in, size_in = (consts.get(x) for x in concat.input[2:4])
        if heads_in is None or size_in is None or heads_in.size != 1 or size_in.size != 1:
            continue
        head_size = int(size_in.reshape(-1)[0])
        if int(heads_in.reshape(-1)[0]) != -1 or head_size <= 0:
            continue
        width = None  # output width of the Q/K/V projection feeding this Reshape
        if data.op_type == "Add":
            width = next((consts[x].shape[0] for x in data.input if x in consts and consts[x].ndim == 1), None)
        elif data.op_type == "MatMul" and data.input[1] in consts and consts[data.input[1]].ndim == 2:
            width = consts[data.input[1]].shape[1]
        if not width or width % head_size:
            continue
        name = f"{concat.name or concat.output[0]}_num_heads"
        model.graph.initializer.append(numpy_helper.from_array(np.array([width // head_size], dtype=heads_in.dtype.type), name))
        concat.input[2] = name
        changed += 1
    return changed


def fuse_transformer(model, model_dir: Path) -> tuple[object, dict[str, int]]:
    """ORT transformer fusion (python passes only, so the result is portable across CPUs).

    Head counts are first made explicit per layer (explicit_head_counts); only when that finds no
    Q/K/V reshape does the global count from config.json serve. The caller still checks the fused
    graph numerically against the unfused one.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    from exporters.optimize import fusion_options

    cfg = _read_config(model_dir)
    if explicit_head_counts(model):
        heads = hidden = 0  # let the fusion read every layer's own count from the graph
    else:
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_heads") or 0)
        hidden = int(cfg.get("hidden_size") or cfg.get("dim") or 0)
    with _quiet_ort_logging():
        try:
            optimized = optimize_model(model, model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                       optimization_options=fusion_options())
        except Exception as e:
            raise GraphPatternError(f"ORT's transformer optimizer failed on this graph: {first_line(e)}") from None
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    import_contrib_domains(optimized.model)
    return optimized.model, stats


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
            if n.op_type == pat or fnmatch.fnmatchcase(n.name, pat) or (
                not any(c in pat for c in "*?[") and pat in n.name
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
# Calibration


def calibration_reader(model, dataset, num_samples: int, pad_id: int = 0):
    """A CalibrationDataReader yielding one sentence per batch, so that no padded position enters
    the activation ranges (padding would widen them with values that never matter)."""
    from onnxruntime.quantization import CalibrationDataReader

    n = min(num_samples, len(dataset))
    if n == 0:
        raise DataError("the calibration data is empty")
    inputs = model_inputs(model)
    feeds = [f for _, f in iter_batches(dataset.select(range(n)), inputs, 1, pad_id, sort=False)]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

        def __len__(self):
            return len(feeds)

        def rewind(self):
            self._it = iter(feeds)

    return _Reader()


def tokenized_texts(texts: list[str], tokenizer, max_length: int = 128):
    """A tokenized datasets.Dataset from raw sentences (for --calibration-file)."""
    import datasets

    texts = [t for t in (s.strip() for s in texts) if t]
    if not texts:
        raise DataError("the calibration file holds no text")
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({k: list(v) for k, v in enc.items()})


def read_calibration_file(path: str | Path, text_column: str = "sentence") -> list[str]:
    """Sentences from a .txt file (one per line) or a tsv/csv/json(l) file's text column."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"calibration file {path} not found")
    if path.suffix.lower() == ".txt":
        from .data import read_text_utf8

        return read_text_utf8(path, "calibration file").splitlines()
    from .data import _read_any  # shared tsv/csv/json reader (GLUE quoting rules included)

    cols = _read_any(path)
    if text_column not in cols:
        raise DataError(f"{path} has no column {text_column!r} (it has {list(cols)}); pass --text-column")
    return [str(t) for t in cols[text_column]]


# ---------------------------------------------------------------------------------------------
# Checks on the result


def integer_op_counts(model) -> dict[str, int]:
    counts = Counter(n.op_type for n in model.graph.node)
    return {op: counts[op] for op in INTEGER_OPS if counts.get(op)}


def random_feeds(inputs: list[tuple[str, str]], vocab: int, batch: int = 2, seq: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, kind in inputs:
        dtype = np.int32 if kind == "tensor(int32)" else np.int64
        if name == "input_ids":
            feeds[name] = rng.integers(0, vocab, (batch, seq)).astype(dtype)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, seq), dtype)
        else:
            feeds[name] = np.zeros((batch, seq), dtype)
    return feeds


def vocab_size(model, model_dir: Path) -> int:
    """Vocabulary size from config.json, else from the embedding table that input_ids indexes."""
    v = _read_config(model_dir).get("vocab_size")
    if isinstance(v, int) and v > 0:
        return v
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    ids = {"input_ids"}  # and its casts (fused graphs feed int32 ids to EmbedLayerNormalization)
    for n in model.graph.node:
        if n.op_type == "Cast" and n.input[0] in ids:
            ids.add(n.output[0])
    sizes = []
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[1:2] and n.input[1] in ids:
            table = n.input[0]
        elif n.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
            table = n.input[2]  # (input_ids, segment_ids, word_embedding, position_embedding, ...)
        else:
            continue
        if len(shapes.get(table, [])) == 2:
            sizes.append(shapes[table][0])
    return min(sizes) if sizes else 100  # 100: a small range that any real vocabulary covers


def _logits(path: Path, feeds: dict, threads: int | None) -> np.ndarray:
    session = make_session(path, "cpu", threads, check=False)
    try:
        return session.run(None, feeds)[output_index(session)]
    except Exception as e:  # ORT kernel errors (bad shapes, out-of-range indices) on this graph
        raise GraphPatternError(f"ONNX Runtime cannot run {path.name}: {first_line(e)}") from None


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
        with _quiet_ort_logging():
            if config.mode == "dynamic":
                quantize_dynamic(
                    src, dst, op_types_to_quantize=op_types, per_channel=config.per_channel,
                    reduce_range=config.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    extra_options={"MatMulConstBOnly": config.const_b_only},
                )
            else:
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[config.calibration_method]
                quantize_static(
                    src, dst, reader,
                    quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                    op_types_to_quantize=op_types, per_channel=config.per_channel,
                    reduce_range=config.reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=method,
                    extra_options={"MatMulConstBOnly": config.const_b_only,
                                   "ActivationSymmetric": config.symmetric_activations},
                )
    except CompressError:
        raise
    except Exception as e:  # ORT raises RuntimeError/ValueError/InferenceError with internals in them
        raise GraphPatternError(
            f"ONNX Runtime could not quantize this graph ({e.__class__.__name__}: {first_line(e)}); "
            "try --keep-fp32 on the failing node, or quantize before running other graph optimizers"
        ) from None


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
) -> QuantizeResult:
    """Quantize `model_path` (a .onnx file or a dir with model.onnx) into `output`.

    `output` ending in .onnx is a file (sidecars copied next to it when missing there); anything else
    is a directory that receives model.onnx, the sidecars and an updated compression.json.
    `calibration_data`: tokenized dataset for static mode. `task_data`: TaskData whose dev split is
    used to report accuracy before and after, at `eval_batch_size` (default: 1 for dynamic int8, whose
    result depends on the batch it runs in, see compress.onnx_eval; 32 for static).
    """
    config = config or QuantizeConfig()
    config.validate()
    if config.mode == "static" and calibration_data is None:
        raise InvalidConfigError("static quantization needs calibration data: pass --task or --calibration-file")
    import onnx

    src = resolve_onnx(model_path)
    src_dir = src.parent
    out = Path(output)
    as_file = out.suffix == ".onnx"
    if as_file and out.exists() and not overwrite:
        raise InvalidConfigError(f"{out} exists; pass --overwrite or choose another path")
    if (out if as_file else out / MODEL_FILE).resolve() == src.resolve():
        raise InvalidConfigError("the output would replace the input model; choose another --output")
    if as_file:
        check_output_file(out, inputs=(src,))
    else:
        check_output_dir(out, overwrite, inputs=(src_dir,))
    if eval_batch_size is not None and eval_batch_size < 1:
        raise InvalidConfigError(f"--batch-size {eval_batch_size} must be >= 1")
    eval_batch_size = eval_batch_size or (1 if config.mode == "dynamic" else 32)

    warnings: list[str] = []
    model = onnx.load(str(src))
    already = integer_op_counts(model)
    if already:
        raise InvalidConfigError(f"{src} is already quantized ({', '.join(f'{k} x{v}' for k, v in already.items())}); "
                                 "quantize the fp32 export instead")
    fusion = None
    if config.optimize:
        fused, fusion = fuse_transformer(copy.deepcopy(model), src_dir)  # it edits the proto in place
        model, fusion = _checked_fusion(model, fused, fusion, src_dir, threads, warnings)
    model = prepare_graph(model)
    exclude = match_nodes(model, config.keep_fp32) if config.keep_fp32 else []

    with tempfile.TemporaryDirectory(prefix="compress-quant-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, str(prepared))
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
            # (exporters.surgery.finalize drops them for the same reason).
            del qmodel.graph.value_info[:]
            onnx.save(qmodel, str(quantized))
        ops = integer_op_counts(qmodel)
        if not ops:
            raise GraphPatternError(
                f"nothing in {src} was quantized (no {', '.join(config.op_types)} ops outside --keep-fp32); "
                "check --keep-fp32 and the op types"
            )
        # The quantized graph must load and run; compare its logits with fp32 as a sanity figure.
        feeds = random_feeds(model_inputs(qmodel), vocab_size(model, src_dir))
        diff = float(np.abs(_logits(quantized, feeds, threads) - _logits(src, feeds, threads)).max())

        result = QuantizeResult(
            output=out if as_file else out / MODEL_FILE, size_before=onnx_size(src),
            size_after=quantized.stat().st_size, config=asdict(config), kept_fp32=exclude, op_counts=ops,
            fusion=fusion, max_abs_diff=diff, warnings=warnings,
        )
        if task_data is not None:
            from .onnx_runtime import evaluate_onnx

            result.eval_batch_size = eval_batch_size
            result.metrics_before = evaluate_onnx(src, task_data, eval_batch_size, threads=threads)
            result.metrics_after = evaluate_onnx(quantized, task_data, eval_batch_size, threads=threads)
        _write_outputs(quantized, src, out, as_file, overwrite, result)
    return result


def onnx_size(path: Path) -> int:
    """Bytes of a model: the .onnx file plus the external-data files its tensors point at."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in t.external_data if e.key == "location")
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())


def _unrelated_files(folder: Path, src: Path) -> list[str]:
    """Files in `folder` that are not model files: `-o DIR/x.onnx` must not scatter config and
    tokenizer files among someone else's (issue 17)."""
    if not folder.is_dir() or folder.resolve() == src.parent.resolve():
        return []
    ours = set(SIDECAR_FILES) | {COMPRESSION_JSON}
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in ours
                  and not p.name.endswith((".onnx", ".onnx.data")) and not p.name.startswith("."))


def _checked_fusion(model, fused, stats, model_dir, threads, warnings):
    """Keep the fused graph only if it computes the same logits as the unfused one.

    Fusion with one global head count silently miscomputes shrunk layers that kept fewer heads;
    the numeric check catches that and the unfused graph (still quantizable) is used instead.
    """
    import onnx

    if not stats:
        warnings.append("ORT's optimizer fused nothing in this graph; quantizing it unfused")
        return model, stats
    with tempfile.TemporaryDirectory(prefix="compress-fuse-") as tmp:
        a, b = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"
        onnx.save(model, str(a))
        onnx.save(fused, str(b))
        feeds = random_feeds(model_inputs(model), vocab_size(model, model_dir))
        try:
            ref = _logits(a, feeds, threads)
            diff = float(np.abs(ref - _logits(b, feeds, threads)).max())
        except CompressError as e:
            ref, diff, why = None, float("inf"), str(e)
        else:
            why = f"logits differ by {diff:.3g}"
    # Relative to the logits' scale: float reordering gives ~1e-6 of it, a wrong head split ~1e-2.
    if not np.isfinite(diff) or diff > 1e-3 * max(float(np.abs(ref).max()), 1e-3):
        warnings.append(f"the fused graph is not equivalent ({why}); quantizing the unfused graph instead")
        return model, None
    return fused, stats


def _copy_sidecars(src_dir: Path, dst_dir: Path, replace: bool) -> list[str]:
    copied = []
    for name in SIDECAR_FILES:
        f = src_dir / name
        if f.is_file() and (replace or not (dst_dir / name).exists()):
            shutil.copy2(f, dst_dir / name)
            copied.append(name)
    return copied


def _updated_compression_json(src_dir: Path, dst_dir: Path, onnx_name: str, result: QuantizeResult) -> None:
    """Carry compression.json over with a `quantization` section and checksums of the new files."""
    from .artifacts import read_compression_json

    data = read_compression_json(src_dir, verify=False)
    if data is None:
        return
    listed = [n for n in data.get("files", {}) if not n.endswith(".onnx")] + [onnx_name]
    q = result.to_dict()
    data["quantization"] = {k: q[k] for k in (
        "config", "kept_fp32", "op_counts", "fusion", "size_before", "size_after", "max_abs_diff",
        "metrics_before", "metrics_after", "eval_batch_size")}
    record_checksums(dst_dir, data, [n for n in listed if (dst_dir / n).exists()])
    write_json(dst_dir / COMPRESSION_JSON, data)


def _write_outputs(quantized: Path, src: Path, out: Path, as_file: bool, overwrite: bool, result: QuantizeResult) -> None:
    if as_file:
        with atomic_file(out) as tmp:
            shutil.copyfile(quantized, tmp)
        other = _unrelated_files(out.parent, src)
        if other:
            result.warnings.append(
                f"{out.parent} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}), so the config "
                f"and tokenizer were not copied beside {out.name}; `compress eval` needs them: pass -o a new folder")
        elif out.parent.resolve() != src.parent.resolve():
            _copy_sidecars(src.parent, out.parent, replace=False)
            if not (out.parent / COMPRESSION_JSON).exists():
                _updated_compression_json(src.parent, out.parent, out.name, result)
            elif (src.parent / COMPRESSION_JSON).exists():
                result.warnings.append(f"kept the existing {out.parent / COMPRESSION_JSON}; it does not describe {out.name}")
        return
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copyfile(quantized, tmp / MODEL_FILE)
        _copy_sidecars(src.parent, tmp, replace=True)
        _updated_compression_json(src.parent, tmp, MODEL_FILE, result)
