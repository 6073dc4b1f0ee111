"""`export_onnx`: inputs per family, tasks, dynamic axes, validation against PyTorch, atomic output,
compression.json handling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from compress.core.artifacts import FORMAT_VERSION, read_compression_json, record_checksums, write_json
from compress.core.errors import ArtifactError, InvalidConfigError, ValidationError
from compress.core.sparsity import kept_structure
from compress.core.structure import geometry
from exporters import export as onnx_export
from exporters.export import export_checkpoint
from exporters.sessions import run
from helpers import kill_structure, save_checkpoint, tiny_config, tiny_model


def write_compression_json(checkpoint, model, layers=None):
    """A minimal valid compression.json for `model` saved in `checkpoint` (used by other test files too)."""
    geo = geometry(model.config)
    data = {
        "format_version": FORMAT_VERSION,
        "method": "test",
        "model_type": model.config.model_type,
        "geometry": {
            "num_layers": geo.num_layers,
            "num_heads": geo.num_heads,
            "head_size": geo.head_size,
            "hidden_size": geo.hidden_size,
            "intermediate_size": geo.intermediate_size,
        },
        "layers": layers if layers is not None else kept_structure(model),
    }
    write_json(
        checkpoint / "compression.json", record_checksums(checkpoint, data, ["model.safetensors", "config.json"])
    )
    return data


def roberta_one_segment():
    """RoBERTa as released: type_vocab_size 1, so token_type_ids carries no information."""
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_config("roberta")
    cfg.type_vocab_size = 1
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


@pytest.mark.parametrize(
    "family,expected_inputs",
    [
        ("bert", ["input_ids", "attention_mask", "token_type_ids"]),
        ("roberta", ["input_ids", "attention_mask"]),
        ("distilbert", ["input_ids", "attention_mask"]),
    ],
)
def test_export_families_inputs_and_dynamic_axes(tmp_path, family, expected_inputs):
    model = roberta_one_segment() if family == "roberta" else tiny_model(family)
    ck = save_checkpoint(model, tmp_path / "ck")
    result = export_checkpoint(ck, tmp_path / "out")
    assert result.task == "sequence-classification" and result.inputs == expected_inputs
    assert result.validation["max_abs_diff"] < 1e-4 and len(result.validation["batches"]) == 3
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.onnx", "config.json", "tokenizer_config.json"} <= files and "compression.json" not in files
    graph = onnx.load(str(result.path))
    assert [i.name for i in graph.graph.input] == expected_inputs
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    # batch and sequence are free: run a shape the exporter never saw, compare with PyTorch
    feeds = {
        "input_ids": np.random.default_rng(0).integers(5, 50, (5, 33)),
        "attention_mask": np.ones((5, 33), np.int64),
    }
    feeds["attention_mask"][2, 20:] = 0
    feeds["token_type_ids"] = np.zeros((5, 33), np.int64)
    got = run(graph, feeds)["logits"]
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items() if k in expected_inputs}).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize(
    "auto_class,task,outputs",
    [
        ("AutoModelForTokenClassification", "token-classification", {"logits": (3, 20, 2)}),
        ("AutoModelForQuestionAnswering", "question-answering", {"start_logits": (3, 20), "end_logits": (3, 20)}),
        ("AutoModel", "feature-extraction", {"last_hidden_state": (3, 20, 32)}),
    ],
)
def test_export_tasks(tmp_path, auto_class, task, outputs):
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(tiny_config("bert")).eval()
    ck = save_checkpoint(model, tmp_path / "ck")
    result = export_checkpoint(ck, tmp_path / "out")  # task inferred from the saved architecture
    assert result.task == task and result.outputs == list(outputs)
    feeds = onnx_export.sample_inputs(result.inputs, onnx_export.load_tokenizer(ck))
    got = run(onnx.load(str(result.path)), feeds[1])
    assert {k: v.shape for k, v in got.items()} == outputs


def test_export_refuses_a_head_the_checkpoint_does_not_have(tmp_path):
    ck = save_checkpoint(tiny_model("bert"), tmp_path / "ck")
    with pytest.raises(ArtifactError, match="no trained weights for the question-answering head"):
        export_checkpoint(ck, tmp_path / "out", task="question-answering")
    assert not (tmp_path / "out").exists()


def test_validation_failure_writes_nothing(tmp_path, monkeypatch):
    ck = save_checkpoint(tiny_model("bert"), tmp_path / "ck")
    real = onnx_export._torch_outputs
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda *a: {k: v + 0.01 for k, v in real(*a).items()})
    with pytest.raises(ValidationError, match=r"differs from PyTorch by 0\.01"):
        export_checkpoint(ck, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left behind


def test_validation_tolerance_scales_with_the_outputs(tmp_path, monkeypatch):
    """atol is per unit of max(1, max |output|): a difference of 1e-3 is float noise on outputs near 1000
    and passes, and is refused on outputs near 1 (test_validation_failure_writes_nothing)."""
    ck = save_checkpoint(tiny_model("bert"), tmp_path / "ck")
    torch_out, ort_run = onnx_export._torch_outputs, onnx_export.run
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda *a: {k: v + 1000.001 for k, v in torch_out(*a).items()})
    monkeypatch.setattr(onnx_export, "run", lambda *a: {k: v + 1000.0 for k, v in ort_run(*a).items()})
    result = export_checkpoint(ck, tmp_path / "out")
    v = result.validation
    assert 9e-4 < v["max_abs_diff"] < 2e-3 and v["max_scaled_diff"] < 1e-5 and v["atol"] == 1e-4
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda *a: {k: v + 1000.01 for k, v in torch_out(*a).items()})
    with pytest.raises(ValidationError, match=r"differs from PyTorch by 0\.01 .* 1e-05 of the output's scale"):
        export_checkpoint(ck, tmp_path / "out2", atol=1e-6)


def test_output_dir_and_checksums_are_guarded(tmp_path):
    model = tiny_model("bert")
    ck = save_checkpoint(model, tmp_path / "ck")
    write_compression_json(ck, model)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(InvalidConfigError, match="not empty"):
        export_checkpoint(ck, tmp_path / "busy")
    (ck / "config.json").write_text((ck / "config.json").read_text() + "\n")  # edited after pruning
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        export_checkpoint(ck, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_shrink_optimize_with_compression_json(tmp_path):
    model = kill_structure(
        tiny_model("bert", layers=3), {0: [1, 3], 1: [0, 1, 2, 3], 2: [2]}, {1: list(range(10)), 2: list(range(64))}
    )
    ck = save_checkpoint(model, tmp_path / "ck")
    write_compression_json(ck, model)
    result = export_checkpoint(ck, tmp_path / "out", shrink=True, optimize=True)
    assert result.shrink["source"] == "compression.json"
    assert [(r["heads_after"], r["ffn_after"]) for r in result.shrink["layers"]] == [(2, 64), (0, 54), (3, 0)]
    assert result.optimize["applied"] and result.optimize["fusions"]["Attention"] == 2
    assert result.validation["final_max_abs_diff"] < 1e-4
    data = read_compression_json(tmp_path / "out", verify=True)  # checksums rewritten for the ONNX dir
    assert set(data["files"]) == {"model.onnx", "config.json"}
    assert data["onnx"]["shrunk"] and data["onnx"]["optimized"] and data["layers"] == kept_structure(model)
