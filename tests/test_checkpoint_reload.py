"""The promise of a saved checkpoint: plain `AutoModelForSequenceClassification.from_pretrained(dir)` computes
what the in-memory model computed. The save check (compress.training.checkpoint.save_model_dir) reloads the
folder and compares outputs; these tests make that check fire and see a typed one-line error and no folder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import helpers as h
from compress.core.errors import ValidationError
from compress.training.checkpoint import save_model_dir


def _sample():
    return dict(h.tiny_tokenizer()(["the movie is good", "a very boring plot"], padding=True, return_tensors="pt"))


def _corrupt_saved_weights(folder):
    """One weight of the written file scaled, as a saver that writes wrong bytes for a tensor would."""
    path = folder / "model.safetensors"
    weights = load_file(path)
    name = next(k for k in weights if k.endswith("intermediate.dense.weight"))
    weights[name] = weights[name] * 3
    save_file(weights, path, metadata={"format": "pt"})


def _refused(excinfo, out) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "predicts differently" in msg and "nothing was written" in msg, msg
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return msg


def test_a_faithful_checkpoint_reloads_with_plain_transformers(tmp_path):
    model = h.tiny_model()
    out = save_model_dir(model, h.tiny_tokenizer(), tmp_path / "ok", {"method": "test"}, sample=_sample())
    with torch.no_grad():
        a = model(**_sample()).logits
        b = AutoModelForSequenceClassification.from_pretrained(out).eval()(**_sample()).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_saved_weights_that_do_not_reproduce_the_outputs_are_refused(tmp_path):
    def save(model, tokenizer, folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _corrupt_saved_weights(folder)

    out = tmp_path / "corrupt"
    with pytest.raises(ValidationError) as e:
        save_model_dir(h.tiny_model(), h.tiny_tokenizer(), out, {"method": "test"}, sample=_sample(), save=save)
    _refused(e, out)


def test_a_config_that_no_longer_describes_the_model_is_refused(tmp_path):
    """config.json is what from_pretrained builds from: a field changed after the modules were built (here
    the FFN activation) saves a checkpoint that reloads as another model."""
    model = h.tiny_model()
    model.config.hidden_act = "relu"  # the modules keep the GELU they were built with
    out = tmp_path / "mismatch"
    with pytest.raises(ValidationError) as e:
        save_model_dir(model, h.tiny_tokenizer(), out, {"method": "test"}, sample=_sample())
    _refused(e, out)


def test_cli_prune_whose_saved_weights_differ_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=16, n_dev=8)
    h.save_checkpoint(h.tiny_model(), tmp_path / "base")
    real = BertForSequenceClassification.save_pretrained

    def save_then_corrupt(self, folder, *args, **kw):
        real(self, folder, *args, **kw)
        _corrupt_saved_weights(folder)

    monkeypatch.setattr(BertForSequenceClassification, "save_pretrained", save_then_corrupt)
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(tmp_path / "base"), "--method", "magnitude", "--sparsity", "0.5"]
    argv += ["--data-dir", str(tmp_path / "data"), "--max-steps", "2", "--batch-size", "4", "--no-progress"]
    capsys.readouterr()
    err = h.cli_error(h.main(argv + ["-o", str(out)]), capsys.readouterr().err)
    assert "predicts differently" in err and "nothing was written" in err, err
    assert not out.exists() and not list(tmp_path.glob(".pruned.tmp-*"))
