"""ONNX Runtime side: resolving/checking ONNX files, sessions, batched logits, evaluate_onnx.

Also home of the small ONNX fixtures the quantize and bench tests import (`export_tiny`,
`shrunk_tiny_model`): a tiny random BERT exported with torch.onnx into a directory holding
model.onnx + config.json + tokenizer files, the layout `compress export` writes.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from compress.core.errors import ArtifactError, CompressError
from compress.ort.evaluate import evaluate_onnx, onnx_logits
from exporters.files import resolve_onnx
from exporters.sessions import make_session

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HAVE_EXPORTER = importlib.util.find_spec("exporters.export") is not None


class _Logits(torch.nn.Module):
    """Positional-inputs wrapper: the TorchScript exporter mis-binds keyword inputs of BertModel in
    transformers 5 (`multiple values for argument 'use_cache'`)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args))).logits


def torch_export(model, directory: Path, inputs=TOKEN_INPUTS) -> Path:
    """model.onnx (TorchScript exporter, dynamic batch and sequence axes) + config + tokenizer.

    This form (eager attention, opset 17) is the one ORT's transformer fusion recognises, so the
    fusion tests use it even once `exporters.onnx_export` exists.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(5, model.config.vocab_size, (2, 8))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    axes = {k: {0: "batch", 1: "sequence"} for k in inputs} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():  # tracer chatter about shape-dependent Python branches
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(model, inputs),
            tuple(example[k] for k in inputs),
            str(directory / "model.onnx"),
            dynamo=False,
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
        )
    model.config.save_pretrained(directory)
    helpers.tiny_tokenizer().save_pretrained(directory)
    return directory


def export_tiny(directory: Path, model=None, use_exporter: bool = True) -> Path:
    """A tiny model as an ONNX directory; through the project's exporter when it exists."""
    model = model if model is not None else helpers.tiny_model()
    if use_exporter and HAVE_EXPORTER:
        from exporters.export import export_checkpoint

        ckpt = helpers.save_checkpoint(model, directory.parent / f"{directory.name}-ckpt")
        export_checkpoint(ckpt, directory, task="sequence-classification", overwrite=True)
        return directory
    return torch_export(model, directory)


@torch.no_grad()
def shrunk_tiny_model(heads=((0, 2), (1, 2, 3)), ffn=(40, 64), sharpen: float = 1.0, seed: int = 0):
    """A tiny BERT whose layers physically kept different heads / FFN widths (as after `shrink`).

    `sharpen` scales the query and key weights so attention is far from uniform: with the near-uniform
    attention of a random model, splitting a layer into the wrong number of heads goes unnoticed.
    """
    from transformers.pytorch_utils import prune_linear_layer

    model = helpers.tiny_model(seed=seed)
    model.config._attn_implementation = "eager"
    d = model.config.hidden_size // model.config.num_attention_heads
    for layer, kept, width in zip(model.bert.encoder.layer, heads, ffn):
        att = layer.attention.self
        idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept])
        att.query.weight *= sharpen
        att.key.weight *= sharpen
        att.query, att.key, att.value = (prune_linear_layer(m, idx) for m in (att.query, att.key, att.value))
        layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, idx, dim=1)
        att.num_attention_heads, att.all_head_size = len(kept), len(idx)
        keep = torch.arange(width)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    return model


def tokenized_dev(tmp_path: Path, n_dev: int = 16):
    from compress.training.data import load_task_data

    data = helpers.write_sst2_like(tmp_path / "glue" / "sst2", n_train=32, n_dev=n_dev)
    return load_task_data("sst2", helpers.tiny_tokenizer(), data_dir=str(data.parent), splits=("dev",))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    model = helpers.tiny_model()
    return model, export_tiny(tmp_path_factory.mktemp("onnx") / "tiny", model)


# --- resolve_onnx ---------------------------------------------------------------------------


def test_resolve_file_and_directory(tiny_onnx):
    _, d = tiny_onnx
    assert resolve_onnx(d) == d / "model.onnx"
    assert resolve_onnx(d / "model.onnx") == d / "model.onnx"


def test_resolve_missing(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        resolve_onnx(tmp_path / "nope.onnx")
    (tmp_path / "other.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match="has no model.onnx.*other.onnx"):
        resolve_onnx(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_onnx_is_artifact_error(tiny_onnx, tmp_path, damage):
    _, d = tiny_onnx
    data = (d / "model.onnx").read_bytes()
    bad = tmp_path / "model.onnx"
    bad.write_bytes(
        {"garbage": b"\x08\x07not a protobuf" * 50, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    with pytest.raises(ArtifactError) as e:
        resolve_onnx(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


# --- sessions and logits -------------------------------------------------------------------------


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(), reason="CUDA provider present"
)
def test_cuda_provider_missing_is_clear(tiny_onnx):
    _, d = tiny_onnx
    with pytest.raises(CompressError, match="CUDAExecutionProvider is not available.*onnxruntime-gpu"):
        make_session(d, "cuda")


def test_onnx_logits_match_torch_with_padding(tiny_onnx, tmp_path):
    model, d = tiny_onnx
    task = tokenized_dev(tmp_path)
    session = make_session(d, "cpu", threads=1)
    got = onnx_logits(session, task.dev, batch_size=5)  # uneven batches, rows of different lengths
    with torch.no_grad():
        want = np.concatenate(
            [
                model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([tt])).logits.numpy()
                for ids, tt in zip(task.dev["input_ids"], task.dev["token_type_ids"])
            ]
        )
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_only_declared_inputs_are_fed(tmp_path):
    """A graph without token_type_ids (RoBERTa-style export) runs on data that has them."""
    model = helpers.tiny_model()
    d = torch_export(model, tmp_path / "two", inputs=("input_ids", "attention_mask"))
    task = tokenized_dev(tmp_path)
    session = make_session(d, "cpu", threads=1)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert onnx_logits(session, task.dev, batch_size=4).shape == (len(task.dev), 2)


def test_evaluate_onnx_matches_compute_metrics(tiny_onnx, tmp_path):
    from compress.training.data import compute_metrics

    model, d = tiny_onnx
    task = tokenized_dev(tmp_path)
    metrics = evaluate_onnx(d, task, batch_size=8, threads=1)
    with torch.no_grad():
        logits = np.concatenate([model(input_ids=torch.tensor([ids])).logits.numpy() for ids in task.dev["input_ids"]])
    assert metrics == compute_metrics(task.spec, logits, np.asarray(task.dev["labels"]))
