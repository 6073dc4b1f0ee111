"""Load, check and run ONNX models with ONNX Runtime.

Shared by `quantize`, `bench` and `eval`: accuracy is measured on exactly the .onnx file that ships,
with the same session settings the benchmark uses, so the two numbers describe one artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import ArtifactError, CompressError, DataError

MODEL_FILE = "model.onnx"

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# ONNX tensor element types we feed, as numpy dtypes.
_ORT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def resolve_onnx(path: str | os.PathLike, check: bool = True) -> Path:
    """Return the .onnx file behind `path` (a file, or a directory holding model.onnx).

    With `check`, the file is parsed and run through onnx.checker so that a truncated download or a
    half-written file fails here with a clear message rather than deep inside ONNX Runtime.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / MODEL_FILE).is_file():
            found = sorted(x.name for x in p.glob("*.onnx"))
            hint = f" (it holds {', '.join(found)}; pass that file)" if found else ""
            raise ArtifactError(f"{p} has no {MODEL_FILE}{hint}")
        p = p / MODEL_FILE
    elif not p.exists():
        raise ArtifactError(f"ONNX model {p} not found; pass a .onnx file or a directory holding {MODEL_FILE}")
    if check:
        check_onnx(p)
    return p


def check_onnx(path: Path) -> None:
    """Parse and check an ONNX file; any failure becomes an ArtifactError naming the file."""
    import onnx

    if path.stat().st_size == 0:
        raise ArtifactError(f"{path} is empty (0 bytes); re-export it")
    _check_external_data(path)
    try:
        # The path form of the checker also follows external data and works beyond 2 GB.
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        if "No opset import for domain" in str(e) and _valid_with_domain_imports(path):
            return  # an optimizer forgot to import com.microsoft; ONNX Runtime accepts that, so do we
        raise ArtifactError(f"{path} fails the ONNX checker ({first_line(e)}); re-export it") from None
    except Exception as e:  # protobuf DecodeError, OSError...: the bytes are not a model
        raise ArtifactError(
            f"{path} is not a valid ONNX file ({e.__class__.__name__}: {first_line(e)}); "
            "it is corrupt or truncated: re-export it"
        ) from None


def _check_external_data(path: Path) -> None:
    """Weights saved as external data live in files beside the .onnx; a copy without them fails in the
    checker with a message about a tensor, so name the missing file instead."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return  # not parseable: the checker below reports it
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if location and not (path.parent / location).is_file():
            raise ArtifactError(f"{path} keeps its weights in the external data file {location}, which is missing "
                                f"beside it; copy {location} into {path.parent}")


def _valid_with_domain_imports(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    known = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node} - known - {"", "ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    try:
        onnx.checker.check_model(model)
    except Exception:
        return False
    return True


def first_line(e: Exception) -> str:
    """The first line of an exception message (ORT and onnx append long C++ context)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:200]


def make_session(
    path: str | os.PathLike,
    provider: str = "cpu",
    threads: int | None = None,
    *,
    check: bool = True,
    optimization: str = "all",
):
    """An InferenceSession on `provider` ("cpu" or "cuda") with a fixed intra-op thread count.

    threads=None lets ONNX Runtime pick (all physical cores). Inter-op parallelism stays at 1:
    encoders are one long chain of ops, so it only adds thread contention.
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise CompressError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise CompressError(
            f"{wanted} is not available in onnxruntime {ort.__version__} (it has "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu with a matching CUDA "
            "(pip install 'compress[gpu]') or use --provider cpu"
        )
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* wheels that a CUDA PyTorch already
        # installed, so no system-wide CUDA toolkit is needed; without them session creation reports it below.
        try:
            ort.preload_dlls()
        except Exception:
            pass
    model = resolve_onnx(path, check=check)
    opts = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise CompressError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise CompressError(f"unknown optimization level {optimization!r}; choose {', '.join(levels)}")
    opts.graph_optimization_level = levels[optimization]
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    providers = [wanted] if provider == "cpu" else [wanted, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(model), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises Fail/InvalidGraph/NotImplemented with long C++ messages
        raise ArtifactError(f"ONNX Runtime cannot load {model}: {first_line(e)}") from None
    # ORT silently falls back to CPU when the CUDA libraries fail to load; say so instead.
    if provider == "cuda" and wanted not in session.get_providers():
        raise CompressError(
            f"{wanted} is installed but could not be initialised (CUDA/cuDNN libraries missing or no GPU); "
            "check `nvidia-smi` and the onnxruntime-gpu CUDA version, or use --provider cpu"
        )
    return session


def output_index(session) -> int:
    """Index of the logits output: the one named `logits`, else the first."""
    names = [o.name for o in session.get_outputs()]
    return names.index("logits") if "logits" in names else 0


def session_inputs(session) -> list[tuple[str, str]]:
    """(name, ONNX type string such as 'tensor(int64)') for each input of a session."""
    return [(i.name, i.type) for i in session.get_inputs()]


def model_inputs(model) -> list[tuple[str, str]]:
    """The same as session_inputs, read from an onnx.ModelProto (initializers are not inputs)."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    return [
        (i.name, f"tensor({onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower()})")
        for i in model.graph.input
        if i.name not in inits
    ]


def pad_batch(rows: dict[str, list], inputs: list[tuple[str, str]], pad_id: int = 0) -> dict[str, np.ndarray]:
    """Pad one batch of tokenized rows to its longest row, for exactly the graph's `inputs`.

    Graphs exported for models without token types (RoBERTa, DistilBERT) do not declare
    token_type_ids, and tokenizers for such models do not produce it; a declared but absent
    token_type_ids is filled with zeros, a missing attention_mask from the row lengths.
    """
    ids = rows["input_ids"]
    n, longest = len(ids), max(len(r) for r in ids)
    feeds: dict[str, np.ndarray] = {}
    for name, kind in inputs:
        dtype = _ORT_DTYPES.get(kind)
        if dtype is None or dtype is np.float32:
            raise ArtifactError(f"graph input {name!r} has type {kind}; only integer token inputs are supported")
        if name in rows:
            arr = np.full((n, longest), pad_id if name == "input_ids" else 0, dtype=dtype)
            for k, r in enumerate(rows[name]):
                arr[k, : len(r)] = r
        elif name == "attention_mask":
            arr = np.zeros((n, longest), dtype=dtype)
            for k, r in enumerate(ids):
                arr[k, : len(r)] = 1
        elif name == "token_type_ids":
            arr = np.zeros((n, longest), dtype=dtype)
        else:
            raise DataError(
                f"the graph needs input {name!r} which the tokenized data does not provide (it has {', '.join(sorted(rows))})"
            )
        feeds[name] = arr
    return feeds


def iter_batches(dataset, inputs: list[tuple[str, str]], batch_size: int, pad_id: int = 0, sort: bool = True):
    """Yield (row indices, feeds) over a tokenized dataset; rows grouped by length when `sort`."""
    if "input_ids" not in dataset.column_names:
        raise DataError(f"the dataset has no input_ids column (it has {dataset.column_names}); tokenize it first")
    names = {n for n, _ in inputs}
    columns = [c for c in dataset.column_names if c in names or c == "input_ids"]
    data = {c: dataset[c] for c in columns}
    lengths = [len(r) for r in data["input_ids"]]
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        yield sel, pad_batch({c: [data[c][i] for i in sel] for c in columns}, inputs, pad_id)


def onnx_logits(session, dataset, batch_size: int = 32, pad_id: int = 0) -> np.ndarray:
    """Run `session` over a tokenized dataset (columns input_ids, attention_mask, ...) -> logits.

    Rows are batched by length (then put back in dataset order) so little time goes into padding;
    with the attention mask the padded positions do not change the real tokens' outputs.
    """
    if batch_size < 1:
        raise CompressError(f"batch size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise DataError("the dataset is empty; nothing to evaluate")
    out_name = session.get_outputs()[output_index(session)].name
    inputs = session_inputs(session)
    indices, chunks = [], []
    for sel, feeds in iter_batches(dataset, inputs, batch_size, pad_id):
        indices.append(sel)
        chunks.append(session.run([out_name], feeds)[0])
    logits = np.concatenate(chunks)
    result = np.empty_like(logits)
    result[np.concatenate(indices)] = logits
    return result


def read_pad_id(model_path: Path) -> int:
    """The pad token id from config.json next to the model (0 when absent)."""
    cfg = model_path.parent / "config.json"
    try:
        value = json.loads(cfg.read_text()).get("pad_token_id")
    except (OSError, json.JSONDecodeError):
        return 0
    return int(value) if isinstance(value, int) else 0


def evaluate_onnx(
    path: str | os.PathLike,
    task_data,
    batch_size: int = 32,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    session=None,
) -> dict[str, float]:
    """Task metrics (compress.data.compute_metrics) of the ONNX model at `path` on task_data.dev.

    Pass `session` to reuse one already built (it must have been made from `path`).
    """
    from .data import compute_metrics

    if task_data.dev is None:
        raise DataError("no evaluation split loaded; load the task with splits=('dev',)")
    model = resolve_onnx(path, check=session is None)
    session = session or make_session(model, provider, threads, check=False)
    logits = onnx_logits(session, task_data.dev, batch_size, pad_id=read_pad_id(model))
    if logits.ndim != 2 or logits.shape[-1] != task_data.num_labels:
        raise ArtifactError(
            f"{model} outputs logits of shape {list(logits.shape)} but task {task_data.spec.name!r} has "
            f"{task_data.num_labels} labels; is this the right model?"
        )
    return compute_metrics(task_data.spec, logits, np.asarray(task_data.dev["labels"]))
