"""Calibration data for static int8 quantization: task sentences or a text file, tokenized and fed to
ONNX Runtime's calibrator one sentence at a time."""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import DataError
from compress.ort.evaluate import iter_batches
from exporters.inputs import graph_inputs


def calibration_reader(model, dataset, num_samples: int, pad_id: int = 0):
    """A CalibrationDataReader yielding one sentence per batch, so that no padded position enters
    the activation ranges (padding would widen them with values that never matter)."""
    from onnxruntime.quantization import CalibrationDataReader

    n = min(num_samples, len(dataset))
    if n == 0:
        raise DataError("the calibration data is empty")
    inputs = graph_inputs(model)
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
        from compress.tasks.files import read_text

        return read_text(path, "calibration file").splitlines()
    from compress.training.data import _read_any  # shared tsv/csv/json reader (GLUE quoting rules included)

    cols = _read_any(path)
    if text_column not in cols:
        raise DataError(f"{path} has no column {text_column!r} (it has {list(cols)}); pass --text-column")
    return [str(t) for t in cols[text_column]]
