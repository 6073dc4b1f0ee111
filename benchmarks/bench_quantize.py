"""int8 quantization of the SST-2 teacher: accuracy and ONNX Runtime CPU latency, fp32 vs int8.

    python benchmarks/bench_quantize.py [--model ../shared/models/minilm-l6-sst2]
        [--data-dir ../shared/data] [--work /tmp/bench-quantize] [--threads 2] [--iterations 20]

Steps: export the checkpoint (exporters.onnx_export: plain, and with ORT's transformer fusion),
quantize it with several recipes (compress.quantize), measure SST-2 dev accuracy of every .onnx
file (872 sentences, max length 128) and its latency at batch 32 x 128 and 1 x 128 with all models
interleaved run by run (compress.bench). Writes benchmarks/results/quantize.json and quantize.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.core.artifacts import write_json  # noqa: E402
from compress.core.config import BenchConfig, QuantizeConfig  # noqa: E402
from compress.ort.bench import onnx_runner, run_benchmark  # noqa: E402
from compress.ort.evaluate import evaluate_onnx  # noqa: E402
from compress.ort.quantize import quantize_onnx  # noqa: E402
from exporters.sessions import make_session  # noqa: E402


@dataclass
class Variant:
    name: str
    source: str  # "fp32" (plain export) or "fused" (export with ORT fusion)
    config: QuantizeConfig | None  # None: the fp32 file itself
    note: str = ""
    latency: bool = True  # accuracy-only variants run as fast as their sibling
    extra: dict = field(default_factory=dict)


VARIANTS = [
    Variant("fp32", "fp32", None, "exported graph (TorchScript exporter, eager attention)"),
    Variant(
        "fp32-fused",
        "fused",
        None,
        "ORT transformer fusion (Attention, BiasGelu; LayerNorm fusions off: exporters.optimize.fusion_options)",
    ),
    Variant("int8-dynamic", "fp32", QuantizeConfig(), "compress quantize defaults (classifier kept fp32)"),
    Variant("int8-dynamic-fused", "fused", QuantizeConfig(), "fused graph, then dynamic int8 (QAttention)"),
    Variant(
        "int8-dynamic-all-matmuls",
        "fp32",
        QuantizeConfig(const_b_only=False),
        "attention score MatMuls (activation x activation) quantized too, as optimum does",
    ),
    Variant(
        "int8-dynamic-fused-pertensor",
        "fused",
        QuantizeConfig(per_channel=False),
        "one weight scale per matrix (--per-tensor)",
    ),
    Variant("int8-dynamic-fused-all", "fused", QuantizeConfig(keep_fp32=()), "classifier quantized too", latency=False),
    Variant(
        "int8-dynamic-reduce-range",
        "fp32",
        QuantizeConfig(reduce_range=True),
        "7-bit weights (for CPUs without VNNI)",
        latency=False,
    ),
    Variant(
        "int8-static-qoperator",
        "fp32",
        QuantizeConfig(mode="static", format="qoperator"),
        "static, 128 train sentences, MinMax",
    ),
    Variant(
        "int8-static-qdq",
        "fp32",
        QuantizeConfig(mode="static", format="qdq"),
        "static QDQ, 128 train sentences, MinMax",
    ),
]


def export(model: str, work: Path) -> dict[str, Path]:
    from exporters.export import export_checkpoint

    out = {}
    for name, optimize in (("fp32", False), ("fused", True)):
        d = work / f"export-{name}"
        if not (d / "model.onnx").exists():
            export_checkpoint(model, d, overwrite=True, shrink=False, optimize=optimize)
        out[name] = d
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="../shared/models/minilm-l6-sst2")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--work", default="/tmp/bench-quantize", help="scratch folder for the .onnx files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=20, help="timed runs per model per grid point")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    p.add_argument("--only", nargs="+", help="variant names to run (default: all)")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument(
        "--reference",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="other tools' .onnx files timed and evaluated in the same rounds, e.g. "
        "optimum-fp32=/tmp/opt/fp32/model.onnx optimum-int8=/tmp/opt/int8/model_quantized.onnx",
    )
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
    command = "python " + " ".join(shlex.quote(x) for x in [str(Path(sys.argv[0]))] + sys.argv[1:])

    from transformers import AutoTokenizer

    from compress.training.data import load_task_data

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in VARIANTS if not a.only or v.name in a.only]
    t0 = time.time()
    sources = export(a.model, work)
    tok = AutoTokenizer.from_pretrained(a.model)
    task = load_task_data(
        "sst2", tok, data_dir=a.data_dir, splits=("train", "dev"), max_length=128, max_train_samples=128
    )
    print(f"exported in {time.time() - t0:.0f}s; dev {len(task.dev)} sentences", flush=True)

    rows = []
    for v in variants:
        src = sources[v.source]
        path = src / "model.onnx"
        info: dict = {"variant": v.name, "note": v.note, "source": v.source}
        if v.config is not None:
            out = work / v.name
            t = time.time()
            r = quantize_onnx(src, out, v.config, calibration_data=task.train, overwrite=True, threads=a.threads)
            info.update(
                quantize_seconds=round(time.time() - t, 1),
                op_counts=r.op_counts,
                kept_fp32=r.kept_fp32,
                config=r.config,
                warnings=r.warnings,
            )
            path = r.output
        info["path"] = str(path)
        info["size_mb"] = round(path.stat().st_size / 1e6, 2)
        rows.append(info)
    for ref in a.reference:
        name, _, path = ref.partition("=")
        if not path or not Path(path).is_file():
            p.error(f"--reference {ref!r}: expected NAME=PATH to an existing .onnx file")
        rows.append(
            {
                "variant": name,
                "note": f"reference: {path}",
                "source": "reference",
                "path": path,
                "size_mb": round(Path(path).stat().st_size / 1e6, 2),
            }
        )
        variants.append(Variant(name, "reference", None))

    # Latency before accuracy: the shared cores are quietest right after the (short) builds.
    timed = [r for r, v in zip(rows, variants) if v.latency]
    config = BenchConfig(
        batch_sizes=tuple(a.batch_sizes), seq_lens=(128,), threads=a.threads, warmup=3, iterations=a.iterations
    )
    runners = [onnx_runner(r["path"], config, r["variant"]) for r in timed]
    report = run_benchmark(runners, config, command=command, progress=lambda m: print("timing", m, flush=True))
    del runners  # free the sessions before evaluation

    if not a.skip_accuracy:
        for info in rows:
            session = make_session(info["path"], "cpu", a.threads)
            info["accuracy"] = round(100 * evaluate_onnx(info["path"], task, 32, session=session)["accuracy"], 2)
            print(
                json.dumps({"variant": info["variant"], "size_mb": info["size_mb"], "accuracy": info["accuracy"]}),
                flush=True,
            )

    fp32 = next((r for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        if fp32 and "accuracy" in r:
            r["accuracy_delta"] = round(r["accuracy"] - fp32["accuracy"], 2)
        for res in report["results"]:
            if res["model"] == r["variant"]:
                r[f"p50_ms_b{res['batch_size']}"] = res["p50_ms"]
                r[f"speedup_b{res['batch_size']}"] = res["speedup"]
                r[f"speedup_of_p50_b{res['batch_size']}"] = res["speedup_of_p50"]
    ceiling = gemm_ceiling(work, a.threads, a.iterations)
    print("int8 GEMM ceiling:", json.dumps(ceiling), flush=True)
    result = {
        "command": command,
        "model": a.model,
        "task": "sst2 dev (872 sentences, max_length 128)",
        "variants": rows,
        "latency": report,
        "gemm_ceiling": ceiling,
        "seconds": round(time.time() - t0),
    }
    out = Path(a.results)
    write_json(out / "quantize.json", result)
    (out / "quantize.md").write_text(markdown(result))
    print((out / "quantize.md").read_text())
    return 0


def gemm_ceiling(work: Path, threads: int, iterations: int, rows: int = 32 * 128) -> dict:
    """The most dynamic int8 can give on this CPU: one FFN-shaped MatMul + bias ([rows, 384] x [384, 1536]),
    fp32 against its dynamic int8 (s8 weights, per-tensor), interleaved run by run.

    The model's other work (attention scores, softmax, GELU, LayerNorm, residual adds) stays fp32 under
    dynamic quantization, so the whole-model int8 speedup sits below this kernel ratio.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((384, 1536)) * 0.05).astype(np.float32), "W")
    b = numpy_helper.from_array((rng.standard_normal(1536) * 0.05).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 384])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1536])],
        [w, b],
    )
    fp32 = work / "gemm-fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    # ORT's quantizer directly, with the weight type `compress quantize` uses: quantize_onnx validates its
    # output on token ids, which this one-node graph does not take.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = work / "gemm-int8.onnx"
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    x = {"x": rng.standard_normal((rows, 384)).astype(np.float32)}
    sessions = [make_session(p, "cpu", threads, check=False) for p in (fp32, int8)]
    for s in sessions:
        for _ in range(3):
            s.run(None, x)
    # Strict alternation, not compress.bench.time_grid_point: its rotating start runs the same GEMM twice in a
    # row every other round, and a repeat with its 2.4 MB weights still in cache measured fp32 at 45 instead
    # of 53 ms here, which no GEMM inside a model sees.
    times = [[], []]
    for _ in range(iterations * 5):  # one GEMM is ~1/50 of a model run: more rounds for the same noise
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, x)
            times[i].append(time.perf_counter() - t)
    ratio = float(np.median(np.asarray(times[0]) / np.asarray(times[1])))
    return {
        "shape": f"[{rows}, 384] x [384, 1536] + bias",
        "p50_ms_fp32": round(1e3 * float(np.median(times[0])), 2),
        "p50_ms_int8": round(1e3 * float(np.median(times[1])), 2),
        "speedup": round(ratio, 2),
    }


def markdown(result: dict) -> str:
    env = result["latency"]["environment"]
    cfg = result["latency"]["config"]
    bs = cfg["batch_sizes"]
    lines = [
        "# int8 quantization of the SST-2 teacher (MiniLM-L6, BERT)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"ONNX Runtime {env['onnxruntime']} CPU EP, {env['threads']} threads, {env['cpu_model']} "
        f"({', '.join(env['cpu_flags'])}); load average {env.get('load_average_start')} at start, "
        f"{env.get('load_average_end')} at end (the 2 cores are shared: timings are medians of "
        f"{cfg['iterations']} runs, all models interleaved run by run). Accuracy: {result['task']}.",
        "",
        "| variant | size MB | accuracy % | delta | "
        + " | ".join(f"p50 ms {b}x128 | speedup {b}x128" for b in bs)
        + " | note |",
        "|---|---:|---:|---:|" + "---:|---:|" * len(bs) + "---|",
    ]
    for r in result["variants"]:
        cells = [
            r["variant"],
            f"{r['size_mb']:.1f}",
            f"{r.get('accuracy', float('nan')):.2f}",
            f"{r.get('accuracy_delta', 0):+.2f}",
        ]
        for b in bs:
            p50 = r.get(f"p50_ms_b{b}")
            cells += [f"{p50:.1f}" if p50 else "—", f"{r[f'speedup_b{b}']:.2f}x" if p50 else "—"]
        lines.append("| " + " | ".join(cells + [r["note"]]) + " |")
    lines += [
        "",
        "Speedup: relative to `fp32` (the first row) at the same batch size, the median over the "
        "rounds of the per-round time ratio (each round runs every model once, back to back), which "
        "cancels load that comes and goes; the ratio of the p50 columns is in quantize.json "
        "(`speedup_of_p50_b*`).",
        "",
    ]
    lines += findings(result, bs)
    return "\n".join(lines)


def findings(result: dict, bs: list[int]) -> list[str]:
    """Conclusions computed from this run's numbers (so they cannot drift from the table)."""
    v = {r["variant"]: r for r in result["variants"]}
    out = ["## Findings", ""]
    d = v.get("int8-dynamic", {})
    if "accuracy_delta" in d and "speedup_b32" in d:
        ok_acc, ok_speed = d["accuracy_delta"] >= -0.4, d["speedup_b32"] >= 2.2
        out.append(
            f"- Target (<= 0.4 points lost, >= 2.2x at 32x128) for the default recipe `int8-dynamic`: "
            f"{d['accuracy_delta']:+.2f} points ({'met' if ok_acc else 'missed'}), {d['speedup_b32']:.2f}x "
            f"({'met' if ok_speed else 'missed'}); at 1x128 {d.get('speedup_b1', float('nan')):.2f}x."
        )
    c = result.get("gemm_ceiling")
    if c:
        out.append(
            f"- Kernel ceiling on this CPU: one FFN MatMul {c['shape']} runs {c['speedup']:.2f}x faster in "
            f"dynamic int8 than in fp32 ({c['p50_ms_fp32']:.1f} -> {c['p50_ms_int8']:.1f} ms, same rounds). "
            "Dynamic int8 speeds up only the weight MatMuls, so the whole model cannot beat this ratio."
        )
    f = v.get("int8-dynamic-fused", {})
    if "speedup_b32" in f and "speedup_b32" in d:
        out.append(
            f"- Fusing first (QAttention): {f['speedup_b32']:.2f}x vs "
            f"{d['speedup_b32']:.2f}x unfused at 32x128, {f.get('speedup_b1', 0):.2f}x vs {d.get('speedup_b1', 0):.2f}x "
            f"at 1x128, accuracy {f.get('accuracy_delta', 0):+.2f}. "
            + (
                "The fused graph is slower on this CPU (ORT already fuses the unfused int8 graph at load into "
                "DynamicQuantizeMatMul, Gelu), so `compress quantize` fuses only on request "
                "(--optimize)."
                if f["speedup_b32"] < d["speedup_b32"]
                else "Here fusion pays: consider --optimize."
            )
        )
    a, fa = v.get("int8-dynamic-fused-all", {}), v.get("int8-dynamic-fused", {})
    if "accuracy" in a and "accuracy" in fa:
        out.append(
            f"- Classifier quantized too: {a['accuracy']:.2f}% vs {fa['accuracy']:.2f}% with it kept fp32; "
            "a 384x2 MatMul costs nothing, so keeping it fp32 stays the default as a guard."
        )
    r = v.get("int8-dynamic-reduce-range", {})
    if "accuracy_delta" in r:
        vnni = any("vnni" in f for f in result["latency"]["environment"].get("cpu_flags", []))
        out.append(
            f"- reduce_range (7-bit weights, per-channel): {r['accuracy_delta']:+.2f} points. It exists for CPUs without "
            f"VNNI, where u8*s8 pair sums can saturate; this CPU {'has' if vnni else 'has no'} VNNI."
        )
    sq, sd = v.get("int8-static-qoperator", {}), v.get("int8-static-qdq", {})
    if "accuracy_delta" in sq and "accuracy_delta" in sd:
        out.append(
            f"- Static int8 (MinMax, 128 train sentences): {sq['accuracy_delta']:+.2f} (QOperator), "
            f"{sd['accuracy_delta']:+.2f} (QDQ) at {sq.get('speedup_b32', 0):.2f}x / {sd.get('speedup_b32', 0):.2f}x; "
            "fixed per-tensor activation ranges fit BERT's wide activations worse than per-batch dynamic ones."
        )
    of, oi = v.get("optimum-fp32", {}), v.get("optimum-int8", {})
    if "speedup_b32" in of and "speedup_b32" in oi and "p50_ms_b32" in d:
        out.append(
            f"- optimum (same rounds, its own export and its `--avx512_vnni` dynamic recipe): int8 "
            f"{oi['speedup_b32'] / of['speedup_b32']:.2f}x over optimum's fp32 export at 32x128 "
            f"({oi.get('accuracy_delta', float('nan')):+.2f} points vs our fp32); its fp32 export runs at "
            f"{of['speedup_b32']:.2f}x of ours. Absolute p50 at 32x128: optimum int8 {oi['p50_ms_b32']:.1f} ms, "
            f"compress int8 {d['p50_ms_b32']:.1f} ms; at 1x128: {oi.get('p50_ms_b1', float('nan')):.1f} vs "
            f"{d.get('p50_ms_b1', float('nan')):.1f} ms."
        )
    pt = v.get("int8-dynamic-fused-pertensor", {})
    if "accuracy_delta" in pt and "accuracy_delta" in f:
        out.append(
            f"- Per-tensor weight scales (--per-tensor) on the fused graph: {pt['accuracy_delta']:+.2f} points and "
            f"{pt.get('speedup_b32', 0):.2f}x at 32x128, vs per-channel (the default) {f['accuracy_delta']:+.2f} and "
            f"{f.get('speedup_b32', 0):.2f}x."
        )
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())
