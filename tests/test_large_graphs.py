"""What a model past the usual sizes needs (benchmarks/large_model.py runs the real one, XLM-RoBERTa-large size):
checkpoints without tokenizer files, as a model built from its config is saved."""

from __future__ import annotations

import helpers as h
from exporters.export import export_checkpoint
from exporters.inputs import load_tokenizer


def test_checkpoint_without_tokenizer_files_exports_validated_on_random_ids(tmp_path):
    """transformers builds a tokenizer of special tokens only from a folder holding just config.json; text
    through it is all <unk>, so it counts as no tokenizer: export validates on random ids and says so."""
    ckpt = tmp_path / "ckpt"
    h.tiny_model("roberta").save_pretrained(ckpt)
    assert load_tokenizer(ckpt) is None
    report = export_checkpoint(ckpt, tmp_path / "onnx")
    assert "no tokenizer in the checkpoint: validated on random token ids" in report.notes
    assert report.validation["max_abs_diff"] <= report.validation["atol"]


def test_models_past_the_protobuf_limit_export_shrink_and_quantize_with_external_data(tmp_path, monkeypatch):
    """A graph past 2 GiB cannot be serialized: it is saved with its weights in one external-data file and
    given to ONNX Runtime and the checker as a file. The limit lowered to 20 kB makes a tiny model that big."""
    import numpy as np
    import onnx

    from exporters import files
    from exporters.sessions import make_session, run

    monkeypatch.setattr(files, "PROTOBUF_LIMIT", 20_000)
    model = h.kill_structure(h.tiny_model(), {0: [1, 3]}, {1: list(range(32))})
    ckpt = h.save_checkpoint(model, tmp_path / "ckpt")
    assert h.main(["export", "--onnx", str(ckpt), "-o", str(tmp_path / "dense"), "--no-shrink"]) == 0
    dense = tmp_path / "dense" / "model.onnx"
    written = {f.name for f in dense.parent.iterdir()}  # the weights in one file, not one file per tensor
    assert {"model.onnx", "model.onnx.data"} <= written and all(
        n.endswith((".json", ".txt", ".onnx", ".data")) for n in written
    )
    assert h.main(["shrink", str(dense), str(tmp_path / "small.onnx")]) == 0
    assert (tmp_path / "small.onnx.data").stat().st_size > 20_000  # the weights, in one file beside it
    assert h.main(["quantize", str(tmp_path / "small.onnx"), "-o", str(tmp_path / "int8.onnx")]) == 0
    loaded = onnx.load(str(tmp_path / "small.onnx"))  # external data read back
    assert files.over_protobuf_limit(loaded)
    feeds = {
        "input_ids": np.array([[2, 10, 20, 30, 3]]),
        "attention_mask": np.ones((1, 5), np.int64),
        "token_type_ids": np.zeros((1, 5), np.int64),
    }
    a, b = run(make_session(dense), feeds)["logits"], run(make_session(loaded), feeds)["logits"]  # file, memory
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert run(make_session(tmp_path / "int8.onnx"), feeds)["logits"].shape == (1, 2)
