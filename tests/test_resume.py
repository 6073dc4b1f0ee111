"""An interrupted prune resumed with --resume ends with the same masks and metrics as an uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import helpers as h
from compress.core.config import DataConfig, DistillConfig, PruneConfig, TrainConfig
from compress.training.driver import prune
from compress.training.loop import checkpoint_dir


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 7:
            raise KeyboardInterrupt  # as if Ctrl-C came in after the step-6 checkpoint


def _cfg(tmp, out, resume=False):
    return PruneConfig(
        method="movement",
        sparsity=0.6,
        distill=DistillConfig(teacher=str(tmp / "base")),
        train=TrainConfig(max_steps=10, batch_size=8, save_steps=3, progress=False, logging_steps=1000, resume=resume),
    )


def test_resume_matches_uninterrupted(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=48, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    data = DataConfig(task="sst2", data_dir=str(tmp_path / "data"))
    full = prune(_cfg(tmp_path, "full"), data, str(tmp_path / "base"), output=tmp_path / "full")

    with pytest.raises(KeyboardInterrupt):
        prune(_cfg(tmp_path, "resumed"), data, str(tmp_path / "base"), output=tmp_path / "resumed", callbacks=[Crash()])
    assert not (tmp_path / "resumed").exists()  # nothing that looks complete was written
    assert (checkpoint_dir(tmp_path / "resumed") / "checkpoint-6").is_dir()

    resumed = prune(_cfg(tmp_path, "resumed", resume=True), data, str(tmp_path / "base"), output=tmp_path / "resumed")
    assert resumed["layers"] == full["layers"]
    assert resumed["metrics"] == pytest.approx(full["metrics"], abs=1e-6)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k] == 0, b[k] == 0), k  # identical masks
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # A run that silently restarted from step 0 would match the uninterrupted one as well: the record must
    # say it continued from the step-6 checkpoint and ran only the remaining 4 steps.
    training = json.loads((tmp_path / "resumed" / "compression.json").read_text())["training"]
    assert (training["steps"], training["resumed_from_step"], training["steps_this_run"]) == (10, 6, 4)
