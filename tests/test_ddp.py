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


def _torchrun(argv, port, **env):
    """Two CPU processes under torchrun running `argv` (a script and its arguments, or -m MODULE ...)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd + [str(a) for a in argv], env=env, capture_output=True, text=True)


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
    ddp = _torchrun(["-m", "compress.cli", *_args(tmp_path, "ddp", 4)], port=29533)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
    ja = json.loads((tmp_path / "single" / "compression.json").read_text())
    jb = json.loads((tmp_path / "ddp" / "compression.json").read_text())
    assert ja["sparsity"]["encoder_linear"] == jb["sparsity"]["encoder_linear"]
    assert not list(tmp_path.glob(".ddp.tmp-*"))  # only rank 0 wrote, and it finished its rename


RANK_ZERO_SCRIPT = """
import os, sys
from compress.speed.plan import on_rank_zero

log = sys.argv[1]


def measure():
    with open(log, "a") as f:
        f.write(os.environ["RANK"] + "\\n")
    if sys.argv[2] == "fail":
        raise ValueError("no graphs")
    return {"from_rank": os.environ["RANK"]}


out = f"{log}.rank{os.environ['RANK']}"  # one file per rank: their stdout lines would interleave
try:
    result = on_rank_zero(measure)["from_rank"]
except Exception as e:
    result = None
    open(out, "w").write(f"error {e}")
else:
    open(out, "w").write(f"result {result}")
finally:
    import torch.distributed as dist

    if dist.is_initialized():  # a gloo group left to interpreter shutdown can abort the process
        dist.destroy_process_group()
sys.exit(0 if result else 3)
"""


def test_rank_zero_measures_and_every_rank_gets_its_result(tmp_path):
    """A latency table or calibration timed per rank would differ, and so would the ranks' structures."""
    script = tmp_path / "rank_zero.py"
    script.write_text(RANK_ZERO_SCRIPT)
    ok = _torchrun([script, tmp_path / "calls.log", "ok"], port=29534)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "calls.log").read_text() == "0\n"  # measured once, on rank 0
    assert [(tmp_path / f"calls.log.rank{r}").read_text() for r in (0, 1)] == ["result 0", "result 0"]
    bad = _torchrun([script, tmp_path / "bad.log", "fail"], port=29535)
    assert bad.returncode != 0
    assert [(tmp_path / f"bad.log.rank{r}").read_text() for r in (0, 1)] == [
        "error no graphs",
        "error rank 0 failed: ValueError: no graphs",  # rank 1 does not wait forever
    ]


def test_two_process_speed_target_shares_rank_zeros_table(tmp_path):
    """Under torchrun with a measured table: the process group started to broadcast rank 0's table is the one
    the Trainer then uses, and the run ends at the budget."""
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=64, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    cache = tmp_path / "cache"
    args = _args(tmp_path, "ddp", 4)
    method = args.index("--method")
    args[method + 1 : method + 4] = ["struct", "--target-speedup", "1.5"]  # in place of movement --sparsity 0.5
    args += ["--deploy-shape", "1x16", "--no-measure-speed", "--max-steps", "4"]
    run = _torchrun(["-m", "compress.cli", *args], port=29536, COMPRESS_CACHE_DIR=str(cache))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list((cache / "latency").glob("*.json"))) == 1
    speed = json.loads((tmp_path / "ddp" / "compression.json").read_text())["speed"]
    assert speed["predicted_speedup"] >= 1.5 * 0.9
