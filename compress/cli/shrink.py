"""`compress shrink IN.onnx OUT.onnx`: cut pruned heads / FFN dims out of an exported graph.

Which structure is removed: --compression-json PATH, else IN's directory's compression.json, else
(or with --from-weights) the heads / dims whose output weights are all zero. The result is checked
against IN with ONNX Runtime on tokenized sentences (tokenizer next to IN) or random ids, and written
atomically; nothing is written when a check fails.

Pruned hidden dims (the residual stream's width) are cut too (--hidden auto): the ones compression.json's
`hidden` section lists, else (or with --from-weights) those whose LayerNorm gammas / betas and embedding
columns are all zero. That cut makes the LayerNorms normalise over the kept dims, which is what the
hidden-pruned model computes and not what IN computes, so only the head / FFN cut is compared with IN.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from compress.cli.flags import add_config_args
    from compress.core.config import ShrinkConfig

    p = subparsers.add_parser(
        "shrink",
        help="remove pruned attention heads and FFN dims from an ONNX graph",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN.onnx", help="dense-shaped graph from `compress export --onnx`")
    p.add_argument("output", metavar="OUT.onnx", help="where to write the shrunk graph")
    add_config_args(p, ShrinkConfig)
    p.add_argument(
        "--report",
        metavar="PATH",
        nargs="?",
        const="",
        help="print per layer what was found and removed and the fused-op counts before/after; with PATH also write it as JSON",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from compress.api import shrink
    from compress.cli.flags import config_from_args
    from compress.core.artifacts import check_output_file
    from compress.core.config import ShrinkConfig

    if args.report:  # a path to write the JSON to (bare --report only prints): checked before the surgery
        check_output_file(args.report, inputs=(args.input,))
    result = shrink(args.input, args.output, config_from_args(ShrinkConfig, args))
    if args.report:
        from compress.core.artifacts import write_json

        write_json(args.report, result.report)
    print_report(result.report, title=f"shrink {args.input} -> {args.output}", details=args.report is not None)
    return 0


def print_report(report: dict, title: str, details: bool = False) -> None:
    """Per-layer table + totals, via rich (stdout); with details, what was matched in each layer."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title, title_justify="left")
    for col in ("layer", "heads", "FFN dims", "params before", "params after", "note"):
        table.add_column(col, justify="right" if col not in ("note",) else "left")
    for r in report["layers"]:
        note = ", ".join(
            n for n, flag in (("attention removed", r["attention_removed"]), ("FFN removed", r["ffn_removed"])) if flag
        )
        table.add_row(
            str(r["layer"]),
            f"{r['heads_after']}/{r['heads_before']}",
            f"{r['ffn_after']}/{r['ffn_before']}",
            f"{r['params_before']:,}",
            f"{r['params_after']:,}",
            note,
        )
    before = sum(r["params_before"] for r in report["layers"])
    after = sum(r["params_after"] for r in report["layers"])
    table.add_section()
    table.add_row("all", "", "", f"{before:,}", f"{after:,}", f"encoder linears: {after / max(before, 1):.1%} kept")
    console.print(table)
    console.print(
        f"structure from {report.get('structure_from', report['source'])}; graph parameters "
        f"{report['params_before']:,} -> {report['params_after']:,}; nodes {report['nodes_before']} -> {report['nodes_after']}; "
        f"max abs diff vs input {report.get('max_abs_diff', float('nan')):.2g}"
    )
    hidden = report.get("hidden")
    if hidden is not None and "hidden_before" not in hidden:
        console.print(hidden["note"])
    elif hidden is not None:
        removed = hidden["params_before"] - hidden["params_after"]
        console.print(
            f"hidden size {hidden['hidden_before']} -> {hidden['hidden_after']} (from {hidden['source']}); "
            f"{removed:,} parameters removed by the hidden cut"
            + (f"; note: {hidden['note']}" if hidden.get("note") else "")
        )
    before, after = report.get("fused_ops_before", {}), report.get("fused_ops_after", {})
    if before or after:
        console.print(
            "fused / quantized ops before -> after: "
            + ", ".join(f"{k} {before.get(k, 0)} -> {after.get(k, 0)}" for k in sorted(set(before) | set(after)))
        )
    if details:
        for r in report["layers"]:
            f = r.get("found", {})
            console.print(
                f"layer {r['layer']}: found {f.get('attention', '?')} ({f.get('attention_weights', '?')} weights), FFN "
                f"{f.get('ffn_activation', '?')} ({f.get('ffn_weights', '?')}), residual {f.get('residual', '?')}; removed heads "
                f"{r.get('heads_removed', [])}"
                + (" (whole attention block)" if r["attention_removed"] else "")
                + f", {r['ffn_before'] - r['ffn_after']} of {r['ffn_before']} FFN dims"
                + (" (whole FFN block)" if r["ffn_removed"] else "")
            )
    opt = report.get("optimize")
    if opt is not None:
        fused = ", ".join(f"{k} x{v}" for k, v in opt["fusions"].items()) or "none"
        status = "applied" if opt["applied"] else "NOT applied"
        console.print(f"ORT optimizer {status}; fusions: {fused}" + (f"; note: {opt['note']}" if opt["note"] else ""))
