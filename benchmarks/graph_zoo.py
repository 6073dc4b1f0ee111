"""The graph-zoo table: runs tests/zoo_check.py's check on every graph of tests/zoo/ and writes
benchmarks/results/graph_zoo.md (+ graph_zoo.json) with the exact command.

    HF_HUB_OFFLINE=1 python benchmarks/graph_zoo.py [--real DIR]

--real DIR adds the graphs of DIR (e.g. the real all-MiniLM-L6-v2 export of tools/zoo/export_real_minilm.py,
too large to commit) as extra rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import zoo_check  # noqa: E402

COMMAND = "HF_HUB_OFFLINE=1 python benchmarks/graph_zoo.py"
# Exporters the zoo should cover that could not be run here, with why (listed, not faked).
NOT_GENERATED = [
    (
        "torch 2.3 legacy exporter",
        "not generated: no torch 2.3 CPU wheel on this machine (older torch from the "
        "registry is a multi-GB CUDA build); torch 2.13's legacy exporter (dynamo=False) with transformers 4.46.3 stands in",
    ),
    (
        "`optimum-cli onnxruntime quantize --avx2` of an -O2 graph",
        "not generated: it fails with onnxruntime 1.23.2 "
        "(RuntimeError: Unable to find data type for weight_name=...); `bert_optimum_O2_int8_dynamic` (QAttention) was made "
        "with quantize_dynamic(extra_options={'DefaultTensorType': FLOAT}), as that error message suggests",
    ),
]


def fmt_counts(c: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-"


def cell(rec: dict) -> str:
    if rec["status"] != "pass":
        return f"**{rec['status']}**: {rec['message']}"
    if rec["side"] == "input" and rec["removed"] <= 0:
        what = "structure kept (exact)"
    else:
        what = f"removed {rec['removed_fraction']:.0%} of {rec['zeroed']} zeroed params"
    text = f"**pass**: max diff {rec['max_abs_diff']:.2g} (tol {rec['tolerance']:.2g}), {what}"
    if rec["side"] == "both" and (rec["fused_before"] or rec["fused_after"]):
        text += f"; ops {fmt_counts(rec['fused_before'])} -> {fmt_counts(rec['fused_after'])}"
    return text


def main():
    import onnxruntime

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", metavar="DIR", help="also check the graphs in DIR (not committed, e.g. real weights)")
    args = ap.parse_args()
    command = COMMAND + (f" --real {args.real}" if args.real else "")
    todo = [(name, zoo_check.ZOO) for name in zoo_check.entries()]
    if args.real:
        todo += [(name, Path(args.real)) for name in zoo_check.entries(Path(args.real))]
    rows, recs = [], []
    t0 = time.time()
    for name, root in todo:
        cells = []
        for side in ("both", "input"):
            try:
                rec = zoo_check.check(name, side, root)
            except Exception as e:  # a crash is a result too: reported, not hidden
                rec = {
                    "name": name,
                    "side": side,
                    "meta": zoo_check.meta(name, root),
                    "status": "crash",
                    "message": f"{type(e).__name__}: {e}",
                }
            if root != zoo_check.ZOO:
                rec["real"] = str(root)
            recs.append(rec)
            cells.append(cell(rec))
        m = recs[-1]["meta"]
        v = m["versions"]
        ver = "; ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "optimum-onnx", "onnxruntime") if k in v)
        fused = ", ".join(m["fused"]) if m["fused"] else "-"
        label = f"`{name}`" + (" (real weights, not committed)" if root != zoo_check.ZOO else "")
        rows.append(
            f"| {label} | {m['model_type']} | {m['exporter']} | {ver} | {m['opset']} | {fused} | {m['int8'] or '-'} | {cells[0]} | {cells[1]} |"
        )
    passed = {side: sum(r["status"] == "pass" for r in recs if r["side"] == side) for side in ("both", "input")}
    total = len(recs) // 2
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    md = [
        "# Graph zoo: shrink on real exporters' graphs",
        "",
        f"Command: `{command}` (from the repository root; graphs made by `bash tools/zoo/make_zoo.sh`"
        + (f", `{args.real}` by `bash tools/zoo/make_zoo.sh real`)." if args.real else ")."),
        f"Machine: {platform.machine()}, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.time() - t0:.0f} s.",
        "",
        "Check per graph (tests/zoo_check.py): heads {1, 3} of layer 0 and all heads of layer 1 are zeroed (Q/K/V "
        "columns, O rows), and every 3rd FFN dim of layer 0 and the first quarter of layer 1 (W1 columns, W2 rows), "
        "directly in the graph's initializers (int8: set to the zero point); biases stay. The graph is shrunk and "
        "compared with the unshrunk zeroed graph on 3 padded batches within 1e-4 (an int8 graph against the unshrunk "
        "int8 graph, not its fp32 source). Pass also needs >= 95% of the zeroed elements removed and the "
        "per-layer kept heads/dims to match. Second result column: the same heads / dims zeroed only on the input side "
        "(Q/K/V and W1 columns), so each still adds a constant (V bias through softmax and W_O, act(b1) through W2): fp32 "
        "graphs must fold it into the output bias and remove the structure; int8 graphs may keep it (the activation "
        "quantization in between would make the fold inexact) but must stay equal.",
        "",
        f"**Output-side zeroing: {passed['both']} of {total} graphs pass; input-side zeroing: {passed['input']} of {total}.**",
        "",
        "| graph | model | exporter | versions | opset | fused | int8 | output-side zeroed | input-side zeroed (bias fold) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Not generated:",
        "",
        *[f"- {what}: {why}" for what, why in NOT_GENERATED],
        "",
    ]
    (out / "graph_zoo.md").write_text("\n".join(md))
    (out / "graph_zoo.json").write_text(json.dumps({"command": command, "results": recs}, indent=1, default=str) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
