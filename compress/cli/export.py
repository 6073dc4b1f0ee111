"""`compress export --onnx CHECKPOINT --output DIR`: export a (pruned) checkpoint to ONNX.

DIR receives model.onnx, config.json, the tokenizer files and compression.json (when the checkpoint
has one; its checksums are verified first and rewritten for DIR). The graph is validated against
PyTorch on tokenized sentences at several batch sizes and lengths; nothing is written if it differs
by more than --atol. A pruned checkpoint (compression.json, or all-zero heads / FFN dims) is shrunk
by default: DIR/model.onnx is the graph with the pruned heads and FFN dims cut out (each step is
checked against the previous one and, at the end, against PyTorch), and what was removed is printed.
--no-shrink keeps the full graph; --shrink runs the surgery even when no dead structure is found.
An embedding model (compression.json task_type embedding, or a sentence-transformers folder) exports
as one graph with last_hidden_state and sentence_embedding (pooling and normalisation inside) into a
sentence-transformers folder: DIR loads with SentenceTransformer(DIR), the graph is DIR/onnx/model.onnx.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from compress.cli.flags import add_config_args
    from compress.core.config import ExportConfig
    from exporters.spec import TASKS

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (validated), optionally shrunk and fused",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--onnx", metavar="CHECKPOINT", required=True, help="Hugging Face checkpoint directory to export to ONNX"
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        required=True,
        help="output directory (must be new or empty unless --overwrite)",
    )
    add_config_args(p, ExportConfig, choices={"task": sorted(TASKS)})
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console

    from compress.api import export_onnx
    from compress.cli.flags import config_from_args
    from compress.cli.shrink import print_report
    from compress.core.config import ExportConfig

    result = export_onnx(args.onnx, args.output, config_from_args(ExportConfig, args))
    r = result.report
    console = Console()
    v = r["validation"]
    console.print(
        f"exported {args.onnx} -> {result.path} (task {r['task']}, {r['exporter']} exporter, opset {r['opset']}); "
        f"inputs {', '.join(r['inputs'])}; outputs {', '.join(r['outputs'])}"
    )
    if v:
        console.print(
            f"validated against PyTorch on batches {v['batches']}: max abs diff {v['max_abs_diff']:.2g} (atol {v['atol']:g})"
            + (f"; final graph {v['final_max_abs_diff']:.2g}" if "final_max_abs_diff" in v else "")
        )
    if r["shrink"] is not None:
        report = dict(r["shrink"], structure_from=r["shrink"]["source"])
        if r["optimize"] is not None:
            report["optimize"] = r["optimize"]
        print_report(report, title=f"shrink {result.path.name}")
    elif r["optimize"] is not None:
        o = r["optimize"]
        console.print(
            f"ORT optimizer {'applied' if o['applied'] else 'NOT applied'}; fusions: "
            f"{', '.join(f'{k} x{n}' for k, n in o['fusions'].items()) or 'none'}"
            + (f"; note: {o['note']}" if o["note"] else "")
        )
    for note in r["notes"]:
        console.print(f"note: {note}")
    return 0
