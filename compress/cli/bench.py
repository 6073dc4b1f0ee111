"""`compress bench MODEL [MODEL ...]`: interleaved ONNX Runtime latency over a batch x length grid."""

from __future__ import annotations


def register(sub):
    p = sub.add_parser(
        "bench",
        help="ONNX Runtime latency (p50/p90/p99, throughput, speedup vs the first model)",
        description="Benchmark ONNX models (files or directories holding model.onnx) on random token ids. "
        "Models are interleaved run by run; speedup is relative to the first model.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model.onnx files or directories holding one")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="N")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128], metavar="N")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                   help="execution provider; cuda uses IO binding and needs onnxruntime-gpu")
    p.add_argument("--threads", type=int, default=2,
                   help="intra-op threads, recorded in the report (default: %(default)s; 0 = all cores)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per model and grid point")
    p.add_argument("--iterations", type=int, default=20, help="timed runs per model and grid point")
    p.add_argument("--labels", nargs="+", help="names for the models in the table (default: from the paths)")
    p.add_argument("--torch", metavar="CHECKPOINT", help="also time this PyTorch checkpoint (fp32 eager), last")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", help="write the report (results, versions, CPU, command) as JSON")
    p.add_argument("--csv", dest="csv_path", help="write the results as CSV")
    p.set_defaults(func=run)


def run(a):
    from rich.console import Console

    from compress.ort.bench import BenchConfig, onnx_runner, print_table, run_benchmark, torch_runner, write_csv, write_report_json
    from compress.core.errors import InvalidConfigError

    config = BenchConfig(batch_sizes=tuple(a.batch_sizes), seq_lens=tuple(a.seq_lens), provider=a.provider,
                         threads=a.threads or None, warmup=a.warmup, iterations=a.iterations, seed=a.seed)
    config.validate()
    if a.labels and len(a.labels) != len(a.models):
        raise InvalidConfigError(f"--labels has {len(a.labels)} names for {len(a.models)} models")
    labels = a.labels or [None] * len(a.models)
    runners = [onnx_runner(m, config, lab) for m, lab in zip(a.models, labels)]
    if a.torch:
        runners.append(torch_runner(a.torch, config))
    err = Console(stderr=True)
    report = run_benchmark(runners, config, command=a.command_line, progress=lambda msg: err.print(f"[dim]timing {msg}[/dim]"))
    print_table(report)
    if a.json_path:
        write_report_json(report, a.json_path)
    if a.csv_path:
        write_csv(report, a.csv_path)
    return 0
