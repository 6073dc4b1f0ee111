"""A task's dev data as tokenized, unpadded rows: what `compress bench --data` times and what
`--deploy-shape 32xdata` reads its sequence length from. The rows come from the loaders evaluation uses
(compress.training.data, compress.training.tasks, compress.tasks.embedding_data), so the rows timed are
the rows scored; a data file needs only a text column (no labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.config import TASK_LENGTHS, DataConfig
from compress.core.errors import DataError

# Text columns tried in a data file when --text-column is not given: the generic sentence-classification
# column (compress.training.data), then the embedding corpus's (compress.tasks.embedding_data).
DEFAULT_TEXT_COLUMNS = ("sentence", "text")


def eval_length(kind: str) -> int:
    """The evaluation length of a task type (128; question answering 384, embeddings 256)."""
    return TASK_LENGTHS.get(kind, TASK_LENGTHS["sequence-classification"])[1]


def dev_features(data: DataConfig, tokenizer, max_length: int | None = None, max_samples: int | None = None):
    """A datasets.Dataset of the dev rows in their order, tokenized (input_ids, attention_mask, and
    token_type_ids when the tokenizer gives them), truncated to `max_length` (default: the task type's
    evaluation length) and unpadded:
    - a --validation-file of sentence classification or embeddings: its text column(s);
    - sentence classification: the built-in task's dev split;
    - question answering, token classification: the task's evaluation windows / rows;
    - embeddings: the texts the built-in evaluation embeds (held-out SQuAD questions and paragraphs, MRPC
      and SST-2 dev sentences), shuffled with the corpus seed so that arrival order mixes them."""
    kind = data.kind
    length = max_length or eval_length(kind)
    if data.validation_file and kind in ("sequence-classification", "embedding"):
        texts, pairs = file_texts(data.validation_file, data.text_column, data.text_pair_column)
        return _tokenized(texts[:max_samples], pairs[:max_samples] if pairs else None, tokenizer, length)
    if kind == "embedding":
        return _tokenized(embedding_eval_texts(data.data_dir)[:max_samples], None, tokenizer, length)
    if kind == "sequence-classification":
        from compress.training.data import load_task_data

        td = load_task_data(
            data.task,
            tokenizer,
            **data.source(train=False),
            max_length=length,
            max_eval_samples=max_samples,
            splits=("dev",),
        )
        return td.dev.remove_columns([c for c in td.dev.column_names if c == "labels"])
    from compress.core.config import TrainConfig
    from compress.training.tasks import task_type

    task = task_type(kind)
    t = TrainConfig.for_evaluation(kind, 1, length, max_samples, progress=False)
    return task.load_data(data, tokenizer, t, ("dev",), None).dev


def file_texts(
    path: str | Path, text_column: str | None = None, pair_column: str | None = None
) -> tuple[list[str], list[str] | None]:
    """(texts, second texts or None) of a data file: a .txt file holds one text a line; a .tsv/.csv/.json/
    .jsonl file holds them in `text_column` (default: sentence, else text) and `pair_column`. Rows with
    an empty text are skipped."""
    from compress.tasks.embedding_data import CORPUS_SUFFIXES, READERS
    from compress.tasks.files import read_text

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"data file {path} not found; pass an existing .tsv/.csv/.json/.jsonl/.txt file")
    if suffix == ".txt":
        if pair_column:
            raise DataError(f"{path} is a .txt file (one text a line); --text-pair-column needs a file with columns")
        texts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        pairs = None
    elif suffix in READERS:
        columns = READERS[suffix](path)
        column = text_column or next((c for c in DEFAULT_TEXT_COLUMNS if c in columns), None)
        default = " or ".join(map(repr, DEFAULT_TEXT_COLUMNS))
        for flag, name in (("--text-column", column), ("--text-pair-column", pair_column)):
            if (name is not None and name not in columns) or (flag == "--text-column" and name is None):
                raise DataError(
                    f"{path} has no text column {repr(name) if name else default}; its columns are "
                    f"{', '.join(map(str, columns))}: pass {flag}"
                )
        keep = [i for i, v in enumerate(columns[column]) if isinstance(v, str) and v.strip()]
        texts = [columns[column][i].strip() for i in keep]
        pairs = [str(columns[pair_column][i] or "").strip() for i in keep] if pair_column else None
    else:
        raise DataError(f"unsupported data file type {suffix or path.name!r}; use {', '.join(CORPUS_SUFFIXES)}")
    if not texts:
        raise DataError(f"data file {path} holds no text")
    return texts, pairs


def embedding_eval_texts(data_dir: str | None = None) -> list[str]:
    """Every text the embedding evaluation embeds (compress.tasks.embedding_data's held-out sets)."""
    from compress.tasks.embedding_data import CORPUS_SEED, mrpc_dev_pairs, retrieval_set, sst2_dev_sentences

    retrieval = retrieval_set(data_dir)
    first, second, _ = mrpc_dev_pairs(data_dir)
    texts = retrieval.questions + retrieval.paragraphs + first + second + sst2_dev_sentences(data_dir)
    order = np.random.default_rng(CORPUS_SEED).permutation(len(texts))
    return [texts[i] for i in order]


def _tokenized(texts: list[str], pairs: list[str] | None, tokenizer, max_length: int):
    import datasets

    args = (texts, pairs) if pairs is not None else (texts,)
    enc = tokenizer(*args, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({k: list(v) for k, v in enc.items()})


def row_lengths(features) -> np.ndarray:
    """Tokens per row (special tokens included)."""
    return np.array([len(r) for r in features["input_ids"]], dtype=np.int64)


def length_stats(lengths) -> dict:
    """rows, mean, p50, p90 and max of the token lengths."""
    x = np.asarray(lengths, dtype=np.float64)
    if x.size == 0:
        raise DataError("the data holds no rows")
    p50, p90 = np.percentile(x, [50, 90])
    return {
        "rows": int(x.size),
        "mean": round(float(x.mean()), 2),
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "max": int(x.max()),
    }
