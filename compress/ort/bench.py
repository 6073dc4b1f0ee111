"""Latency benchmark of ONNX models (and optionally a PyTorch baseline) with ONNX Runtime.

Method, chosen so that numbers from a shared, noisy machine can still be compared:
- every model runs the same random token ids for a grid point (attention_mask all ones: latency does
  not depend on the token values);
- models are timed in interleaved rounds with a rotating start and ORT's threads settled before each
  timed run (compress.ort.timing, the harness the latency tables use too);
- throughput comes from the median (p50); speedup is the median over rounds of the per-round
  ratio (first model's time / this model's time, runs adjacent in time); p90/p99 show the spread;
- why settle: measured on MiniLM-L6, 2 threads, 2 cores (benchmarks/results/bench_spinning.md), without
  settling the dense graph at 1x128 took 29.6 ms interleaved with three other sessions vs 7.8 ms alone
  (7.9 ms settled), and a 3x-pruned graph's speedup at 32x128 read 2.75x vs 3.31x alone (3.36x settled).
  Turning spinning off (--no-spinning) is fair too, but then every op waits for a sleeping thread to
  wake, which a deployed model does not: the int8 dense graph at 1x128 read 4.4 ms that way vs 3.2 ms
  deployed alone;
- thread count, versions, CPU model and the command line are recorded with the numbers.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from compress.core.artifacts import atomic_file, load_pretrained, write_json
from compress.core.config import BenchConfig
from compress.core.errors import CompressError, InvalidConfigError
from compress.ort.timing import interleaved_rounds
from exporters.files import first_line, resolve_onnx
from exporters.inputs import graph_inputs, random_feeds, vocab_size
from exporters.sessions import make_session

SCHEMA = "compress.bench/1"


@dataclass
class Runner:
    """One model under test. `prepare(batch, seq)` builds inputs and returns a zero-argument
    callable doing one complete inference (GPU work finished when it returns)."""

    label: str
    path: str
    kind: str  # "onnx" | "torch"
    size_bytes: int
    vocab: int
    prepare: Callable[[int, int], Callable[[], None]] = field(repr=False)


def _low_id(vocab: int) -> int:
    """Token ids are drawn away from the special ids at the bottom of BERT-like vocabularies."""
    return min(1000, vocab // 2)


def onnx_runner(path: str, config: BenchConfig, label: str | None = None) -> Runner:
    import onnx
    import onnxruntime as ort

    model_path = resolve_onnx(path)
    session = make_session(model_path, config.provider, config.threads, check=False, spinning=config.spinning)
    graph = onnx.load(str(model_path), load_external_data=False)
    inputs = graph_inputs(graph)
    vocab = vocab_size(graph, model_path.parent)
    del graph

    def prepare(batch: int, seq: int) -> Callable[[], None]:
        feeds = random_feeds(inputs, vocab, batch, seq, config.seed, low=_low_id(vocab))
        if config.provider == "cpu":
            return lambda: session.run(None, feeds)
        # IO binding: inputs copied to the GPU once, outputs left there, so the timing is the model's
        # and not the PCIe transfers'. synchronize_outputs waits for the GPU to finish.
        binding = session.io_binding()
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda")
        binding.synchronize_inputs()

        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    return Runner(label or default_label(path), str(model_path), "onnx", model_path.stat().st_size, vocab, prepare)


def torch_runner(checkpoint: str, config: BenchConfig, label: str | None = None) -> Runner:
    """The PyTorch (eager, fp32) model the ONNX came from, as a baseline."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from compress.core.errors import ArtifactError

    if not Path(checkpoint).is_dir():
        raise ArtifactError(f"--torch {checkpoint}: not a checkpoint directory")
    if config.provider == "cuda" and not torch.cuda.is_available():
        raise CompressError(
            "--torch with --provider cuda needs a CUDA build of PyTorch and a GPU; "
            f"this torch {torch.__version__} sees none"
        )
    device = "cuda" if config.provider == "cuda" else "cpu"
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        model = load_pretrained(AutoModelForSequenceClassification, checkpoint).eval().to(device)
    except Exception as e:
        raise ArtifactError(f"cannot load the PyTorch checkpoint {checkpoint}: {e.__class__.__name__}: {e}") from e
    size = sum(f.stat().st_size for f in Path(checkpoint).glob("*.safetensors")) or sum(
        f.stat().st_size for f in Path(checkpoint).glob("*.bin")
    )
    vocab = int(getattr(model.config, "vocab_size", 100))
    uses_types = getattr(model.config, "type_vocab_size", 0) > 1

    def prepare(batch: int, seq: int) -> Callable[[], None]:
        names = ("input_ids", "attention_mask", "token_type_ids") if uses_types else ("input_ids", "attention_mask")
        tokens = random_feeds([(n, "tensor(int64)") for n in names], vocab, batch, seq, config.seed, low=_low_id(vocab))
        feeds = {k: torch.from_numpy(v).to(device) for k, v in tokens.items()}

        def run() -> None:
            with torch.inference_mode():
                model(**feeds)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    return Runner(label or f"torch:{Path(checkpoint).name}", str(checkpoint), "torch", size, vocab, prepare)


def default_label(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return p.name
    return p.parent.name if p.name == "model.onnx" and p.parent.name else p.stem


def unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def time_grid_point(runners: list[Runner], batch: int, seq: int, config: BenchConfig) -> dict[str, list[float]]:
    """Seconds per run for each runner: `warmup` untimed runs each, then interleaved rounds."""
    calls = {}
    for r in runners:
        try:
            calls[r.label] = r.prepare(batch, seq)
            for _ in range(config.warmup):
                calls[r.label]()
        except CompressError:
            raise
        except Exception as e:  # ORT/torch errors: sequence too long for the positions table, OOM...
            raise CompressError(f"{r.label} failed at batch {batch} x seq {seq}: {first_line(e)}") from e
    return interleaved_rounds(calls, config.iterations, config)


def summarize(times: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "runs": int(ms.size),
        "throughput_seq_s": round(batch / (float(p50) / 1e3), 2),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features that decide int8 speed (VNNI/AMX give the fast u8*s8 kernels)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return [f for f in wanted if f in flags]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(config: BenchConfig) -> dict:
    import onnxruntime as ort

    env = {
        "onnxruntime": ort.__version__,
        "onnxruntime_package": next((d for d in ("onnxruntime-gpu", "onnxruntime") if _version(d)), None),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": config.threads,
        "provider": config.provider,
        "ort_thread_spinning": config.spinning,
        "settle_ms": config.settle_ms if config.spinning else 0.0,
    }
    if config.provider == "cuda":
        env["gpu"] = gpu_name()
    if hasattr(os, "getloadavg"):
        env["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    return env


def gpu_name() -> str | None:
    """The first GPU's name and driver from nvidia-smi (None without one)."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def run_benchmark(
    runners: list[Runner],
    config: BenchConfig,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time every runner over the grid; returns the report (see SCHEMA) with a speedup column
    relative to the first runner at the same grid point (median of per-round ratios)."""
    config.validate()
    if not runners:
        raise InvalidConfigError("nothing to benchmark: pass at least one model")
    labels = unique_labels([r.label for r in runners])
    for r, lab in zip(runners, labels):
        r.label = lab
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "environment": environment(config),
        "config": asdict(config),
        "models": [{"label": r.label, "path": r.path, "kind": r.kind, "size_bytes": r.size_bytes} for r in runners],
        "results": [],
    }
    for batch in config.batch_sizes:
        for seq in config.seq_lens:
            if progress:
                progress(f"batch {batch} x seq {seq}")
            times = time_grid_point(runners, batch, seq, config)
            base = np.asarray(times[runners[0].label])
            for r in runners:
                mine = np.asarray(times[r.label])
                row = {"model": r.label, "batch_size": batch, "seq_len": seq, **summarize(mine, batch)}
                # Paired: each round's runs are adjacent in time, so a burst of load from another
                # process slows both sides of a ratio; the median ratio is steadier than the ratio
                # of medians when the load comes and goes during the benchmark.
                row["speedup"] = round(float(np.median(base / mine)), 3)
                row["speedup_of_p50"] = round(float(np.median(base) / np.median(mine)), 3)
                report["results"].append(row)
    if hasattr(os, "getloadavg"):
        report["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


CSV_COLUMNS = (
    "model",
    "batch_size",
    "seq_len",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "min_ms",
    "runs",
    "throughput_seq_s",
    "speedup",
    "speedup_of_p50",
)


def write_csv(report: dict, path: str | Path) -> None:
    write_results_csv(report, path, CSV_COLUMNS)


def write_results_csv(report: dict, path: str | Path, columns: tuple[str, ...], extra: dict | None = None) -> None:
    """report["results"] as CSV: `columns` of each row, then `extra` and the environment on every row."""
    env = report["environment"]
    extra = {
        **(extra or {}),
        "provider": env["provider"],
        "threads": env["threads"],
        "onnxruntime": env["onnxruntime"],
        "cpu_model": env["cpu_model"],
    }
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns) + list(extra))
            w.writeheader()
            for row in report["results"]:
                w.writerow({**{k: row[k] for k in columns}, **extra})


def write_report_json(report: dict, path: str | Path) -> None:
    write_json(path, report)


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    env = report["environment"]
    t = Table(
        title=f"latency, {env['provider'].upper()} EP, {env['threads'] or 'default'} threads "
        f"(onnxruntime {env['onnxruntime']}, {env.get('gpu') or env['cpu_model']})"
    )
    for col, justify in (
        ("model", "left"),
        ("batch", "right"),
        ("seq", "right"),
        ("p50 ms", "right"),
        ("p90 ms", "right"),
        ("p99 ms", "right"),
        ("seq/s", "right"),
        ("speedup", "right"),
    ):
        t.add_column(col, justify=justify)
    last = None
    for r in report["results"]:
        point = (r["batch_size"], r["seq_len"])
        if last is not None and point != last:
            t.add_section()
        last = point
        t.add_row(
            r["model"],
            str(r["batch_size"]),
            str(r["seq_len"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['throughput_seq_s']:.1f}",
            f"{r['speedup']:.2f}x",
        )
    console.print(t)
