"""`compress eval` on an ONNX model: the tokenizer and config are the sidecar files beside model.onnx."""

from __future__ import annotations

from compress.core.errors import ArtifactError
from compress.training.models import load_tokenizer
from compress.ort.session import evaluate_onnx, resolve_onnx


def evaluate_onnx_path(path: str, data, batch_size: int = 64, max_length: int = 128, max_eval_samples: int | None = None,
                       provider: str = "cpu", threads: int | None = None) -> dict:
    from compress.training.data import load_task_data

    model = resolve_onnx(path)
    if not (model.parent / "tokenizer_config.json").exists():
        raise ArtifactError(f"no tokenizer beside {model}; export with `compress export --onnx` (it copies the tokenizer)")
    tok = load_tokenizer(str(model.parent))
    td = load_task_data(data.task, tok, data_dir=data.data_dir, validation_file=data.validation_file,
                        text_column=data.text_column, text_pair_column=data.text_pair_column,
                        label_column=data.label_column, num_labels=data.num_labels, max_length=max_length,
                        max_eval_samples=max_eval_samples, splits=("dev",))
    return {k: round(v, 6) for k, v in evaluate_onnx(model, td, batch_size, provider=provider, threads=threads).items()}
