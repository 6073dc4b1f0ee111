"""`compress bench MODEL [MODEL ...]`: interleaved ONNX Runtime latency over a batch x length grid, or
with --data on a task's dev set or a data file (compress.ort.bench_data)."""

from __future__ import annotations


def register(sub):
    from compress.cli.flags import add_config_args
    from compress.core.config import BenchConfig, DataConfig

    p = sub.add_parser(
        "bench",
        help="ONNX Runtime latency (p50/p90/p99, throughput, speedup vs the first model)",
        description="Benchmark ONNX models (files or directories holding model.onnx) on random token ids over "
        "a batch x length grid, or with --data on real text (each batch padded to its own longest row). "
        "Models are interleaved run by run; speedup is relative to the first model.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model.onnx files or directories holding one")
    add_config_args(p, BenchConfig)
    add_config_args(
        p, DataConfig, only=("task_type", "data_dir", "text_column", "text_pair_column"), title="data (with --data)"
    )
    p.add_argument("--labels", nargs="+", help="names for the models in the table (default: from the paths)")
    p.add_argument("--torch", metavar="CHECKPOINT", help="also time this PyTorch checkpoint (fp32 eager), last")
    p.add_argument("--json", dest="json_path", help="write the report (results, versions, CPU, command) as JSON")
    p.add_argument("--csv", dest="csv_path", help="write the results as CSV")
    p.set_defaults(func=run)


def run(a):
    from rich.console import Console

    from compress.api import benchmark
    from compress.cli.flags import config_from_args
    from compress.core.artifacts import check_output_file
    from compress.core.config import BenchConfig, DataConfig
    from compress.ort import bench, bench_data

    for path in (a.json_path, a.csv_path):  # before the timing, not after it
        check_output_file(path, inputs=tuple(a.models))
    err = Console(stderr=True)
    from compress.cli.flags import given_fields
    from compress.task_onnx import default_seq_lens

    # Without --seq-lens: the graphs' task's length (question answering: its 384-token windows).
    given = given_fields(BenchConfig, a)
    lengths = {} if "seq_lens" in given or given.get("data") else {"seq_lens": default_seq_lens(a.models)}
    config = config_from_args(BenchConfig, a, **lengths)
    result = benchmark(
        a.models,
        config,
        data=config_from_args(DataConfig, a) if config.data else None,
        labels=a.labels,
        torch_checkpoint=a.torch,
        command=a.command_line,
        progress=lambda msg: err.print(f"[dim]timing {msg}[/dim]"),
    )
    out = bench_data if result.report["schema"] == bench_data.SCHEMA else bench
    out.print_table(result.report)
    if a.json_path:
        bench.write_report_json(result.report, a.json_path)
    if a.csv_path:
        out.write_csv(result.report, a.csv_path)
    return 0
