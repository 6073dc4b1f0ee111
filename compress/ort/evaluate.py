"""Accuracy of an ONNX model with ONNX Runtime: batching tokenized rows for a graph's inputs, logits,
task metrics, and `compress eval` on a .onnx with its sidecar files.

Accuracy is measured on exactly the .onnx file that ships, with the same session settings the
benchmark uses (exporters.sessions.make_session), so the two numbers describe one artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from compress.core.errors import ArtifactError, CompressError, DataError
from exporters.files import resolve_onnx
from exporters.sessions import make_session

# ONNX tensor element types we feed, as numpy dtypes.
_ORT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def output_index(session) -> int:
    """Index of the logits output: the one named `logits`, else the first."""
    names = [o.name for o in session.get_outputs()]
    return names.index("logits") if "logits" in names else 0


def session_inputs(session) -> list[tuple[str, str]]:
    """(name, ONNX type string such as 'tensor(int64)') for each input of a session."""
    return [(i.name, i.type) for i in session.get_inputs()]


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
    """The pad token id of the model: config.json next to it, else its tokenizer there. Padding with
    an id the model does not have would index outside its embedding table, so neither is an error."""
    from exporters.files import read_config
    from exporters.inputs import load_tokenizer

    value = read_config(model_path.parent).get("pad_token_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    tok = load_tokenizer(model_path.parent)
    if tok is not None and tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    raise ArtifactError(
        f"no pad token id for {model_path}: no config.json with pad_token_id and no tokenizer with a pad token "
        "beside it; export with `compress export --onnx` (it copies both)"
    )


def evaluate_onnx(
    path: str | os.PathLike,
    task_data,
    batch_size: int = 32,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    session=None,
    pad_id: int | None = None,
) -> dict[str, float]:
    """Task metrics (compress.data.compute_metrics) of the ONNX model at `path` on task_data.dev.

    Pass `session` to reuse one already built (it must have been made from `path`), and `pad_id` for a
    graph without its config.json and tokenizer beside it (default: read_pad_id).
    """
    from compress.training.data import compute_metrics

    if task_data.dev is None:
        raise DataError("no evaluation split loaded; load the task with splits=('dev',)")
    model = resolve_onnx(path, check=session is None)
    session = session or make_session(model, provider, threads, check=False)
    logits = onnx_logits(session, task_data.dev, batch_size, pad_id=read_pad_id(model) if pad_id is None else pad_id)
    if logits.ndim != 2 or logits.shape[-1] != task_data.num_labels:
        raise ArtifactError(
            f"{model} outputs logits of shape {list(logits.shape)} but task {task_data.spec.name!r} has "
            f"{task_data.num_labels} labels; is this the right model?"
        )
    return compute_metrics(task_data.spec, logits, np.asarray(task_data.dev["labels"]))


# Dynamic int8 computes one activation range per tensor over the whole batch, padded positions
# included, so a row's result depends on the rows it is batched with (benchmarks/results/
# int8_batch_dependence.md: the SST-2 teacher's int8 graph scores 88.65 at batch 1, 88.53-89.33 at
# 8-64). Batch 1 is the one answer that does not depend on the other rows: each row alone, as a
# per-request server runs it.
DYNAMIC_INT8_NOTE = (
    "dynamic int8: activation ranges are computed per batch (padding included), so accuracy depends "
    "on the batch size and on which rows share a batch; measured at batch size {b}"
)


def is_dynamic_int8(path) -> bool:
    """Does the graph quantize activations at run time (DynamicQuantizeLinear)? False for unreadable
    files, which resolve_onnx then reports properly."""
    import onnx

    try:
        model = onnx.load(str(resolve_onnx(path, check=False)), load_external_data=False)
    except Exception:
        return False
    return any(n.op_type in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul") for n in model.graph.node)


def eval_batch_size(path, requested: int | None) -> tuple[int, str | None]:
    """(batch size, note) for evaluating the graph at `path`: the requested one, else 1 for dynamic int8
    graphs and 64 for the rest; the note says why the batch size matters for dynamic int8."""
    from compress.core.errors import InvalidConfigError

    if requested is not None and requested < 1:
        raise InvalidConfigError(f"--batch-size {requested} must be >= 1")
    dynamic = is_dynamic_int8(path)
    batch = requested or (1 if dynamic else 64)
    return batch, DYNAMIC_INT8_NOTE.format(b=batch) if dynamic else None


def evaluate_onnx_path(
    path: str,
    data,
    batch_size: int = 64,
    max_length: int = 128,
    max_eval_samples: int | None = None,
    provider: str = "cpu",
    threads: int | None = None,
) -> dict:
    """Dev metrics of an exported model, its tokenizer, config (label names, positions) read beside it."""
    from types import SimpleNamespace

    from compress.core.models import check_max_length, check_tokenizer, load_tokenizer
    from compress.training.data import label_names_of, load_task_data

    model = resolve_onnx(path)
    if not (model.parent / "tokenizer_config.json").exists():
        raise ArtifactError(
            f"no tokenizer beside {model}; export with `compress export --onnx` (it copies the tokenizer)"
        )
    config = {}
    if (model.parent / "config.json").is_file():
        try:
            config = json.loads((model.parent / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{model.parent / 'config.json'} is not valid JSON ({e}); re-export the model") from e
    check_max_length(max_length, config, str(model.parent))
    tok = load_tokenizer(str(model.parent))
    if config:
        check_tokenizer(tok, SimpleNamespace(vocab_size=config.get("vocab_size")), str(model.parent))
    td = load_task_data(
        data.task,
        tok,
        **data.source(train=False),
        max_length=max_length,
        max_eval_samples=max_eval_samples,
        splits=("dev",),
        label_names=label_names_of(config),
    )
    return {k: round(v, 6) for k, v in evaluate_onnx(model, td, batch_size, provider=provider, threads=threads).items()}


# --------------------------------------------------------------------------------------- other task types
def onnx_predict(session):
    """The `predict` of compress.tasks.batching over an ORT session: a batch of padded int64 arrays in
    (cast to the graph's integer input types; token_type_ids the batch lacks are zeros, inputs the graph
    does not take are dropped), every output by name out. A task's evaluate scores it with the same code
    as a PyTorch checkpoint, so identical outputs give identical metrics."""
    inputs = session_inputs(session)
    names = [o.name for o in session.get_outputs()]
    for name, kind in inputs:
        if _ORT_DTYPES.get(kind) in (None, np.float32):
            raise ArtifactError(f"graph input {name!r} has type {kind}; only integer token inputs are supported")

    def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, kind in inputs:
            dtype = _ORT_DTYPES[kind]
            if name in batch:
                feeds[name] = np.asarray(batch[name]).astype(dtype, copy=False)
            elif name == "token_type_ids":
                feeds[name] = np.zeros(batch["input_ids"].shape, dtype=dtype)
            else:
                raise DataError(f"the graph needs input {name!r} which the tokenized data does not provide")
        return dict(zip(names, session.run(None, feeds)))

    return predict


def graph_info(path) -> dict:
    """compression.json beside a graph ({} when there is none); checksums are not checked here."""
    from compress.core.artifacts import read_compression_json

    return read_compression_json(resolve_onnx(path, check=False).parent, verify=False) or {}


def graph_task_type(path) -> str | None:
    """The task type of an ONNX graph: its compression.json's task_type, else read from its outputs
    (sentence_embedding: embedding; start/end logits: question answering; logits per token or per row:
    token or sequence classification); None for a bare encoder (last_hidden_state only)."""
    import onnx

    recorded = graph_info(path).get("task_type")
    if recorded:
        return recorded
    graph = resolve_onnx(path, check=False)
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception:  # not a model: the checker says what is wrong in one line
        resolve_onnx(graph, check=True)
        raise
    outputs = {o.name: len(o.type.tensor_type.shape.dim) for o in model.graph.output}
    if "sentence_embedding" in outputs:
        return "embedding"
    if "start_logits" in outputs:
        return "question-answering"
    if "logits" in outputs:
        return "token-classification" if outputs["logits"] == 3 else "sequence-classification"
    return None


def evaluate_task_onnx(
    path,
    data,
    kind: str,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    max_eval_samples: int | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    teacher_predict=None,
) -> dict:
    """Dev metrics of the graph at `path` for task type `kind` (not sentence classification, which
    evaluate_onnx_path scores): the task's own data loading and evaluate (compress.training.tasks), with
    a predict over an ORT session. Tokenizer, config (labels, positions) are read beside the graph;
    `teacher_predict` (embeddings) scores fidelity to a teacher."""
    from compress.core.config import TrainConfig
    from compress.core.models import check_max_length, load_config, load_tokenizer
    from compress.training.tasks import task_type

    model = resolve_onnx(path)
    folder = model.parent
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"no config.json beside {model}; export with `compress export --onnx` (it copies it)")
    task = task_type(kind)
    config = load_config(str(folder))
    t = TrainConfig.for_evaluation(task.name, batch_size, max_length, max_eval_samples, False)
    check_max_length(t.eval_max_length, config, str(folder))
    tok = load_tokenizer(str(folder), config, **task.tokenizer_kwargs(config))
    td = task.load_data(data, tok, t, ("dev",), model_label_names(task.name, config))
    session = make_session(model, provider, threads, check=False)
    if task.name == "embedding":
        td.extra.update(tokenizer=tok, teacher_predict=teacher_predict)
    pad = tok.pad_token_id if tok.pad_token_id is not None else read_pad_id(model)
    return _rounded(task.evaluate(onnx_predict(session), td, pad, t.eval_batch_size))


def _rounded(metrics: dict) -> dict:
    """6 decimals, nested metrics (per entity type) too: as a checkpoint's are recorded."""
    return {
        k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v
        for k, v in metrics.items()
    }


def model_label_names(kind: str, config) -> list[str] | None:
    """The label names a model's head has, which string labels in the data are mapped through."""
    if kind == "token-classification":
        from compress.tasks.token_classification import head_labels

        return head_labels(config)
    from compress.training.data import label_names_of

    return label_names_of(config)
