"""Latency tables: predicted vs measured latency, and speed targets hit.

Part `table`: for each deploy precision and shape, build (or read from the cache) the latency table of
the model, then export random pruned structures with our own export + surgery (+ fusion, + int8), time
them interleaved with the dense graphs (compress.speed.deploy_graph.time_graphs, medians of per-round ratios
to the dense fp32 graph), and compare with the table's prediction.

Part `targets`: `compress prune --method struct --target-speedup X` for each requested speedup (short
runs: the kept structure depends only on the budget, not on how long the scores trained), then the
result goes through the shipping path (`export_checkpoint(shrink=True, optimize=True)`, quantize for
int8) and is timed with `compress bench`'s interleaved runner against the dense fp32 export of the
same model in the same rounds.

Run from the repository root:
  python benchmarks/bench_latency_table.py table --shapes 32x128 1x128 --precisions fp32 int8
  python benchmarks/bench_latency_table.py targets --teacher ../shared/models/minilm-l6-sst2
Results and the exact command go to benchmarks/results/latency_table*.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def _env() -> dict:
    from compress.core.config import BenchConfig
    from compress.ort.bench import environment

    env = environment(BenchConfig())
    env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


def random_structures(geo, n: int, seed: int) -> list[list[dict]]:
    """n structures with per-layer head counts 0..H and FFN widths 0..F (any integer, so the table's
    interpolation between grid points is tested too), random indices."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        layers = []
        lo = rng.uniform(0.0, 0.6)  # vary overall sparsity from structure to structure
        for _ in range(geo.num_layers):
            h = int(rng.integers(round(lo * geo.num_heads), geo.num_heads + 1))
            f = int(rng.integers(round(lo * geo.intermediate_size), geo.intermediate_size + 1))
            layers.append(
                {
                    "heads_kept": sorted(rng.choice(geo.num_heads, h, replace=False).tolist()),
                    "ffn_dims_kept": sorted(rng.choice(geo.intermediate_size, f, replace=False).tolist()),
                }
            )
        out.append(layers)
    return out


def random_hidden(geo, n: int, seed: int) -> list[list[int] | None]:
    """With --hidden: a random kept hidden width per structure (a multiple of 32 from a quarter of the
    hidden size up, the full size included) and random kept dims; else None (all kept) for each."""
    rng = np.random.default_rng(seed + 1)
    widths = list(range(32, geo.hidden_size + 1, 32))
    widths = [w for w in widths if w >= geo.hidden_size // 4]
    return [sorted(rng.choice(geo.hidden_size, int(rng.choice(widths)), replace=False).tolist()) for _ in range(n)]


def part_table(a) -> dict:
    from compress.core.models import resolve_model
    from compress.speed.deploy_graph import DeployConfig, DeployGraphs, parse_shape, time_graphs
    from compress.speed.table import load_or_build_table

    model = resolve_model(a.model)
    report = {"model": a.model, "env_start": _env(), "configs": []}
    for precision in a.precisions:
        for shape in a.shapes:
            b, s = parse_shape(shape)
            deploy = DeployConfig(
                precision=precision, batch=b, seq=s, threads=a.threads, repeats=a.repeats, hidden_axis=a.hidden
            )
            t0 = time.time()
            table, path, cached = load_or_build_table(model, deploy, rebuild=a.rebuild, progress=not a.quiet)
            built = time.time() - t0
            suffix = "-hidden" if a.hidden else ""
            table.save(RESULTS / "latency_tables" / f"{precision}-{shape}{suffix}.json")
            with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
                graphs = DeployGraphs(
                    model,
                    tmp,
                    DeployConfig(precision=precision, batch=b, seq=s, threads=a.threads, repeats=a.check_repeats),
                )
                structs = random_structures(graphs.geo, a.structures, a.seed)
                widths = random_hidden(graphs.geo, a.structures, a.seed) if a.hidden else [None] * len(structs)
                paths = {"dense": graphs.build(None, "dense")}
                if precision != "fp32":
                    paths["dense-fp32"] = graphs.build(None, "dense-fp32", precision="fp32")
                for i, kept in enumerate(structs):
                    paths[f"s{i}"] = graphs.build(kept, f"s{i}", hidden=widths[i])
                ref = "dense-fp32" if precision != "fp32" else "dense"
                res = time_graphs(paths, graphs.deploy, reference=ref)
            rows = []
            for i, kept in enumerate(structs):
                measured = res[f"s{i}"]["ms"]
                predicted = table.predict_kept(kept, hidden=widths[i])
                rows.append(
                    {
                        "structure": i,
                        "hidden": len(widths[i]) if widths[i] else graphs.geo.hidden_size,
                        "heads": [len(k["heads_kept"]) for k in kept],
                        "ffn": [len(k["ffn_dims_kept"]) for k in kept],
                        "predicted_ms": round(predicted, 3),
                        "measured_ms": round(measured, 3),
                        "measured_fastest_ms": round(res[f"s{i}"]["min_ms"], 3),
                        "error": round(predicted / measured - 1, 4),
                        "predicted_speedup": round(table.baseline_ms / predicted, 3),
                        "measured_speedup": round(res[ref]["ms"] / measured, 3),
                        "speedup_error": round((table.baseline_ms / predicted) / (res[ref]["ms"] / measured) - 1, 4),
                    }
                )
            cfg = {
                "precision": precision,
                "shape": shape,
                "table_file": f"latency_tables/{precision}-{shape}{suffix}.json",
                "table_from_cache": cached,
                "table_seconds": round(built, 1),
                "table_dense_ms": round(table.dense_ms, 3),
                "table_baseline_fp32_ms": round(table.baseline_ms, 3),
                "table_predicted_dense_ms": round(table.predicted_dense_ms, 3),
                "check_dense_ms": round(res["dense"]["ms"], 3),
                "check_baseline_fp32_ms": round(res[ref]["ms"], 3),
                "rows": rows,
                "max_abs_error": max(abs(r["error"]) for r in rows),
                "max_abs_speedup_error": max(abs(r["speedup_error"]) for r in rows),
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            }
            report["configs"].append(cfg)
            print(
                f"{precision} {shape}: table {built:.0f}s; max |error| ms {cfg['max_abs_error']:.1%}, "
                f"speedup {cfg['max_abs_speedup_error']:.1%}",
                flush=True,
            )
    return report


def part_targets(a) -> dict:
    from compress.core.config import BenchConfig, QuantizeConfig
    from compress.ort.bench import onnx_runner, run_benchmark
    from compress.ort.quantize import quantize_onnx
    from exporters.export import export_checkpoint

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    report = {"teacher": a.teacher, "env_start": _env(), "runs": []}
    b, s = (int(x) for x in a.shape.split("x"))
    models = {
        "dense fp32": export_checkpoint(a.teacher, work / "dense", shrink=False, optimize=True, overwrite=True).path
    }
    requests = [("fp32", float(x)) for x in a.fp32] + [("int8", float(x)) for x in a.int8]
    for precision, x in requests:
        out = work / f"struct-{precision}-{x:g}x"
        cmd = [
            sys.executable,
            "-m",
            "compress.cli",
            "prune",
            "--method",
            "struct",
            "--model",
            a.teacher,
            "--target-speedup",
            f"{x:g}",
            "--deploy",
            precision,
            "--deploy-shape",
            a.shape,
            "--threads",
            str(a.threads),
            "--max-steps",
            str(a.max_steps),
            "--batch-size",
            str(a.batch_size),
            "--max-train-samples",
            str(a.max_steps * a.batch_size),
            "--max-eval-samples",
            "200",
            "--task",
            "sst2",
            "-o",
            str(out),
            "--overwrite",
            "--no-progress",
            "--no-measure-speed",
        ]
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        info = json.loads((out / "compression.json").read_text())
        onnx_dir = work / f"onnx-{precision}-{x:g}x"
        path = export_checkpoint(out, onnx_dir, shrink=True, optimize=True, overwrite=True).path
        if precision == "int8":
            res = quantize_onnx(onnx_dir, work / f"onnx-{precision}-{x:g}x-int8", QuantizeConfig(), overwrite=True)
            path = Path(res.output)
        label = f"{precision} {x:g}x"
        models[label] = path
        report["runs"].append(
            {
                "label": label,
                "precision": precision,
                "requested": x,
                "command": shlex.join(cmd),
                "seconds": round(time.time() - t0, 1),
                "predicted_speedup": info["speed"]["predicted_speedup"],
                "heads": [len(l["heads_kept"]) for l in info["layers"]],
                "ffn": [len(l["ffn_dims_kept"]) for l in info["layers"]],
                "dev_accuracy_200": info["metrics"].get("accuracy"),
            }
        )
        print(f"{label}: predicted {info['speed']['predicted_speedup']:.2f}x", flush=True)
    bc = BenchConfig(batch_sizes=(b,), seq_lens=(s,), threads=a.threads, iterations=a.iterations, warmup=2)
    bench = run_benchmark(
        [onnx_runner(str(p), bc, label=k) for k, p in models.items()], bc, command="bench_latency_table targets"
    )
    by = {r["model"]: r for r in bench["results"]}
    for r in report["runs"]:
        m = by[r["label"]]
        r["measured_speedup"] = m["speedup"]
        r["measured_p50_ms"] = m["p50_ms"]
        # The latency table's statistic (fastest run), for comparison with the median-based figure above.
        r["measured_speedup_fastest"] = round(by["dense fp32"]["min_ms"] / m["min_ms"], 3)
        r["error_vs_request"] = round(m["speedup"] / r["requested"] - 1, 4)
    report["dense_p50_ms"] = by["dense fp32"]["p50_ms"]
    report["bench"] = bench
    report["env_end"] = _env()
    return report


def write_md(path: Path, title: str, lines: list[str]) -> None:
    path.write_text(f"# {title}\n\n" + "\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="part", required=True)
    t = sub.add_parser("table")
    t.add_argument("--model", default="minilm")
    t.add_argument("--shapes", nargs="+", default=["32x128", "1x128"])
    t.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--repeats", type=int, default=7, help="table rounds")
    t.add_argument("--check-repeats", type=int, default=9, help="rounds for the random structures")
    t.add_argument("--structures", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--rebuild", action="store_true")
    t.add_argument("--hidden", action="store_true", help="tables with the hidden axis; random kept hidden widths")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--out", default="latency_table")
    g = sub.add_parser("targets")
    g.add_argument("--teacher", required=True)
    g.add_argument("--fp32", nargs="*", default=["1.5", "2", "3", "4"])
    g.add_argument("--int8", nargs="*", default=["3", "5"])
    g.add_argument("--shape", default="32x128")
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--max-steps", type=int, default=12)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--iterations", type=int, default=15)
    g.add_argument("--workdir", default="/tmp/bench-latency-targets")
    g.add_argument("--out", default="latency_targets")
    a = p.parse_args()
    command = "python " + shlex.join(sys.argv)
    t0 = time.time()
    report = part_table(a) if a.part == "table" else part_targets(a)
    report["command"] = command
    report["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    env = report["env_start"]
    head = [
        f"Command: `{command}`",
        "",
        f"CPU: {env['cpu_model']} ({', '.join(env['cpu_flags'])}), {env['logical_cpus']} logical CPUs, "
        f"ORT {env['onnxruntime']}; load average at start {env['load_average']} (the machine is shared with other "
        f"engineers' jobs: timings are noisy), {report['seconds'] / 60:.1f} min.",
        "",
    ]
    if a.part == "table":
        lines = head + [
            "Predicted (latency table) vs measured (random pruned structures, our export + surgery + fusion "
            "(+ int8), timed interleaved with the dense graphs; the table and this check both use the median over "
            "rounds of each graph's time / the reference graph's time in the same round). error = predicted / measured - 1; "
            "speedup error compares speedups over dense fp32 (the dense fp32 graph timed in the same rounds).",
            "",
        ]
        for c in report["configs"]:
            built = "from cache" if c["table_from_cache"] else f"built in {c['table_seconds']} s"
            lines += [
                f"## {c['precision']} {c['shape']}",
                "",
                f"table: {c['table_file']} ({built}); "
                f"dense {c['table_dense_ms']} ms in the table vs {c['check_dense_ms']} ms in this check; predicted dense "
                f"{c['table_predicted_dense_ms']} ms; load after {c['load_average_after']}",
                "",
                "| # | hidden | heads per layer | FFN dims per layer | predicted ms | measured ms | error | predicted speedup | measured speedup | speedup error |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in c["rows"]:
                lines.append(
                    f"| {r['structure']} | {r.get('hidden', '')} | {r['heads']} | {r['ffn']} | {r['predicted_ms']} | "
                    f"{r['measured_ms']} | {r['error']:+.1%} | {r['predicted_speedup']} | {r['measured_speedup']} | {r['speedup_error']:+.1%} |"
                )
            lines += [
                "",
                f"max |error| {c['max_abs_error']:.1%}, max |speedup error| {c['max_abs_speedup_error']:.1%}",
                "",
            ]
    else:
        lines = head + [
            f"`compress prune --method struct --target-speedup X` ({a.max_steps} steps of batch {a.batch_size}, no "
            "teacher: the kept structure is what the budget allows at the end of the schedule, so a short run "
            "shows the speed; its accuracy means nothing), exported with shrink + "
            "fusion (+ int8), timed with compress bench against the dense fp32 export in the same rounds "
            f"({a.shape}, {a.threads} threads, {a.iterations} interleaved iterations; speedup = median per-round ratio).",
            "",
            "| deploy | requested | predicted | measured (median ratio) | error | measured (fastest runs) | heads per layer | FFN dims per layer |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in report["runs"]:
            lines.append(
                f"| {r['precision']} | {r['requested']:g}x | {r['predicted_speedup']:.2f}x | {r['measured_speedup']:.2f}x | "
                f"{r['error_vs_request']:+.1%} | {r['measured_speedup_fastest']:.2f}x | {r['heads']} | {r['ffn']} |"
            )
        lines += [
            "",
            f"dense fp32 p50 {report['dense_p50_ms']} ms; load average at the end {report['env_end']['load_average']}.",
            "",
            "Commands of the prune runs:",
            "",
        ] + [f"- `{r['command']}`" for r in report["runs"]]
    write_md(
        RESULTS / f"{a.out}.md",
        "Latency table: predicted vs measured" if a.part == "table" else "Speed targets hit",
        lines,
    )
    print((RESULTS / f"{a.out}.md").read_text())


if __name__ == "__main__":
    main()
