"""Is the speed real on other tools' graphs? The real all-MiniLM-L6-v2 exported as other projects
ship it (torch legacy exporter + sentence-transformers pooling; optimum -O2 with fused Attention /
SkipLayerNorm / BiasGelu), with half the heads and 60% of the FFN dims of every layer zeroed in the graph
(the shape of shrink.md's check), shrunk by `exporters.surgery.shrink`, checked equal, and timed against
the unshrunk graph with `compress bench` (interleaved runs, 2 threads).

    HF_HUB_OFFLINE=1 python benchmarks/graph_zoo_speed.py --real /tmp/zoo-real   # after: bash tools/zoo/make_zoo.sh real
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import zoo_check  # noqa: E402

GRAPHS = ["minilm_l6_st_legacy_op14", "minilm_l6_optimum_O2"]


def heads_of(i: int, n: int) -> list[int]:
    return list(range(1, n, 2))  # every other head of every layer


def dims_of(i: int, width: int) -> list[int]:
    return [j for j in range(width) if j % 5 < 3]  # 60% of the FFN dims


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", required=True, metavar="DIR")
    ap.add_argument("--iterations", type=int, default=30)
    args = ap.parse_args()
    command = f"HF_HUB_OFFLINE=1 python benchmarks/graph_zoo_speed.py --real {args.real} --iterations {args.iterations}"
    shrink = zoo_check.shrink_fn()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in GRAPHS:
            m = zoo_check.meta(name, Path(args.real))
            zeroed, n, _ = zoo_check.zero_structure(
                zoo_check.load(name, Path(args.real)), m["hidden"], m["num_heads"], heads_of=heads_of, dims_of=dims_of
            )
            small, report = shrink(zeroed)
            batches = zoo_check.feeds(zeroed)
            diff = zoo_check.max_diff(zoo_check.outputs(zeroed, batches), zoo_check.outputs(small, batches))
            removed = zoo_check.elements(zeroed) - zoo_check.elements(small)
            dense_p, small_p = tmp / f"{name}.zeroed.onnx", tmp / f"{name}.shrunk.onnx"
            onnx.save(zeroed, str(dense_p))
            onnx.save(small, str(small_p))
            out = tmp / f"{name}.bench.json"
            t0 = time.time()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "compress.cli",
                    "bench",
                    str(dense_p),
                    str(small_p),
                    "--labels",
                    "unshrunk",
                    "shrunk",
                    "--batch-sizes",
                    "1",
                    "32",
                    "--seq-lens",
                    "128",
                    "--iterations",
                    str(args.iterations),
                    "--json",
                    str(out),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            bench = json.loads(out.read_text())
            res = {
                "name": name,
                "exporter": m["exporter"],
                "max_abs_diff": diff,
                "zeroed": n,
                "removed": removed,
                "fused_before": report["fused_ops_before"],
                "fused_after": report["fused_ops_after"],
                "bench": bench["results"],
                "environment": bench.get("environment"),
                "bench_seconds": time.time() - t0,
            }
            results.append(res)
            speed = {(r["batch_size"], r["model"]): r for r in bench["results"]}
            cells = []
            for b in (1, 32):
                r = speed.get((b, "shrunk"))
                cells.append(f"{r['speedup']:.2f}x (p50 {r['p50_ms']:.1f} ms)" if r else "?")
            fused = (
                ", ".join(
                    f"{k} {report['fused_ops_before'][k]} -> {report['fused_ops_after'].get(k, 0)}"
                    for k in report["fused_ops_before"]
                )
                or "-"
            )
            rows.append(
                f"| `{name}` | {m['exporter']} | {diff:.2g} | {removed / n:.0%} | {fused} | {cells[0]} | {cells[1]} |"
            )
        env = bench.get("environment", {})
    md = [
        "# Shrink speed on other tools' graphs",
        "",
        f"Command: `{command}` (graphs: `bash tools/zoo/make_zoo.sh real`, real all-MiniLM-L6-v2 weights, not committed).",
        f"CPU: {env.get('cpu_model', '?')}; threads {env.get('threads', '?')}; onnxruntime {env.get('onnxruntime', '?')}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Shared 2-core machine: other jobs were running (load average "
        f"at the end of the last bench: {env.get('load_average_end', '?')}), so absolute times are inflated; both graphs of a row "
        "ran interleaved under the same load.",
        "",
        "Every layer: heads 1, 3, ..., 11 and 60% of the FFN dims zeroed in the graph (6 of 12 heads, 614 of 1536 dims "
        "kept: ideal ~2.3x by FLOPs as in shrink.md); shrunk; outputs compared with the unshrunk graph (3 padded batches); "
        "timed with `compress bench` against the unshrunk graph, seq 128. Speedup = median per-round ratio.",
        "",
        "| graph | exporter | max abs diff | zeroed params removed | fused ops before -> after | speedup b1 x 128 | speedup b32 x 128 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    out_dir = ROOT / "benchmarks" / "results"
    (out_dir / "graph_zoo_speed.md").write_text("\n".join(md))
    (out_dir / "graph_zoo_speed.json").write_text(
        json.dumps({"command": command, "results": results}, indent=1, default=str) + "\n"
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
