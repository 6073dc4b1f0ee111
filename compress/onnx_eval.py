"""`compress eval` on an ONNX model: the tokenizer and config are the sidecar files beside model.onnx."""

from __future__ import annotations

import json

from .errors import ArtifactError, InvalidConfigError
from .models import check_max_length, check_tokenizer, load_tokenizer
from .onnx_runtime import evaluate_onnx, resolve_onnx

# Dynamic int8 computes one activation range per tensor over the whole batch, padded positions
# included, so a row's result depends on the rows it is batched with (benchmarks/results/
# int8_batch_dependence.md: the SST-2 teacher's int8 graph scores 88.65 at batch 1, 88.53-89.33 at
# 8-64). Batch 1 is the one answer that does not depend on the other rows: each row alone, as a
# per-request server runs it.
DYNAMIC_INT8_NOTE = ("dynamic int8: activation ranges are computed per batch (padding included), so accuracy depends "
                     "on the batch size and on which rows share a batch; measured at batch size {b}")


def is_dynamic_int8(path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("DynamicQuantizeLinear", "DynamicQuantizeMatMul") for n in model.graph.node)


def evaluate_onnx_path(path: str, data, batch_size: int | None = None, max_length: int = 128,
                       max_eval_samples: int | None = None, provider: str = "cpu", threads: int | None = None) -> dict:
    """Metrics plus the batch size they were measured at (and a note for dynamic int8 graphs)."""
    from .data import label_names_of, load_task_data

    if batch_size is not None and batch_size < 1:
        raise InvalidConfigError(f"--batch-size {batch_size} must be >= 1")
    model = resolve_onnx(path)
    if not (model.parent / "tokenizer_config.json").exists():
        raise ArtifactError(f"no tokenizer beside {model}; export with `compress export --onnx` (it copies the tokenizer)")
    config = {}
    if (model.parent / "config.json").is_file():
        try:
            config = json.loads((model.parent / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{model.parent / 'config.json'} is not valid JSON ({e}); re-export the model") from e
    check_max_length(max_length, config, str(model.parent))
    tok = load_tokenizer(str(model.parent))
    if config:
        from types import SimpleNamespace

        check_tokenizer(tok, SimpleNamespace(vocab_size=config.get("vocab_size")), str(model.parent))
    dynamic = is_dynamic_int8(model)
    if batch_size is None:
        batch_size = 1 if dynamic else 64
    td = load_task_data(data.task, tok, data_dir=data.data_dir, validation_file=data.validation_file,
                        text_column=data.text_column, text_pair_column=data.text_pair_column,
                        label_column=data.label_column, num_labels=data.num_labels, max_length=max_length,
                        max_eval_samples=max_eval_samples, splits=("dev",), label_names=label_names_of(config))
    out = {k: round(v, 6) for k, v in evaluate_onnx(model, td, batch_size, provider=provider, threads=threads).items()}
    out["batch_size"] = batch_size
    if dynamic:
        out["note"] = DYNAMIC_INT8_NOTE.format(b=batch_size)
    return out
