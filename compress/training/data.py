"""Task data through `datasets`: built-in GLUE tasks from a local folder (or the hub when online),
or generic train/validation files with column flags. Shared by prune, finetune, eval, quantize.

Local GLUE folder: --data-dir, else $COMPRESS_DATA_DIR, else $GLUE_DIR; it holds <task>/train.tsv and
<task>/dev.tsv. GLUE tsv files contain unescaped double quotes (MRPC) and a UTF-8 BOM, so they are read
with quoting disabled rather than with the datasets csv loader.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.core.errors import DataError
from compress.tasks.files import read_text, read_tsv


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    text_column: str
    text_pair_column: str | None
    label_column: str
    num_labels: int
    metrics: tuple[str, ...]
    train_file: str = "train.tsv"
    dev_file: str = "dev.tsv"
    hub: tuple[str, str] | None = None  # (dataset path, config) on the Hugging Face hub
    hub_columns: dict = field(default_factory=dict)  # hub column -> our column
    label_words: tuple[str, ...] = ()  # for SMP's head-free mode: one vocabulary word per label


TASKS: dict[str, DatasetSpec] = {
    "sst2": DatasetSpec(
        "sst2",
        "sentence",
        None,
        "label",
        2,
        ("accuracy",),
        hub=("nyu-mll/glue", "sst2"),
        label_words=("terrible", "great"),
    ),
    "mrpc": DatasetSpec(
        "mrpc",
        "#1 String",
        "#2 String",
        "Quality",
        2,
        ("accuracy", "f1"),
        hub=("nyu-mll/glue", "mrpc"),
        hub_columns={"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
        label_words=("no", "yes"),
    ),
}


@dataclass
class TaskData:
    """A task's tokenized data, for any task type (compress.training.tasks)."""

    spec: DatasetSpec | None  # sentence classification's dataset spec (None for other task types)
    train: object | None  # datasets.Dataset, tokenized, with the task's label columns
    dev: object | None  # the features evaluation runs on
    label_names: list[str] | None = None  # learned from the training data (saved as id2label)
    name: str | None = None  # the task as recorded in compression.json (default: the spec's name)
    num_labels_: int | None = None  # without a spec
    extra: dict = field(default_factory=dict)  # what the task's evaluation needs besides `dev`

    def __post_init__(self):
        if self.name is None and self.spec is not None:
            self.name = self.spec.name

    @property
    def num_labels(self) -> int | None:
        return self.spec.num_labels if self.spec is not None else self.num_labels_


def data_dir_from_env(data_dir: str | None) -> Path | None:
    d = data_dir or os.environ.get("COMPRESS_DATA_DIR") or os.environ.get("GLUE_DIR")
    return Path(d) if d else None


@contextlib.contextmanager
def datasets_bars(show: bool):
    """The `datasets` library's progress bars (tokenizing, reading json/csv) shown or hidden for a block;
    hidden, they are restored afterwards. `datasets` keeps the switch in a global."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    with warnings.catch_warnings():  # HF_DATASETS_DISABLE_PROGRESS_BARS set: the variable wins, quietly
        warnings.simplefilter("ignore")
        (datasets.enable_progress_bars if show else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (datasets.disable_progress_bars if was_disabled else datasets.enable_progress_bars)()


def _read_any(path: str | Path) -> dict[str, list]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return read_tsv(path)
    read_text(path)  # missing, a folder, or not UTF-8: one clear line before the datasets loader
    import datasets

    kind = {".csv": "csv", ".json": "json", ".jsonl": "json"}.get(suffix)
    if kind is None:
        raise DataError(f"unsupported data file type {suffix!r} for {path}; use .tsv, .csv, .json or .jsonl")
    try:
        with datasets_bars(False):  # its "Generating train split" bar would precede any error about the rows
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for malformed files
        raise DataError(f"could not read {path}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from e
    if len(ds) == 0:
        raise DataError(f"data file {path} is empty")
    return ds.to_dict()


def _from_hub(spec: DatasetSpec) -> tuple[dict, dict]:
    if spec.hub is None or os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(
            f"no local data for task {spec.name!r}: pass --data-dir (a folder with {spec.name}/train.tsv and "
            f"{spec.name}/dev.tsv) or set COMPRESS_DATA_DIR"
        )
    import datasets

    try:
        ds = datasets.load_dataset(*spec.hub)
    except Exception as e:
        raise DataError(f"could not load {spec.hub} from the hub ({e.__class__.__name__}); pass --data-dir") from e
    rename = spec.hub_columns or {}
    conv = lambda split: {rename.get(k, k): v for k, v in ds[split].to_dict().items()}  # noqa: E731
    return conv("train"), conv("validation")


def _check_columns(cols: dict, needed: list[str], where: str) -> None:
    missing = [c for c in needed if c not in cols]
    if missing:
        raise DataError(f"{where} lacks column(s) {missing}; it has {list(cols)}; set the column flags to match")


def label_names_of(config) -> list[str] | None:
    """The label names a model's config.json gives (id2label), or None for transformers' LABEL_i defaults."""
    id2label = getattr(config, "id2label", None) or (config.get("id2label") if isinstance(config, dict) else None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def _labels_to_ids(
    values: list, label_names: list[str] | None, num_labels: int, where: str, first_row: int = 2, learn: bool = False
) -> tuple[list[int], list[str] | None]:
    """Labels -> ids. Integers are ids. Strings go through `label_names` (the model's, saved in its
    config.json); only a training split of a model without names defines them (in sorted order)."""
    missing = [k for k, v in enumerate(values) if v is None or str(v).strip() == ""]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{where}: missing label in row {first_row + missing[0]}{more}; fill it in or drop the row")
    try:
        ids = [int(v) for v in values]
    except (TypeError, ValueError) as e:
        values = [str(v).strip() for v in values]
        if label_names is None:
            if not learn:
                raise DataError(
                    f"{where} has string labels (e.g. {values[0]!r}) but the model has no label names "
                    "(config.json id2label is LABEL_0, LABEL_1, ...); write the labels as ids 0..N-1"
                )
            label_names = sorted(set(values))
        index = {n: i for i, n in enumerate(label_names)}
        unknown = [k for k, v in enumerate(values) if v not in index]
        if unknown:
            raise DataError(
                f"{where}: unknown label {values[unknown[0]]!r} in row {first_row + unknown[0]}; the model's "
                f"labels are {', '.join(label_names)}"
            ) from e
        ids = [index[v] for v in values]
    bad = sorted({i for i in ids if not 0 <= i < num_labels})
    if bad:
        raise DataError(
            f"{where} has label values {bad[:5]} outside 0..{num_labels - 1}; the model has {num_labels} labels "
            "(fix the labels or pass --num-labels)"
        )
    return ids, label_names


def load_task_data(
    task: str | None,
    tokenizer,
    *,
    data_dir: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    num_labels: int | None = None,
    max_length: int = 128,
    eval_max_length: int | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    splits: tuple[str, ...] = ("train", "dev"),
    template: str | None = None,
    label_names: list[str] | None = None,
) -> TaskData:
    """Load, validate and tokenize a task. `splits` limits which of train/dev are needed.

    `label_names`: the model's (label_names_of(config)); string labels in every file are mapped through
    them. Without them only a training split may define names (sorted), which the caller then saves.
    """
    for flag, n in (
        ("--max-length", max_length),
        ("--max-length", eval_max_length),
        ("--max-train-samples", max_train_samples),
        ("--max-eval-samples", max_eval_samples),
    ):
        if n is not None and n < 1:
            raise DataError(f"{flag} {n} must be >= 1")
    spec = _task_spec(task, train_file or validation_file, text_column, text_pair_column, label_column, num_labels)
    files = {"train": train_file, "dev": validation_file}
    raw = _read_splits(spec, task, files, data_dir, splits)
    needed = [spec.text_column] + ([spec.text_pair_column] if spec.text_pair_column else []) + [spec.label_column]
    out = {}
    learned = label_names is None
    for split in ("train", "dev"):
        cols = raw.get(split)
        if cols is None or split not in splits:
            out[split] = None
            continue
        source = files[split] or (f"{spec.name} {split}" if not any(files.values()) else f"the {split} data")
        _check_columns(cols, needed, f"the {split} data")
        first_row = 1 if str(files[split] or "").lower().endswith((".json", ".jsonl")) else 2  # header line
        labels, label_names = _labels_to_ids(
            cols[spec.label_column],
            label_names,
            spec.num_labels,
            str(source),
            first_row,
            learn=learned and split == "train",
        )
        limit = max_train_samples if split == "train" else max_eval_samples
        length = max_length if split == "train" else (eval_max_length or max_length)
        out[split] = _tokenized(spec, split, cols, labels, limit, length, tokenizer, template)
    return TaskData(spec=spec, train=out["train"], dev=out["dev"], label_names=label_names if learned else None)


def _task_spec(task, files_given, text_column, text_pair_column, label_column, num_labels) -> DatasetSpec:
    """A built-in task's spec with the given columns overriding its own, or a generic one for data files."""
    if task is None and not files_given:
        raise DataError("no data given: pass --task (" + ", ".join(TASKS) + ") or --train-file/--validation-file")
    if task is not None and task not in TASKS:
        raise DataError(
            f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)} (or use --train-file/--validation-file)"
        )
    if task is not None:
        base = TASKS[task]
        return DatasetSpec(
            base.name,
            text_column or base.text_column,
            text_pair_column or base.text_pair_column,
            label_column or base.label_column,
            num_labels or base.num_labels,
            base.metrics,
            base.train_file,
            base.dev_file,
            base.hub,
            base.hub_columns,
            base.label_words,
        )
    return DatasetSpec(
        "custom",
        text_column or "sentence",
        text_pair_column,
        label_column or "label",
        num_labels or 2,
        ("accuracy", "f1") if (num_labels or 2) == 2 else ("accuracy",),
    )


def _read_splits(spec: DatasetSpec, task, files: dict, data_dir, splits) -> dict[str, dict | None]:
    """The raw columns of each split: from the data files, else the local GLUE folder, else the hub."""
    raw: dict[str, dict | None] = {"train": None, "dev": None}
    root = data_dir_from_env(data_dir)
    if any(files.values()):
        for split in splits:
            if files[split]:
                raw[split] = _read_any(files[split])
            elif split == "dev" and "train" not in splits:
                raise DataError("--validation-file is needed for evaluation")
    elif root is not None:
        folder = root / task if (root / task).is_dir() else root
        for split in splits:
            raw[split] = read_tsv(folder / (spec.train_file if split == "train" else spec.dev_file))
    else:
        raw["train"], raw["dev"] = _from_hub(spec)
    return raw


def _tokenized(spec: DatasetSpec, split: str, cols: dict, labels, limit, length: int, tokenizer, template):
    """The first `limit` rows of one split as a tokenized datasets.Dataset with a `labels` column."""
    import datasets

    n = len(labels) if not limit else min(limit, len(labels))
    if n == 0:
        raise DataError(f"the {split} data is empty")
    data = {"text": [str(t) for t in cols[spec.text_column][:n]], "labels": labels[:n]}
    if spec.text_pair_column:
        data["text_pair"] = [str(t) for t in cols[spec.text_pair_column][:n]]
    if template is not None:  # prompt mode (SMP label words): one text holding the mask token
        pairs = data.pop("text_pair", [None] * n)
        data["text"] = [
            template.format(text=a, text_pair=b, mask=tokenizer.mask_token) for a, b in zip(data["text"], pairs)
        ]
    ds = datasets.Dataset.from_dict(data)

    def tok(batch):
        args = (batch["text"], batch["text_pair"]) if "text_pair" in batch else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=length)

    return ds.map(
        tok,
        batched=True,
        remove_columns=[c for c in ds.column_names if c != "labels"],
        desc=f"tokenizing {spec.name} {split}",
    )


def compute_metrics(spec: DatasetSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and binary F1 with numpy (the `evaluate` library fetches metric code from the hub)."""
    preds = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    out = {"accuracy": float((preds == labels).mean())}
    if "f1" in spec.metrics:
        tp = float(((preds == 1) & (labels == 1)).sum())
        fp = float(((preds == 1) & (labels == 0)).sum())
        fn = float(((preds == 0) & (labels == 1)).sum())
        out["f1"] = 2 * tp / max(2 * tp + fp + fn, 1.0)
    return out
