"""Tiny random models, tokenizers and data built in-process (no hub access in tests)."""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(string.ascii_lowercase)
    + "the a an movie film is was good bad great awful not very fun boring plot actors and but it this".split()
    + ["##s", "##ing", "##ly", "##ed", ",", ".", "!"]
)
POSITIVE = ["the movie is good", "a great film", "very fun", "the actors are great", "it is good and fun"]
NEGATIVE = ["the movie is bad", "an awful film", "very boring", "the plot is not good", "it was bad and boring"]


def tiny_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def tiny_config(
    model_type: str = "bert",
    num_labels: int = 2,
    layers: int = 2,
    heads: int = 4,
    hidden: int = 32,
    ffn: int = 64,
    **extra_kw,
):
    from transformers import AutoConfig

    common = dict(vocab_size=len(WORDS), num_labels=num_labels, max_position_embeddings=128, **extra_kw)
    if model_type == "distilbert":
        return AutoConfig.for_model("distilbert", dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn, **common)
    extra = {"pad_token_id": 0}
    if model_type == "roberta":
        extra = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "max_position_embeddings": 130}
        common.pop("max_position_embeddings")
    return AutoConfig.for_model(
        model_type,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        **common,
        **extra,
    )


def tiny_model(model_type: str = "bert", seed: int = 0, **kw):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, **kw))
    model.eval()
    return model


@torch.no_grad()
def kill_structure(model, dead_heads: dict[int, list[int]], dead_dims: dict[int, list[int]]):
    """Zero the given heads (Q/K/V rows, O columns) and FFN dims (W1 rows, W2 columns) per layer."""
    from compress.core.structure import geometry, layer_linears

    d = geometry(model.config).head_size
    for i, lin in enumerate(layer_linears(model)):
        for h in dead_heads.get(i, []):
            sl = slice(h * d, (h + 1) * d)
            for r in ("query", "key", "value"):
                lin[r].weight[sl] = 0
                lin[r].bias[sl] = 0
            lin["attn_out"].weight[:, sl] = 0
        for j in dead_dims.get(i, []):
            lin["ffn_in"].weight[j] = 0
            lin["ffn_in"].bias[j] = 0
            lin["ffn_out"].weight[:, j] = 0
    return model


def save_checkpoint(model, directory: str | Path) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def write_sst2_like(directory: str | Path, n_train: int = 64, n_dev: int = 16) -> Path:
    """A GLUE-format sst2 folder (train.tsv, dev.tsv with header sentence\\tlabel)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"]
        for k in range(n):
            label = int(torch.randint(0, 2, (1,), generator=g))
            pool = POSITIVE if label else NEGATIVE
            rows.append(f"{pool[k % len(pool)]}\t{label}")
        (directory / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def main(argv: list[str]) -> int:
    """The `compress` command line, in-process. Imported here only, so the CLI module can move."""
    from compress.cli.main import main as cli_main

    return cli_main(argv)


def cli_error(code: int, err: str) -> str:
    """The error a CLI call printed, checked to be what users are promised for bad input: exit code 2 and
    exactly one non-empty stderr line starting `error: `, with no traceback. `err` is all of its stderr."""
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][len("error: ") :].strip(), err
    return lines[0]
