"""The built-in article-level split of the SQuAD v1.1 dev file, the only SQuAD data available offline.

It stands in for the real train split: the articles sorted by title, every fourth one (index % 4 == 3)
held out for evaluation and the rest used for training, so no paragraph (nor its article) is on both
sides. The same held-out articles are the retrieval benchmark of the embedding task (each question
retrieves its paragraph), so the embedding corpus never contains them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from compress.core.errors import DataError

HELD_OUT_EVERY = 4  # every 4th article (by title) is held out: 12 of SQuAD v1.1 dev's 48


def read_squad(path: str | Path) -> list[dict]:
    """The `data` list (articles with paragraphs and questions) of a SQuAD v1.1 JSON file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SQuAD file {path} not found; pass a SQuAD v1.1 JSON file (e.g. dev-v1.1.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"SQuAD file {path} is not UTF-8 JSON ({e}); pass a SQuAD v1.1 JSON file") from e
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(articles, list) or not all(isinstance(a, dict) and "paragraphs" in a for a in articles):
        raise DataError(f"SQuAD file {path} has no `data` list of articles with `paragraphs`; is it SQuAD v1.1 JSON?")
    return articles


def split_articles(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train articles, held-out articles) of a SQuAD v1.1 file, deterministic by title."""
    articles = sorted(read_squad(path), key=lambda a: a.get("title", ""))
    train = [a for i, a in enumerate(articles) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    held_out = [a for i, a in enumerate(articles) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return train, held_out


def default_squad_file(data_dir: str | Path | None = None) -> Path:
    """`<data dir>/squad/dev-v1.1.json`, the data dir defaulting to $COMPRESS_DATA_DIR."""
    d = data_dir or os.environ.get("COMPRESS_DATA_DIR")
    if not d:
        raise DataError("no data folder: pass --data-dir or set COMPRESS_DATA_DIR to the folder holding squad/")
    return Path(d) / "squad" / "dev-v1.1.json"
