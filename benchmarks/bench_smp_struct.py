"""smp-struct on SST-2: the pre-trained all-MiniLM-L6-v2 stays frozen, head/FFN-dim mask scores and the
classifier train (distilled from the SST-2 teacher) at FLOPs targets; then the shrunk export's dev
accuracy, its ORT speedup against the dense teacher export (same `compress bench` run), and the mask
file on disk (`compress mask save`: one bit per head and FFN dim + the classifier).

Run: python benchmarks/bench_smp_struct.py [--targets 2] [--steps 600] [--tag _x]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_retrain_free import RESULTS, _fraction, bench_onnx, loadavg, sh  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="../shared/models/minilm-l6-sst2")
    ap.add_argument(
        "--targets", nargs="+", type=float, default=[2.0], help="FLOPs reduction factors (1/--target-flops)"
    )
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--work", default="runs/smp_struct")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    doc = {
        "benchmark": "smp-struct on SST-2 (frozen all-MiniLM-L6-v2, distilled from the SST-2 teacher)",
        "command": "python " + shlex.join(sys.argv),
        "loadavg_start": loadavg(),
        "nproc": os.cpu_count(),
        "entries": {},
    }
    dense = work / "dense-onnx"
    sh(["compress", "export", "--onnx", a.teacher, "--output", str(dense), "--overwrite"], log)
    onnx = {"dense": dense}
    for target in a.targets:
        name = f"{target:g}x"
        out = work / f"smp-{name}"
        wall, cpu = sh(
            [
                "compress",
                "prune",
                "--method",
                "smp-struct",
                "--target-flops",
                f"{1 / target:.6f}",
                "--teacher",
                a.teacher,
                "--max-steps",
                str(a.steps),
                "-o",
                str(out),
                "--overwrite",
                "--no-progress",
            ],
            log,
        )
        info = json.loads((out / "compression.json").read_text())
        sh(
            [
                "compress",
                "export",
                "--onnx",
                str(out),
                "--output",
                str(work / f"smp-{name}-onnx"),
                "--shrink",
                "--overwrite",
            ],
            log,
        )
        sh(["compress", "mask", "save", str(out), "-o", str(work / f"smp-{name}.mask")], log)
        onnx[name] = work / f"smp-{name}-onnx"
        doc["entries"][name] = {
            "target_flops_fraction": round(1 / target, 6),
            "flops_fraction": _fraction(info),
            "heads_kept": sum(len(l["heads_kept"]) for l in info["layers"]),
            "ffn_dims_kept": sum(len(l["ffn_dims_kept"]) for l in info["layers"]),
            "dev_pytorch": info["metrics"],
            "prune_wall_s": round(wall, 1),
            "prune_cpu_s": round(cpu, 1),
            "steps": info["training"]["steps"],
            "mask_bytes": (work / f"smp-{name}.mask").stat().st_size,
            "checkpoint_bytes": (out / "model.safetensors").stat().st_size,
        }
    for name, path in onnx.items():
        js = work / f"eval-{name}.json"
        sh(["compress", "eval", str(path), "--task", "sst2", "--output-json", str(js)], log)
        doc["entries"].setdefault(name, {})["dev_onnx"] = json.loads(js.read_text())
    bench_json = RESULTS / f"smp_struct_bench{a.tag}.json"
    bench_onnx(onnx, bench_json, a.iterations, log)
    bench = json.loads(bench_json.read_text())
    for r in bench["results"]:
        if r["model"] in doc["entries"] and r["model"] != "dense":
            doc["entries"][r["model"]][f"speedup_b{r['batch_size']}"] = r["speedup"]
    doc.update(
        loadavg_end=loadavg(),
        cpu_model=bench.get("environment", {}).get("cpu_model"),
        onnxruntime=bench.get("environment", {}).get("onnxruntime"),
        steps=log,
    )
    (RESULTS / f"smp_struct{a.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    e = doc["entries"]
    dense_acc = e["dense"]["dev_onnx"]["accuracy"]
    lines = [
        f"# {doc['benchmark']}",
        "",
        f"Command: `{doc['command']}` (CPU: {doc['cpu_model']}, ONNX Runtime {doc['onnxruntime']}, "
        f"2 threads; load average start {doc['loadavg_start']}, end {doc['loadavg_end']}: shared machine).",
        "",
        "| target | FLOPs kept | heads | FFN dims | steps | dev (shrunk ONNX) | vs teacher | ORT b1 | b32 | mask file | checkpoint |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| dense teacher | 1.000 | 72 | 9216 | | {dense_acc * 100:.2f} | | 1.00 | 1.00 | | |",
    ]
    for name, r in e.items():
        if name != "dense":
            acc = r["dev_onnx"]["accuracy"]
            lines.append(
                f"| {name} | {r['flops_fraction']:.3f} | {r['heads_kept']} | {r['ffn_dims_kept']} | {r['steps']} | {acc * 100:.2f} | "
                f"{(acc - dense_acc) * 100:+.2f} | {r.get('speedup_b1', float('nan')):.2f} | {r.get('speedup_b32', float('nan')):.2f} | "
                f"{r['mask_bytes'] / 1e3:.1f} KB | {r['checkpoint_bytes'] / 1e6:.1f} MB |"
            )
    lines += ["", "Commands, in order:", ""] + [
        f"- `{s['command']}` ({s['wall_s']} s wall, {s['cpu_s']} s CPU)" for s in log
    ]
    (RESULTS / f"smp_struct{a.tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
