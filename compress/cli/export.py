"""`compress export --onnx CHECKPOINT --output DIR`: export a (pruned) checkpoint to ONNX.

DIR receives model.onnx, config.json, the tokenizer files and compression.json (when the checkpoint
has one; its checksums are verified first and rewritten for DIR). The graph is validated against
PyTorch on tokenized sentences at several batch sizes and lengths; nothing is written if it differs
by more than --atol. A pruned checkpoint (compression.json, or all-zero heads / FFN dims) is shrunk
by default: DIR/model.onnx is the graph with the pruned heads and FFN dims cut out (each step is
checked against the previous one and, at the end, against PyTorch), and what was removed is printed.
--no-shrink keeps the full graph.
"""

from __future__ import annotations

import argparse

from compress.core.errors import InvalidConfigError


def register(subparsers) -> None:
    from exporters.spec import DEFAULT_ATOL, DEFAULT_OPSET, EXPORTER_NAMES, TASKS

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (validated), optionally shrunk and fused",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--onnx", metavar="CHECKPOINT", required=True, help="Hugging Face checkpoint directory to export to ONNX")
    p.add_argument("--output", "-o", metavar="DIR", required=True, help="output directory (must be new or empty unless --overwrite)")
    p.add_argument("--task", choices=sorted(TASKS), help="which head to export (default: from the checkpoint's architecture)")
    p.add_argument("--no-shrink", dest="shrink", action="store_const", const=False, default=None,
                   help="keep the full graph (default: remove pruned heads / FFN dims whenever the checkpoint has any)")
    p.add_argument("--shrink", dest="shrink", action="store_const", const=True,
                   help="run the surgery even when no dead structure is found (shrinking pruned checkpoints is the default)")
    p.add_argument("--optimize", action="store_true", help="apply ONNX Runtime transformer fusions (kept only if outputs match)")
    p.add_argument("--exporter", choices=EXPORTER_NAMES, default="torchscript",
                   help="torch.onnx exporter (default torchscript: fast, and ORT can fuse its attention; the other is tried if it fails)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; dynamo uses at least 18)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"max abs output difference allowed (default {DEFAULT_ATOL:g})")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the comparison with PyTorch (not recommended)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from exporters.export import export_checkpoint

    from compress.cli.shrink import print_report

    if args.atol <= 0:
        raise InvalidConfigError("--atol must be positive")
    result = export_checkpoint(
        args.onnx, args.output, task=args.task, overwrite=args.overwrite, opset=args.opset, validate=args.validate,
        atol=args.atol, exporter=args.exporter, shrink=args.shrink, optimize=args.optimize,
    )
    console = Console()
    v = result.validation
    console.print(
        f"exported {args.onnx} -> {result.path} (task {result.task}, {result.exporter} exporter, opset {result.opset}); "
        f"inputs {', '.join(result.inputs)}; outputs {', '.join(result.outputs)}"
    )
    if v:
        console.print(f"validated against PyTorch on batches {v['batches']}: max abs diff {v['max_abs_diff']:.2g} (atol {v['atol']:g})"
                      + (f"; final graph {v['final_max_abs_diff']:.2g}" if "final_max_abs_diff" in v else ""))
    if result.shrink is not None:
        report = dict(result.shrink, structure_from=result.shrink["source"])
        if result.optimize is not None:
            report["optimize"] = result.optimize
        print_report(report, title=f"shrink {result.path.name}")
    elif result.optimize is not None:
        o = result.optimize
        console.print(f"ORT optimizer {'applied' if o['applied'] else 'NOT applied'}; fusions: "
                      f"{', '.join(f'{k} x{n}' for k, n in o['fusions'].items()) or 'none'}" + (f"; note: {o['note']}" if o["note"] else ""))
    for note in result.notes:
        console.print(f"note: {note}")
    return 0
