"""`compress quantize IN.onnx --output OUT`: int8 quantization with ONNX Runtime."""

from __future__ import annotations

import json
from types import SimpleNamespace


def register(sub):
    from compress.cli.flags import add_config_args
    from compress.ort.quantize import QuantizeConfig

    p = sub.add_parser(
        "quantize",
        help="int8-quantize an ONNX model (dynamic by default, or static with calibration data)",
        description="Quantize IN (a .onnx file or a directory holding model.onnx) to int8. OUT ending in .onnx "
        "is a file; anything else a directory that also receives config.json, the tokenizer and "
        "compression.json. With --task, dev accuracy is measured before and after.",
    )
    p.add_argument("model", help="model.onnx or a directory holding it")
    p.add_argument("--output", "-o", required=True, help="OUT.onnx, or an output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_config_args(p, QuantizeConfig)
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="= --no-per-channel")
    g = p.add_argument_group("data (accuracy before/after, and calibration for --mode static)")
    g.add_argument("--task", help="built-in task (sst2, mrpc): dev accuracy before/after; train split calibrates")
    g.add_argument(
        "--data-dir", help="local GLUE folder holding <task>/train.tsv, dev.tsv (default: $COMPRESS_DATA_DIR)"
    )
    g.add_argument("--calibration-file", help="calibration text: .txt (one sentence a line) or .tsv/.csv/.jsonl")
    g.add_argument("--text-column", default="sentence", help="text column of --calibration-file (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=128)
    g.add_argument("--max-eval-samples", type=int, help="limit the dev sentences used for accuracy")
    g.add_argument(
        "--batch-size",
        type=int,
        help="evaluation batch size (default 1 for dynamic int8, whose accuracy depends on the batch; 32 for static)",
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for checks and evaluation")
    p.add_argument("--json", dest="json_path", help="also write the report as JSON to this path")
    p.set_defaults(func=run)


def _tokenizer(model_path):
    from exporters.toolbox import load_tokenizer, resolve_onnx

    return load_tokenizer(resolve_onnx(model_path, check=False).parent, required=True)


def run(a):
    from compress.api import quantize
    from compress.cli.flags import config_from_args
    from compress.core.artifacts import write_json
    from compress.ort.quantize import QuantizeConfig, read_calibration_file, tokenized_texts
    from compress.training.data import label_names_of, load_task_data
    from exporters.toolbox import read_config, resolve_onnx

    config = config_from_args(QuantizeConfig, a)
    config.validate()  # fail on bad flags before loading any data
    from compress.core.artifacts import check_output_file
    from compress.core.errors import InvalidConfigError

    if a.max_length < 1:
        raise InvalidConfigError(f"--max-length {a.max_length} must be >= 1 (tokens kept per row, e.g. 128)")
    check_output_file(a.json_path, inputs=(a.model,))  # before the work, not after it
    task_data = calibration = None
    if a.task or a.calibration_file:
        tok = _tokenizer(a.model)
        if a.task:
            splits = ("train", "dev") if config.mode == "static" and not a.calibration_file else ("dev",)
            task_data = load_task_data(
                a.task,
                tok,
                data_dir=a.data_dir,
                splits=splits,
                max_length=a.max_length,
                max_train_samples=config.num_samples,
                max_eval_samples=a.max_eval_samples,
                label_names=label_names_of(read_config(resolve_onnx(a.model, check=False).parent)),
            )
            calibration = task_data.train
        if a.calibration_file:
            calibration = tokenized_texts(read_calibration_file(a.calibration_file, a.text_column), tok, a.max_length)
    result = quantize(
        a.model,
        a.output,
        config,
        calibration_data=calibration,
        task_data=task_data,
        overwrite=a.overwrite,
        threads=a.threads,
        eval_batch_size=a.batch_size,
    )
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
    for k in r.metrics_before or {}:
        t.add_row(k, f"{100 * r.metrics_before[k]:.2f}", f"{100 * r.metrics_after[k]:.2f}")
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
