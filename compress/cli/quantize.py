"""`compress quantize IN.onnx --output OUT`: int8 quantization with ONNX Runtime."""

from __future__ import annotations

import json
from types import SimpleNamespace

# The fields that say how quantize uses its data; the rest of QuantizeConfig is the quantization recipe.
DATA_FIELDS = ("calibration_file", "max_length", "max_eval_samples", "eval_batch_size")


def register(sub):
    from compress.cli.flags import add_config_args
    from compress.core.config import DataConfig, QuantizeConfig

    p = sub.add_parser(
        "quantize",
        help="int8-quantize an ONNX model (dynamic by default, or static with calibration data)",
        description="Quantize IN (a .onnx file or a directory holding model.onnx) to int8. OUT ending in .onnx "
        "is a file; anything else a directory that also receives config.json, the tokenizer and "
        "compression.json. With --task (or data files), dev accuracy is measured before and after.",
    )
    p.add_argument("model", help="model.onnx or a directory holding it")
    p.add_argument("--output", "-o", required=True, help="OUT.onnx, or an output directory")
    add_config_args(p, QuantizeConfig, skip=DATA_FIELDS)
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="= --no-per-channel")
    data = p.add_argument_group(
        "data (accuracy before/after; the training split or --calibration-file calibrates --mode static)"
    )
    add_config_args(data, DataConfig)
    add_config_args(data, QuantizeConfig, only=DATA_FIELDS)
    p.add_argument("--json", dest="json_path", help="also write the report as JSON to this path")
    p.set_defaults(func=run)


def run(a):
    from compress.api import quantize
    from compress.cli.flags import config_from_args
    from compress.core.artifacts import check_output_file, write_json
    from compress.core.config import DataConfig, QuantizeConfig

    config = config_from_args(QuantizeConfig, a)
    check_output_file(a.json_path, inputs=(a.model,))  # before the work, not after it
    result = quantize(a.model, a.output, config, data=config_from_args(DataConfig, a))
    _print(result.report)
    if a.json_path:
        write_json(a.json_path, result.report)
    return 0


def _print(report: dict) -> None:
    r = SimpleNamespace(**report)
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(f"wrote {r.output}")
    t = Table()
    t.add_column("")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_row("size (MB)", f"{r.size_before / 1e6:.1f}", f"{r.size_after / 1e6:.1f}")
    if r.metrics_before:
        t.add_row("eval batch size", str(r.eval_batch_size), str(r.eval_batch_size))
    # Fractions are shown as percentages; question answering's EM/F1 already are.
    scale = 1 if getattr(r, "task_type", None) == "question-answering" else 100
    for k, before in (r.metrics_before or {}).items():
        if isinstance(before, (int, float)):  # nested ones (entity F1 per type) are in --json
            t.add_row(k, f"{scale * before:.2f}", f"{scale * r.metrics_after[k]:.2f}")
    c.print(t)
    c.print(
        f"{r.config['mode']} int8 ({r.config['format'] if r.config['mode'] == 'static' else 'qoperator'}); "
        f"integer ops {json.dumps(r.op_counts)}; kept fp32: {', '.join(r.kept_fp32) or 'none'}; "
        f"max |logit diff| on random tokens {r.max_abs_diff:.3g}"
    )
    if r.fusion:
        c.print(f"fused: {json.dumps(r.fusion)}")
    for w in r.warnings:
        c.print(f"[yellow]warning:[/yellow] {w}")
