"""`compress shrink IN.onnx OUT.onnx`: cut pruned heads / FFN dims out of an exported graph.

Which structure is removed: --compression-json PATH, else IN's directory's compression.json, else
(or with --from-weights) the heads / dims whose output weights are all zero. The result is checked
against IN with ONNX Runtime on tokenized sentences (tokenizer next to IN) or random ids, and written
atomically; nothing is written when a check fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compress.core.errors import ArtifactError, InvalidConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shrink",
        help="remove pruned attention heads and FFN dims from an ONNX graph",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN.onnx", help="dense-shaped graph from `compress export --onnx`")
    p.add_argument("output", metavar="OUT.onnx", help="where to write the shrunk graph")
    p.add_argument("--compression-json", metavar="PATH", help="structure to keep (default: IN's directory's compression.json)")
    p.add_argument("--from-weights", action="store_true", help="ignore compression.json; remove structures whose weights are zero")
    p.add_argument("--head-size", type=int, help="attention head size (default: compression.json, config.json, or read from the graph)")
    p.add_argument("--optimize", action="store_true", help="then apply ONNX Runtime's transformer fusions (kept only if outputs match)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs output difference allowed (default 1e-4)")
    p.add_argument("--report", metavar="PATH", nargs="?", const="",
                   help="print per layer what was found and removed and the fused-op counts before/after; with PATH also write it as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.onnx if it exists")
    p.set_defaults(func=run)


def _structure(args) -> tuple[list | None, int | None, int | None, str]:
    """(kept, dense num_heads, head_size, where it came from)."""
    from compress.core.artifacts import read_compression_json

    if args.from_weights:
        return None, None, args.head_size, "zero weights (--from-weights)"
    path = Path(args.compression_json) if args.compression_json else Path(args.input).parent / "compression.json"
    if args.compression_json and not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    if not path.is_file():
        return None, None, args.head_size, "zero weights (no compression.json next to the input)"
    if path.name != "compression.json":
        raise InvalidConfigError(f"--compression-json must name a file called compression.json (its checksums are relative to its folder), got {path}")
    data = read_compression_json(path.parent, verify=True)
    if data.get("onnx", {}).get("shrunk") and path.parent.resolve() == Path(args.input).parent.resolve():
        raise ArtifactError(f"{args.input} is already shrunk (see {path}); shrink the dense export, or pass --from-weights")
    geo = data.get("geometry") or {}
    layers = data.get("layers")
    if not layers:
        raise ArtifactError(f"{path} has no per-layer `layers` structure; pass --from-weights to detect it from the graph")
    return layers, geo.get("num_heads"), args.head_size or geo.get("head_size"), str(path)


def _head_size_from_config(directory: Path) -> int | None:
    if not (directory / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        from compress.core.structure import geometry

        return geometry(AutoConfig.from_pretrained(str(directory))).head_size
    except Exception:  # unknown family or unreadable config: the graph itself is the next source
        return None


def run(args) -> int:
    from exporters.optimize import optimize
    from exporters.surgery.shrink import shrink_file

    kept, num_heads, head_size, source = _structure(args)
    head_size = head_size or _head_size_from_config(Path(args.input).parent)
    report = shrink_file(args.input, args.output, kept, num_heads, head_size, atol=args.atol, overwrite=args.overwrite,
                         optimize=optimize if args.optimize else None)
    report["structure_from"] = source
    if args.report:
        from compress.core.artifacts import write_json

        write_json(args.report, report)
    print_report(report, title=f"shrink {args.input} -> {args.output}", details=args.report is not None)
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
        note = ", ".join(n for n, flag in (("attention removed", r["attention_removed"]), ("FFN removed", r["ffn_removed"])) if flag)
        table.add_row(
            str(r["layer"]), f"{r['heads_after']}/{r['heads_before']}", f"{r['ffn_after']}/{r['ffn_before']}",
            f"{r['params_before']:,}", f"{r['params_after']:,}", note,
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
    before, after = report.get("fused_ops_before", {}), report.get("fused_ops_after", {})
    if before or after:
        console.print("fused / quantized ops before -> after: " + ", ".join(
            f"{k} {before.get(k, 0)} -> {after.get(k, 0)}" for k in sorted(set(before) | set(after))))
    if details:
        for r in report["layers"]:
            f = r.get("found", {})
            console.print(
                f"layer {r['layer']}: found {f.get('attention', '?')} ({f.get('attention_weights', '?')} weights), FFN "
                f"{f.get('ffn_activation', '?')} ({f.get('ffn_weights', '?')}), residual {f.get('residual', '?')}; removed heads "
                f"{r.get('heads_removed', [])}" + (" (whole attention block)" if r["attention_removed"] else "")
                + f", {r['ffn_before'] - r['ffn_after']} of {r['ffn_before']} FFN dims" + (" (whole FFN block)" if r["ffn_removed"] else "")
            )
    opt = report.get("optimize")
    if opt is not None:
        fused = ", ".join(f"{k} x{v}" for k, v in opt["fusions"].items()) or "none"
        status = "applied" if opt["applied"] else "NOT applied"
        console.print(f"ORT optimizer {status}; fusions: {fused}" + (f"; note: {opt['note']}" if opt["note"] else ""))

