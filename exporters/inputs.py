"""Inputs to run a graph with: tokenized sentences, or seeded random token ids shaped for its inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from compress.core.errors import ArtifactError
from exporters.files import first_line, read_config

# A few sentences of different lengths: validation runs on real tokenized text, not random ids.
SENTENCES = (
    "the movie is good",
    "a great film, with very fun actors and a plot that was not boring at all!",
    "it was bad.",
    "the actors are great but the plot is awful and the film is very boring from the start",
    "an awful film",
    "good",
)


def graph_inputs(model) -> list[tuple[str, str]]:
    """(name, ONNX type string such as 'tensor(int64)') for each real input of an onnx.ModelProto
    (initializers listed as inputs by old exporters are not inputs)."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    return [
        (i.name, f"tensor({onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower()})")
        for i in model.graph.input
        if i.name not in inits
    ]


def vocab_size(model, model_dir: str | Path | None = None) -> int:
    """Vocabulary size from config.json, else from the embedding table that input_ids indexes
    (through Casts: fused graphs feed int32 ids to EmbedLayerNormalization); ArtifactError if neither."""
    v = read_config(model_dir).get("vocab_size")
    if isinstance(v, int) and v > 0:
        return v
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    ids = {"input_ids"}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.input[0] in ids:
            ids.add(n.output[0])
    sizes = []
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[1:2] and n.input[1] in ids:
            table = n.input[0]
        elif n.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
            table = n.input[2]  # (input_ids, segment_ids, word_embedding, position_embedding, ...)
        else:
            continue
        if len(shapes.get(table, [])) == 2:
            sizes.append(shapes[table][0])
    if not sizes:  # random ids past the real vocabulary would index outside the table
        where = f"no config.json with vocab_size in {model_dir}" if model_dir else "no config.json"
        raise ArtifactError(
            f"cannot tell the graph's vocabulary size: {where} and no embedding table that input_ids "
            "indexes; put the model's config.json beside the graph"
        )
    return min(sizes)


def load_tokenizer(directory: str | Path, required: bool = False):
    """The tokenizer saved in `directory`. Without `required`, None when there is none or it cannot be
    read (callers then fall back to random ids); with it, an ArtifactError naming the folder."""
    try:
        from transformers import AutoTokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # missing files, unreadable vocab: transformers raises many types
        if required:
            raise ArtifactError(f"cannot load a tokenizer from {directory} ({first_line(e)})") from e
        return None
    # From a folder without tokenizer files (config.json is enough) transformers 5 builds a tokenizer of
    # special tokens only: every text would become <unk>, a sample that checks nothing. That is no tokenizer.
    if not set(tok.get_vocab()) - set(tok.all_special_tokens):
        if required:
            raise ArtifactError(
                f"{directory} has no tokenizer vocabulary (special tokens only); copy the tokenizer files "
                "(tokenizer.json, vocab.txt, ...) of the model beside it"
            )
        return None
    return tok


def random_feeds(
    inputs: list[tuple[str, str]],
    vocab: int,
    batch: int = 2,
    seq: int = 16,
    seed: int = 0,
    *,
    low: int = 0,
    ragged: bool = False,
) -> dict[str, np.ndarray]:
    """Seeded random token ids for every graph input (ids in [low, vocab); masks of ones, or with
    `ragged` each row after the first padded further, like a real batch; token types zero)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(low, max(vocab - 1, 0)), max(vocab, 1), size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if ragged:
        for r in range(1, batch):
            mask[r, seq - (r * seq) // (batch + 1) :] = 0
    feeds = {}
    for name, kind in inputs:
        arr = ids if name == "input_ids" else mask if name == "attention_mask" else np.zeros((batch, seq), np.int64)
        feeds[name] = arr.astype(np.int32) if kind == "tensor(int32)" else arr
    return feeds


def sample_inputs(
    input_names: list[str], tokenizer=None, vocab: int = 100, max_length: int = 48, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Validation batches of several sizes and lengths, padded so the attention mask matters.
    Real tokenized sentences when a tokenizer is given; otherwise seeded random ids."""
    if tokenizer is None:
        typed = [(n, "tensor(int64)") for n in input_names]
        return [
            random_feeds(typed, vocab, b, length, seed, ragged=True) for b, length in ((1, 5), (3, 17), (6, max_length))
        ]
    batches = []
    for texts, padding in ((SENTENCES[:1], "longest"), (SENTENCES[1:4], "longest"), (SENTENCES, "max_length")):
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="np")
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        batches.append({k: np.asarray(enc[k], dtype=np.int64) if k in enc else np.zeros_like(ids) for k in input_names})
    return batches
