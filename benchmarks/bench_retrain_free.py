"""retrain-free (Kwon et al. 2022) on the real SST-2 teacher at FLOPs targets: wall/CPU time of the pruning,
SST-2 dev accuracy (PyTorch and the shrunk ONNX graph), and the ORT speedup of the shrunk export against the
dense export, timed in the same `compress bench` run.

Every step is the public CLI, run as a subprocess; the exact commands go into the results file. The
CPU time of each prune (user + sys of the child) is recorded beside the wall time because the 2-core
machine may be shared: wall time then overstates what the method costs, CPU time does not.

Run: python benchmarks/bench_retrain_free.py [--targets 1.5 2] [--fill-steps 0] [--tag _x]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def sh(cmd: list[str], log: list) -> tuple[float, float]:
    """Run a CLI command; returns (wall seconds, child CPU seconds). Stops the benchmark on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    print("+ " + shlex.join(cmd), flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tail = "\n".join(res.stdout.splitlines()[-15:])
    print(tail, flush=True)
    log.append({"command": shlex.join(cmd), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "rc": res.returncode})
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {shlex.join(cmd)}")
    return wall, cpu


def _fraction(info: dict) -> float:
    """Predicted cost of the kept structure as a fraction of dense (FLOPs for --target-flops)."""
    sp = info["speed"]
    return round(sp["predicted"] / sp["dense"], 6)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_onnx(onnx: dict, bench_json: Path, iterations: int, log: list) -> None:
    """`compress bench` of the labelled graphs at 1 and 32 x 128, its JSON report to bench_json."""
    paths = [str(p) for p in onnx.values()]
    sh(["compress", "bench", *paths, "--labels", *onnx, "--batch-sizes", "1", "32", "--seq-lens", "128",
        "--iterations", str(iterations), "--json", str(bench_json)], log)  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="../shared/models/minilm-l6-sst2")
    ap.add_argument(
        "--targets", nargs="+", type=float, default=[1.5, 2.0], help="FLOPs reduction factors (1/--target-flops)"
    )
    ap.add_argument("--fill-steps", type=int, default=0)
    ap.add_argument("--work", default="runs/retrain_free")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    doc = {
        "benchmark": "retrain-free on MiniLM-L6 SST-2 (the teacher pruned post-training)",
        "command": "python " + shlex.join(sys.argv),
        "teacher": a.teacher,
        "fill_steps": a.fill_steps,
        "loadavg_start": loadavg(),
        "nproc": os.cpu_count(),
        "entries": {},
    }

    dense = work / "dense-onnx"
    sh(["compress", "export", "--onnx", a.teacher, "--output", str(dense), "--overwrite"], log)
    onnx = {"dense": dense}
    for target in a.targets:
        name = f"{target:g}x"
        out = work / f"rf-{name}"
        cmd = [
            "compress",
            "prune",
            "--method",
            "retrain-free",
            "--model",
            a.teacher,
            "--target-flops",
            f"{1 / target:.6f}",
            "-o",
            str(out),
            "--overwrite",
            "--no-progress",
        ]
        if a.fill_steps:
            cmd += ["--fill-steps", str(a.fill_steps), "--teacher", a.teacher]
        la0 = loadavg()
        wall, cpu = sh(cmd, log)
        info = json.loads((out / "compression.json").read_text())
        sh(
            [
                "compress",
                "export",
                "--onnx",
                str(out),
                "--output",
                str(work / f"rf-{name}-onnx"),
                "--shrink",
                "--overwrite",
            ],
            log,
        )
        onnx[name] = work / f"rf-{name}-onnx"
        rf = info["retrain_free"]
        doc["entries"][name] = {
            "target_flops_fraction": round(1 / target, 6),
            "flops_fraction": _fraction(info),
            "heads_kept": sum(len(l["heads_kept"]) for l in info["layers"]),
            "ffn_dims_kept": sum(len(l["ffn_dims_kept"]) for l in info["layers"]),
            "per_layer": [[len(l["heads_kept"]), len(l["ffn_dims_kept"])] for l in info["layers"]],
            "dev_pytorch": info["metrics"],
            "prune_wall_s": round(wall, 1),
            "prune_cpu_s": round(cpu, 1),
            "loadavg_during_prune": [la0, loadavg()],
            "stages_s": rf["seconds"],
            "tuning_error": {
                "before": sum(r.get("error_before", 0) for r in rf["tuning"]),
                "after": sum(r.get("error_after", 0) for r in rf["tuning"]),
            },
            "rearrangement": rf["rearrangement_fisher_loss"],
            "fill_steps": info["training"]["steps"],
        }
    for name, path in onnx.items():
        js = work / f"eval-{name}.json"
        sh(["compress", "eval", str(path), "--task", "sst2", "--output-json", str(js)], log)
        doc["entries"].setdefault(name, {})["dev_onnx"] = json.loads(js.read_text())
    bench_json = RESULTS / f"retrain_free_bench{a.tag}.json"
    RESULTS.mkdir(exist_ok=True)
    bench_onnx(onnx, bench_json, a.iterations, log)
    bench = json.loads(bench_json.read_text())
    for r in bench["results"]:
        if r["model"] in doc["entries"] and r["model"] != "dense":
            doc["entries"][r["model"]][f"speedup_b{r['batch_size']}"] = r["speedup"]
    doc["loadavg_end"] = loadavg()
    doc["cpu_model"] = bench.get("environment", {}).get("cpu_model")
    doc["onnxruntime"] = bench.get("environment", {}).get("onnxruntime")
    doc["steps"] = log
    (RESULTS / f"retrain_free{a.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(doc, RESULTS / f"retrain_free{a.tag}.md")


def write_markdown(doc: dict, path: Path) -> None:
    e = doc["entries"]
    dense_acc = e["dense"]["dev_onnx"].get("accuracy")
    lines = [
        f"# {doc['benchmark']}",
        "",
        f"Command: `{doc['command']}` (CPU: {doc.get('cpu_model')}, {doc['nproc']} logical CPUs, "
        f"ONNX Runtime {doc.get('onnxruntime')}, 2 threads; load average at start {doc['loadavg_start']}, end {doc['loadavg_end']}: "
        "the machine was shared with other jobs, so wall times are upper bounds; CPU time is the prune's own user+sys).",
        "",
        "| target | FLOPs kept | heads | FFN dims | SST-2 dev (PyTorch) | dev (shrunk ONNX) | vs teacher | ORT speedup b1 | b32 | prune wall s | prune CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| dense teacher | 1.000 | 72 | 9216 | | {dense_acc * 100:.2f} | | 1.00 | 1.00 | | |",
    ]
    for name, r in e.items():
        if name == "dense":
            continue
        acc = r["dev_onnx"].get("accuracy")
        lines.append(
            f"| {name} | {r['flops_fraction']:.3f} | {r['heads_kept']} | {r['ffn_dims_kept']} | {r['dev_pytorch']['accuracy'] * 100:.2f} "
            f"| {acc * 100:.2f} | {(acc - dense_acc) * 100:+.2f} | {r.get('speedup_b1', float('nan')):.2f} | "
            f"{r.get('speedup_b32', float('nan')):.2f} | {r['prune_wall_s']:.0f} | {r['prune_cpu_s']:.0f} |"
        )
    lines += [
        "",
        "Stages (s, wall) and mask-tuning reconstruction error (sum of squares over the tuning sample, all sub-layers):",
        "",
    ]
    for name, r in e.items():
        if name != "dense":
            lines.append(
                f"- {name}: {r['stages_s']}; error {r['tuning_error']['before']:.4g} -> {r['tuning_error']['after']:.4g}; "
                f"per layer (heads, FFN dims) {r['per_layer']}"
            )
    lines += ["", "Commands, in order:", ""] + [
        f"- `{s['command']}` ({s['wall_s']} s wall, {s['cpu_s']} s CPU)" for s in doc["steps"]
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
