"""Texts of the embedding task: the distillation corpus and the held-out evaluation sets.

The corpus is unlabelled (the student learns the teacher's embeddings), so any text will do: by default
the sentences of the local SST-2 and MRPC train files and the questions and paragraphs of the SQuAD
articles in the train part of compress.tasks.squad_split, or the user's own files. The evaluation sets
are all held out from it: the held-out SQuAD articles (retrieval), MRPC dev (pair similarity) and
SST-2 dev (fidelity to the teacher).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import DataError
from compress.tasks.files import json_rows, parse_json, read_text, read_tsv
from compress.tasks.squad_split import default_squad_file, split_articles

CORPUS_SEED = 0  # the corpus is shuffled once, so a capped corpus still mixes all its sources
DEFAULT_TEXT_COLUMN = "text"
CORPUS_SUFFIXES = (".txt", ".tsv", ".csv", ".json", ".jsonl")


# --------------------------------------------------------------------------------------- files
def _read_csv(path: Path) -> dict[str, list]:
    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if not rows:
        raise DataError(f"data file {path} is empty (no rows after the header)")
    return {h: [row.get(h) for row in rows] for h in rows[0]}


def _read_json(path: Path) -> dict[str, list]:
    text = read_text(path)
    rows = json_rows(parse_json(text), text, path)
    columns: dict[str, list] = {}
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where} is a JSON {type(row).__name__}, not an object; write one object per text")
        for key in row:
            columns.setdefault(key, [])
    return {key: [row.get(key) for _, row in rows] for key in columns}


READERS = {".tsv": read_tsv, ".csv": _read_csv, ".json": _read_json, ".jsonl": _read_json}


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """The non-empty texts of a file: a .txt file holds one per line; a .tsv/.csv/.json/.jsonl file holds
    them in `text_column` (default "text")."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if suffix not in READERS:
        raise DataError(f"unsupported corpus file type {suffix or path.name!r}; use {', '.join(CORPUS_SUFFIXES)}")
    columns = READERS[suffix](path)
    column = text_column or DEFAULT_TEXT_COLUMN
    if column not in columns:
        raise DataError(
            f"{path} has no text column {column!r}; its columns are {', '.join(map(str, columns))}: pass --text-column"
        )
    return [v.strip() for v in columns[column] if isinstance(v, str) and v.strip()]


# --------------------------------------------------------------------------------------- built-in data
def data_root(data_dir: str | Path | None = None) -> Path:
    d = data_dir or os.environ.get("COMPRESS_DATA_DIR")
    if not d:
        raise DataError(
            "no data folder: pass --data-dir or set COMPRESS_DATA_DIR to the folder holding sst2/, mrpc/ and squad/"
        )
    return Path(d)


def _column(path: Path, columns: dict[str, list], name: str) -> list[str]:
    if name not in columns:
        raise DataError(f"{path} has no column {name!r}; its columns are {', '.join(columns)}")
    return columns[name]


def _mrpc(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(first sentences, second sentences, labels) of a GLUE MRPC tsv."""
    cols = read_tsv(path)
    return _column(path, cols, "#1 String"), _column(path, cols, "#2 String"), _column(path, cols, "Quality")


def _sst2_sentences(path: Path) -> list[str]:
    return _column(path, read_tsv(path), "sentence")


def _squad_texts(articles: list[dict]) -> list[str]:
    paragraphs = [p for a in articles for p in a["paragraphs"]]
    return [q["question"] for p in paragraphs for q in p["qas"]] + [p["context"] for p in paragraphs]


def default_corpus(data_dir: str | Path | None = None) -> list[str]:
    """SST-2 and MRPC train sentences, then the questions and paragraphs of the SQuAD train articles."""
    root = data_root(data_dir)
    first, second, _ = _mrpc(root / "mrpc" / "train.tsv")
    train_articles, _ = split_articles(default_squad_file(root))
    return _sst2_sentences(root / "sst2" / "train.tsv") + first + second + _squad_texts(train_articles)


def load_corpus(
    data_dir: str | Path | None = None,
    files: tuple | list = (),
    text_column: str | None = None,
    max_samples: int | None = None,
) -> list[str]:
    """The distillation corpus: the user's `files` when given, else the built-in one (default_corpus);
    whitespace-stripped, deduplicated, shuffled with a fixed seed and cut to `max_samples`."""
    if max_samples is not None and max_samples < 1:
        raise DataError(f"--max-train-samples {max_samples} must be >= 1")
    if files:
        texts = [t for f in files for t in read_texts(f, text_column)]
        where = ", ".join(map(str, files))
    else:
        texts = default_corpus(data_dir)
        where = f"the built-in corpus of {data_root(data_dir)}"
    texts = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if not texts:
        raise DataError(f"the embedding corpus is empty: {where} hold(s) no text; pass files with text in them")
    order = np.random.default_rng(CORPUS_SEED).permutation(len(texts))
    return [texts[i] for i in order[:max_samples]]


def preprocess(texts: list[str], tokenizer, max_length: int):
    """A `datasets.Dataset` of the tokenizer's features (input_ids, attention_mask and token_type_ids when
    the tokenizer gives them), one row per text, truncated to max_length and unpadded."""
    import datasets

    ds = datasets.Dataset.from_dict({"text": list(texts)})
    return ds.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
        desc="tokenizing",
    )


# --------------------------------------------------------------------------------------- evaluation sets
@dataclass(frozen=True)
class RetrievalSet:
    questions: list[str]
    paragraphs: list[str]
    gold: np.ndarray  # per question, the index of its paragraph in `paragraphs`


def spread(n: int, k: int | None) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k is None or >= n): a cap that keeps
    every part of an ordered set (every article, every label) represented."""
    if k is None or k >= n:
        return np.arange(n)
    return np.arange(k) * n // k


def retrieval_set(data_dir: str | Path | None = None, max_questions: int | None = None) -> RetrievalSet:
    """The questions and paragraphs of the held-out SQuAD articles; every paragraph stays a candidate
    when the questions are capped, so the task is as hard as uncapped."""
    _, held_out = split_articles(default_squad_file(data_root(data_dir)))
    paragraphs = [p for a in held_out for p in a["paragraphs"]]
    questions = [(q["question"], i) for i, p in enumerate(paragraphs) for q in p["qas"]]
    questions = [questions[i] for i in spread(len(questions), max_questions)]
    return RetrievalSet(
        questions=[q for q, _ in questions],
        paragraphs=[p["context"] for p in paragraphs],
        gold=np.array([i for _, i in questions], dtype=np.int64),
    )


def mrpc_dev_pairs(data_dir: str | Path | None = None, max_pairs: int | None = None):
    """(first sentences, second sentences, labels as an int array) of MRPC dev."""
    path = data_root(data_dir) / "mrpc" / "dev.tsv"
    first, second, labels = _mrpc(path)
    try:
        y = np.array([int(v) for v in labels], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{path} has a Quality label that is not 0 or 1 ({e}); is it the GLUE MRPC dev file?") from e
    keep = spread(len(y), max_pairs)
    return [first[i] for i in keep], [second[i] for i in keep], y[keep]


def sst2_dev_sentences(data_dir: str | Path | None = None, max_sentences: int | None = None) -> list[str]:
    sentences = _sst2_sentences(data_root(data_dir) / "sst2" / "dev.tsv")
    return [sentences[i] for i in spread(len(sentences), max_sentences)]
