"""Pruning under torchrun with two CPU processes (gloo) matches one process at the same global batch."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

import helpers as h


def _args(tmp, out, batch):
    return [
        "prune",
        "--model",
        str(tmp / "base"),
        "--method",
        "movement",
        "--sparsity",
        "0.5",
        "--task",
        "sst2",
        "--data-dir",
        str(tmp / "data"),
        "--max-steps",
        "6",
        "--batch-size",
        str(batch),
        "--no-progress",
        "--save-steps",
        "1000",
        "-o",
        str(tmp / out),
    ]


def test_two_process_gloo_matches_single(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=64, n_dev=16)
    # No dropout: the only difference left between the runs is how the global batch is split.
    h.save_checkpoint(
        h.tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), tmp_path / "base"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "compress.cli"] + _args(tmp_path, "single", 8), env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "compress.cli",
        ]
        + _args(tmp_path, "ddp", 4),
        env=env,
        capture_output=True,
        text=True,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
    ja = json.loads((tmp_path / "single" / "compression.json").read_text())
    jb = json.loads((tmp_path / "ddp" / "compression.json").read_text())
    assert ja["sparsity"]["encoder_linear"] == jb["sparsity"]["encoder_linear"]
    assert not list(tmp_path.glob(".ddp.tmp-*"))  # only rank 0 wrote, and it finished its rename
