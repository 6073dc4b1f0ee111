"""Inputs used to check graphs against each other: tokenized sentences when a tokenizer is at hand,
seeded random ids otherwise. Light imports only (numpy), so the shrink path needs no torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

# A few sentences of different lengths: validation runs on real tokenized text, not random ids.
SENTENCES = (
    "the movie is good",
    "a great film, with very fun actors and a plot that was not boring at all!",
    "it was bad.",
    "the actors are great but the plot is awful and the film is very boring from the start",
    "an awful film",
    "good",
)


def sample_inputs(
    input_names: list[str], tokenizer=None, vocab_size: int = 100, max_length: int = 48, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Validation batches of several sizes and lengths, padded so the attention mask matters.
    Real tokenized sentences when a tokenizer is given; otherwise seeded random ids."""
    batches = []
    if tokenizer is not None:
        groups = ((SENTENCES[:1], "longest"), (SENTENCES[1:4], "longest"), (SENTENCES, "max_length"))
        for texts, padding in groups:
            enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="np")
            batches.append({k: np.asarray(enc[k], dtype=np.int64) for k in input_names if k in enc})
    else:
        rng = np.random.default_rng(seed)
        for b, length in ((1, 5), (3, 17), (6, max_length)):
            ids = rng.integers(0, max(vocab_size, 2), size=(b, length), dtype=np.int64)
            mask = np.ones((b, length), dtype=np.int64)
            for r in range(1, b):  # ragged padding, like a real batch
                mask[r, length - (r * length) // (b + 1) :] = 0
            batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    for feeds in batches:
        for name in input_names:
            feeds.setdefault(name, np.zeros_like(feeds["input_ids"]))
        for name in list(feeds):
            if name not in input_names:
                del feeds[name]
    return batches


def load_tokenizer(directory: str | Path):
    try:
        from transformers import AutoTokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(directory))
    except Exception:  # no or unreadable tokenizer: the caller falls back to random ids
        return None


def vocab_size_from_graph(model) -> int:
    """Rows of the embedding table that input_ids index (to draw valid random ids); 100 if not found."""
    from exporters.graph import Graph

    g = Graph(model)
    for node in g.children("input_ids"):
        if node.op_type == "Gather":
            table = g.const(node.input[0])
            if table is not None:
                return int(table.shape[0])
    return 100
