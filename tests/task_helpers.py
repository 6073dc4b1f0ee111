"""Fast tokenizers and tiny base encoders of three families for the QA and token classification tests.

BERT and DistilBERT share helpers.WORDS as a WordPiece vocabulary; the RoBERTa tokenizer is byte-level
BPE with no merges (one token per character), small enough for the tiny models' embedding tables.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import torch

from helpers import WORDS, tiny_config

FAMILIES = ("bert", "distilbert", "roberta")
# Words every tokenizer keeps whole (no [UNK]), so a decoded span reads as the words it covers.
TEXT_WORDS = [w for w in WORDS if w.isalpha() and len(w) > 1]
ROBERTA_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]  # ids 0, 1, 2, 3 match tiny_config("roberta")


def tokenizer(family: str, **kw):
    from transformers import BertTokenizer, DistilBertTokenizer, RobertaTokenizer

    if family == "roberta":
        chars = ["\u0120", *string.ascii_lowercase, *",.!?"]  # \u0120 (Ġ) is byte-level BPE's space
        return RobertaTokenizer(vocab={w: i for i, w in enumerate(ROBERTA_SPECIALS + chars)}, merges=[], **kw)
    cls = DistilBertTokenizer if family == "distilbert" else BertTokenizer
    return cls(vocab={w: i for i, w in enumerate(WORDS)}, **kw)


def base_checkpoint(family: str, directory: Path, seed: int = 0, **tokenizer_kw) -> Path:
    """A tiny random base encoder (no task head) with its tokenizer, saved as a model folder."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(family)).save_pretrained(directory)
    tokenizer(family, **tokenizer_kw).save_pretrained(directory)
    return Path(directory)


def sentence(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(TEXT_WORDS) for _ in range(n)]
