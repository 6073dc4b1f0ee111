"""The papers' comparison at the scale of this machine: accuracy vs ORT CPU speedup, every method at
several sparsity levels, distilled from the dense teacher, plus int8 of the pruned graphs.

Each grid entry: compress prune -> export --shrink --optimize -> eval (ONNX) -> bench against the
dense export, fused the same way (same run, interleaved). Results accumulate in benchmarks/results/frontier_<task>.json
(entries already there are skipped, so a long grid can be split: `--only hybrid struct`), with a
markdown table and a plot. Each entry takes about (steps x s/step) + 2 min on 2 CPU cores.

Run: python benchmarks/frontier.py --task sst2 --steps 600 [--only METHOD ...] [--levels 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results"

# Three (or more) levels per method: sparsity for top-k methods, lambda for soft ones.
GRID = {
    "magnitude": [{"sparsity": s} for s in (0.5, 0.7, 0.9)],
    "movement": [{"sparsity": s} for s in (0.5, 0.7, 0.9)],
    "soft-movement": [{"lambda_reg": l, "score_lr": 0.05} for l in (5, 20, 50)],
    "block": [{"lambda_reg": l, "score_lr": 0.05, "block_size": 16} for l in (5, 20, 50)],
    "hybrid": [{"lambda_reg": l, "score_lr": 0.05} for l in (5, 20, 50)],
    "hybrid-filled": [{"source_level": i} for i in range(3)],
    "struct": [{"lambda_reg": l, "score_lr": 0.05} for l in (5, 20, 50)],
    "smp-l": [{"sparsity": s} for s in (0.5, 0.7, 0.9)],
    "smp-s": [{"sparsity": s, "lambda_reg": 1.0} for s in (0.5, 0.7, 0.9)],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--teacher", default="../shared/models/minilm-l6-sst2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--only", nargs="*", default=list(GRID))
    ap.add_argument("--levels", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="runs/frontier")
    ap.add_argument("--max-length", type=int, default=64, help="training sequence length (128 for sentence pairs)")
    ap.add_argument("--tag", default="", help="suffix of the results files, e.g. _h100 for a run on another machine")
    ap.add_argument("--iterations", type=int, default=20, help="timed runs per model and shape")
    ap.add_argument("--redo", action="store_true", help="recompute the selected entries even if they are recorded")
    ap.add_argument("--int8", action="store_true", help="also quantize each pruned graph (dynamic int8)")
    a = ap.parse_args()

    from compress.core.config import BenchConfig, DataConfig, DistillConfig, PruneConfig, TrainConfig
    from compress.core.models import load_tokenizer
    from compress.ort.bench import onnx_runner, run_benchmark
    from compress.ort.evaluate import evaluate_onnx
    from compress.training.data import load_task_data
    from compress.training.driver import prune
    from exporters.export import export_checkpoint

    work = Path(a.work) / a.task
    res_path = RESULTS / f"frontier_{a.task}{a.tag}.json"
    doc = json.loads(res_path.read_text()) if res_path.exists() else {"task": a.task, "entries": {}}
    tok = load_tokenizer(a.teacher)
    td = load_task_data(a.task, tok, max_length=128, splits=("dev",))
    dense = work / "dense-onnx" / "model.onnx"
    if not dense.exists():  # exported and fused exactly like the pruned graphs (what `compress run` ships)
        export_checkpoint(a.teacher, dense.parent, overwrite=True, shrink=False, optimize=True)
    if "dense" not in doc["entries"]:
        doc["entries"]["dense"] = {
            "method": "dense teacher",
            **evaluate_onnx(dense, td, 64),
            "speedup_b1": 1.0,
            "speedup_b32": 1.0,
            "command": "(the teacher's export, in every run)",
        }
    bc = BenchConfig(batch_sizes=(1, 32), seq_lens=(128,), threads=2, iterations=a.iterations)

    for method in a.only:
        for level in a.levels:
            key = f"{method}@{level}"
            if key in doc["entries"] and not a.redo:
                continue
            for stale in (key, key + " int8"):
                doc["entries"].pop(stale, None)
            flags = dict(GRID[method][level])
            t0 = time.time()
            out = work / key.replace("@", "-")
            cfg = PruneConfig(
                method=method,
                distill=DistillConfig(teacher=a.teacher),
                train=TrainConfig(max_steps=a.steps, max_length=a.max_length, overwrite=True, progress=False),
            )
            if "source_level" in flags:
                cfg.source = str(work / f"hybrid-{flags.pop('source_level')}" / "pruned")
                cfg.train.max_steps = a.steps // 3  # a short fill-in fine-tune
            for k, v in flags.items():
                setattr(cfg, k, v)
            student = None if method == "hybrid-filled" else (a.teacher if not method.startswith("smp") else None)
            info = prune(cfg, DataConfig(task=a.task), student, output=out / "pruned")
            onnx_path = export_checkpoint(out / "pruned", out / "onnx", shrink=True, optimize=True, overwrite=True).path
            models = {"dense": dense, key: onnx_path}
            if a.int8:
                from compress.core.config import QuantizeConfig
                from compress.ort.quantize import quantize_onnx

                q = quantize_onnx(out / "onnx", out / "onnx-int8", QuantizeConfig(), overwrite=True)
                models[key + " int8"] = (
                    Path(q.output) if str(q.output).endswith(".onnx") else Path(q.output) / "model.onnx"
                )
            bench = run_benchmark(
                [onnx_runner(str(p), bc, label=n) for n, p in models.items()], bc, command=" ".join(sys.argv)
            )
            env = bench["environment"]
            doc["machine"] = {
                "cpu_model": env["cpu_model"],
                "logical_cpus": env["logical_cpus"],
                "onnxruntime": env["onnxruntime"],
                "torch": env["torch"],
                "trained_on": _training_device(),
            }
            for name, path in list(models.items())[1:]:
                sp = {f"speedup_b{r['batch_size']}": r["speedup"] for r in bench["results"] if r["model"] == name}
                doc["entries"][name] = {
                    "method": method,
                    "level": GRID[method][level],
                    **evaluate_onnx(path, td, 64),
                    **sp,
                    "encoder_linear_sparsity": info["sparsity"]["encoder_linear"],
                    "encoder_linear_params_after_removal": info["params"]["encoder_linear_after_removal"],
                    "heads_kept": sum(len(l["heads_kept"]) for l in info["layers"]),
                    "ffn_dims_kept": sum(len(l["ffn_dims_kept"]) for l in info["layers"]),
                    "steps": info["training"]["steps"],
                    "seconds_per_step": round(info["training"]["seconds_per_step"], 3),
                    "command": "python " + " ".join(sys.argv),
                    "onnxruntime": env["onnxruntime"],  # entries of one file may come from several sessions
                    "entry_seconds": round(time.time() - t0),  # prune + export + quantize + bench + eval
                }
            RESULTS.mkdir(exist_ok=True)
            res_path.write_text(json.dumps(doc, indent=2) + "\n")
            write_markdown(doc, RESULTS / f"frontier_{a.task}{a.tag}.md")


def _training_device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def write_markdown(doc: dict, path: Path) -> None:
    from compress.report import plot_frontier

    metric = "f1" if doc["task"] == "mrpc" else "accuracy"
    m = doc.get("machine", {})
    lines = [
        f"# Frontier on {doc['task']} (MiniLM-L6, ORT CPU 2 threads, 128 tokens)",
        "",
        f"Pruned on {m.get('trained_on', '?')}; latency on {m.get('cpu_model', '?')} ({m.get('logical_cpus', '?')} logical "
        f"CPUs, 2 threads used), ONNX Runtime version per row (sessions differ). Speedups are against the dense teacher "
        "export, fused the same way, timed in the same run; compare them only within one file.",
        "",
        *([doc["note"], ""] if doc.get("note") else []),
        f"| model | dev {metric} | sparsity | params after removal | heads | FFN dims | speedup b1 | speedup b32 | ORT | minutes | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in doc["entries"].items():
        lines.append(
            f"| {name} | {e.get(metric, e.get('accuracy')):.4f} | {e.get('encoder_linear_sparsity', 0):.1%} | "
            f"{e.get('encoder_linear_params_after_removal', '')} | {e.get('heads_kept', '')} | {e.get('ffn_dims_kept', '')} | "
            f"{e.get('speedup_b1', '')} | {e.get('speedup_b32', '')} | {e.get('onnxruntime', '')} | "
            f"{round(e['entry_seconds'] / 60, 1) if 'entry_seconds' in e else ''} | `{e.get('command', '')}` |"
        )
    path.write_text("\n".join(lines) + "\n")
    plot_frontier(
        [
            {"label": n, "speedup": e.get("speedup_b32", 1.0), metric: e.get(metric, e.get("accuracy"))}
            for n, e in doc["entries"].items()
        ],
        path.with_suffix(".png"),
        y=metric,
    )


if __name__ == "__main__":
    main()
