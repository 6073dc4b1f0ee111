"""`compress bench --data`: ONNX Runtime speed on real text instead of a fixed batch x length grid.

A fixed grid pads every row to one length (128 by default), while SST-2 dev sentences hold ~25 tokens
(max ~55): it misstates the latency a server sees and the share of attention (quadratic in the length)
against the FFN (linear). Here the dev set (compress.training.dev_rows) is tokenized with each model's own
tokenizer and run as requests of `batch` rows, each padded to its own longest row (dynamic padding):
- arrival: rows batched in file order, as requests come;
- length: rows sorted by length, then batched (a server that buckets by length), less padding.
At batch 1 every request is one unpadded row either way, so only the first order asked for is timed.

Timing uses compress bench's harness (compress.ort.timing.interleaved_rounds): round k runs request k of
every model, the start rotating, ORT's threads settled before each timed run, so a burst of load from
another process slows every model's copy of a request alike. Per model: sentences/s and the total over
the set (the sum of its request times), p50/p90/p99 per request, and the speedup as the ratio of total
times to the baseline model's (the first model; "dense fp32" for the pipeline).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from compress.core.config import BUILTIN_TASKS, BenchConfig, DataConfig
from compress.core.errors import ArtifactError, CompressError, DataError, InvalidConfigError
from compress.ort.bench import default_label, environment, unique_labels, write_results_csv
from compress.ort.evaluate import iter_batches, session_inputs
from compress.ort.timing import interleaved_rounds
from compress.training.dev_rows import dev_features, eval_length, length_stats, row_lengths
from exporters.files import SIDECAR_FILES, first_line, read_config, resolve_onnx
from exporters.sessions import make_session

SCHEMA = "compress.bench-data/1"
TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json")


@dataclass
class DataModel:
    """One graph under test with its session and the dev rows under its tokenizer."""

    label: str
    path: Path  # the model.onnx
    session: object = field(repr=False)
    inputs: list[tuple[str, str]]
    tokenizer_dir: Path
    pad_id: int
    features: object = field(default=None, repr=False)  # datasets.Dataset of unpadded rows
    lengths: np.ndarray | None = field(default=None, repr=False)


def data_source(spec: str | None, data: DataConfig | None = None) -> DataConfig | None:
    """The data `--data TASK|FILE` names, with `data`'s columns and folder; None (the grid) when neither
    `spec` nor `data` names a task or a file."""
    data = data or DataConfig()
    if spec is None:
        return data if (data.task or data.validation_file) else None
    if spec in BUILTIN_TASKS:
        return replace(data, task=spec)
    if not Path(spec).is_file():
        raise DataError(
            f"--data {spec}: no such file, and not a built-in task ({', '.join(BUILTIN_TASKS)}); "
            "pass a task name or an existing data file"
        )
    return replace(data, task=None, validation_file=spec)


def tokenizer_dir(model: Path, override: str | os.PathLike | None = None) -> Path:
    """The tokenizer folder of a graph: `override`, else the graph's folder, else its parent."""
    if override is not None:
        if not Path(override).is_dir():
            raise ArtifactError(f"--tokenizer {override}: not a folder; pass the folder holding the tokenizer files")
        return Path(override)
    for folder in (model.parent, model.parent.parent):
        if any((folder / f).is_file() for f in TOKENIZER_MARKERS):
            return folder
    raise ArtifactError(
        f"no tokenizer beside {model} or in its parent folder; pass --tokenizer DIR (the model it was exported from)"
    )


def _tokenizer_key(folder: Path) -> str:
    """Graphs whose tokenizer files are the same bytes share one tokenization of the data."""
    h = hashlib.sha256()
    for name in sorted(set(SIDECAR_FILES) - {"config.json"}):
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()


def load_models(paths: Sequence, labels: Sequence[str | None], config: BenchConfig) -> list[DataModel]:
    out = []
    for path, label in zip(paths, labels):
        model = resolve_onnx(path)
        folder = tokenizer_dir(model, config.tokenizer)
        session = make_session(model, config.provider, config.threads, check=False, spinning=config.spinning)
        out.append(DataModel(label or default_label(str(path)), model, session, session_inputs(session), folder, 0))
    for m, lab in zip(out, unique_labels([m.label for m in out])):
        m.label = lab
    return out


def _max_length(models: list[DataModel], kind: str, requested: int | None) -> int:
    """The tokens kept per row: the request (checked against every model's positions), else the task's
    evaluation length capped at the smallest position table."""
    from compress.core.models import check_max_length, max_positions

    configs = [(m, read_config(m.path.parent) or read_config(m.tokenizer_dir)) for m in models]
    if requested is not None:
        for m, cfg in configs:
            check_max_length(requested, cfg, m.label)
        return requested
    limits = [n for _, cfg in configs if (n := max_positions(cfg)) is not None]
    return min([eval_length(kind), *limits])


def tokenize_for(models: list[DataModel], data: DataConfig, max_length: int, max_samples: int | None) -> None:
    """Each model's dev rows under its tokenizer (one tokenization per distinct tokenizer) and pad id."""
    from compress.core.models import load_tokenizer

    done: dict[str, tuple] = {}
    for m in models:
        key = _tokenizer_key(m.tokenizer_dir)
        if key not in done:
            kwargs = {}
            if data.kind == "token-classification":  # pre-split words: byte-level BPE needs a prefix space
                from compress.core.models import load_config
                from compress.training.tasks import task_type

                kwargs = task_type(data.kind).tokenizer_kwargs(load_config(str(m.path.parent)))
            tok = load_tokenizer(str(m.tokenizer_dir), **kwargs)
            features = dev_features(data, tok, max_length, max_samples)
            if len(features) == 0:
                raise DataError("the data holds no rows")
            done[key] = (features, row_lengths(features), tok.pad_token_id)
        m.features, m.lengths, pad = done[key]
        m.pad_id = pad if pad is not None else int(read_config(m.path.parent).get("pad_token_id") or 0)


def make_batches(features, inputs: list[tuple[str, str]], batch_size: int, bucketing: str, pad_id: int = 0):
    """The set as requests: [(row indices, feeds)], `batch_size` rows each (the last one fewer), in
    arrival order or sorted by length (`bucketing`), each padded to its own longest row
    (compress.ort.evaluate.iter_batches)."""
    return list(iter_batches(features, inputs, batch_size, pad_id, sort=bucketing == "length"))


def time_requests(
    models: list[DataModel], batches: dict[str, list[dict]], config: BenchConfig
) -> dict[str, list[float]]:
    """Seconds per request for each model: `config.warmup` untimed runs first (at least one: the largest
    request, so ORT's memory arena has grown and a request the graph cannot take fails here), then round k runs request k of every model in turn
    (interleaved_rounds: rotating start, settled). A model with fewer requests (another tokenizer's QA
    windows) idles in the rounds past its last one."""
    for m in models:
        reqs = batches[m.label]
        largest = max(reqs, key=lambda f: f["input_ids"].size)
        for feeds in [largest, *reqs[: max(config.warmup - 1, 0)]]:
            try:
                m.session.run(None, feeds)
            except Exception as e:  # ORT: a row past the position table, out of memory...
                shape = "x".join(map(str, feeds["input_ids"].shape))
                raise CompressError(f"{m.label} failed on a {shape} request of the data: {first_line(e)}") from e
    cursor = [0, 0]  # request index, samples taken in this round

    def call(m: DataModel) -> Callable[[], None]:
        reqs = batches[m.label]
        return lambda: m.session.run(None, reqs[cursor[0]]) if cursor[0] < len(reqs) else None

    def next_sample() -> None:
        cursor[1] += 1
        if cursor[1] == len(models):  # every model ran request k: on to k + 1
            cursor[:] = [cursor[0] + 1, 0]

    rounds = max(len(b) for b in batches.values())
    times = interleaved_rounds({m.label: call(m) for m in models}, rounds, config, after_sample=next_sample)
    return {m.label: times[m.label][: len(batches[m.label])] for m in models}


def summarize_requests(times: list[float], rows: int) -> dict:
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    total = float(ms.sum()) / 1e3
    return {
        "rows": rows,
        "requests": int(ms.size),
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "total_s": round(total, 6),
        "sentences_s": round(rows / total, 2),
    }


def _padding(lengths: np.ndarray, requests: list) -> float:
    """The share of the positions fed that are padding."""
    fed = sum(int(feeds["input_ids"].size) for _, feeds in requests)
    return round(1.0 - float(lengths.sum()) / fed, 4)


def run_data_benchmark(
    paths: Sequence,
    config: BenchConfig,
    data: DataConfig,
    *,
    labels: Sequence[str | None] | None = None,
    baseline: str | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time the graphs at `paths` on `data`'s dev rows for each of config.batch_sizes x config.bucketing;
    returns the report (SCHEMA). `baseline`: the label speedups are relative to (default: the first)."""
    config.validate()
    data.validate()
    if not paths:
        raise InvalidConfigError("nothing to benchmark: pass at least one model")
    if data.task is None and data.task_type is None:  # a data file: read it as the graphs' task
        from compress.ort.evaluate import graph_task_type

        kind = graph_task_type(paths[0])
        data = replace(data, task_type=kind) if kind else data
    models = load_models(paths, labels or [None] * len(paths), config)
    names = [m.label for m in models]
    if baseline is not None and baseline not in names:
        raise InvalidConfigError(f"baseline {baseline!r} is not one of the models ({', '.join(names)})")
    base = baseline or names[0]
    max_length = _max_length(models, data.kind, config.max_length)
    tokenize_for(models, data, max_length, config.max_eval_samples)
    first = models[0]
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "environment": environment(config),
        "config": asdict(config),
        "data": {
            "source": data.validation_file or data.task,
            "task_type": data.kind,
            "max_length": max_length,
            "tokenizer": str(first.tokenizer_dir),
            "lengths": length_stats(first.lengths),
        },
        "baseline": base,
        "models": [
            {
                "label": m.label,
                "path": str(m.path),
                "kind": "onnx",
                "size_bytes": m.path.stat().st_size,
                "tokenizer": str(m.tokenizer_dir),
                "lengths": length_stats(m.lengths),
            }
            for m in models
        ],
        "results": [],
    }
    for batch in config.batch_sizes:
        orders = config.bucketing[:1] if batch == 1 else config.bucketing  # one unpadded row per request
        for order in orders:
            requests = {m.label: make_batches(m.features, m.inputs, batch, order, m.pad_id) for m in models}
            if progress:
                progress(f"batch {batch}, {order} order, {len(requests[first.label])} requests")
            times = time_requests(models, {k: [f for _, f in v] for k, v in requests.items()}, config)
            total_base = sum(times[base])
            for m in models:
                row = {"model": m.label, "batch_size": batch, "bucketing": order}
                row.update(summarize_requests(times[m.label], len(m.lengths)))
                row["padding"] = _padding(m.lengths, requests[m.label])
                row["speedup"] = round(total_base / sum(times[m.label]), 3)
                report["results"].append(row)
    if hasattr(os, "getloadavg"):
        report["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def bench_on_data(
    models: dict[str, str | os.PathLike],
    data: DataConfig,
    batch_size: int | Sequence[int] = 32,
    threads: int | None = 2,
    *,
    bucketing: Sequence[str] = ("arrival", "length"),
    baseline: str = "dense fp32",
    tokenizer: str | os.PathLike | None = None,
    max_length: int | None = None,
    max_samples: int | None = None,
    config: BenchConfig | None = None,
    command: str = "compress run",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Speed of named graphs on `data`'s dev rows, for a pipeline: the report of run_data_benchmark plus
    `summary[name][batch][bucketing]` = sentences_s, p50_ms, p90_ms, p99_ms, total_s, speedup, the speedup
    against `baseline` ("dense fp32"; the first model when it is not among them). `config` gives the
    other timing settings (warm-up, spinning, settle_ms, provider)."""
    sizes = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
    config = replace(
        config or BenchConfig(),
        batch_sizes=sizes,
        threads=threads,
        bucketing=tuple(bucketing),
        tokenizer=str(tokenizer) if tokenizer is not None else None,
        max_length=max_length,
        max_eval_samples=max_samples,
    )
    names = list(models)
    report = run_data_benchmark(
        [models[n] for n in names],
        config,
        data,
        labels=names,
        baseline=baseline if baseline in models else None,
        command=command,
        progress=progress,
    )
    keys = ("sentences_s", "p50_ms", "p90_ms", "p99_ms", "total_s", "speedup")
    summary: dict = {n: {} for n in names}
    for r in report["results"]:
        summary[r["model"]].setdefault(r["batch_size"], {})[r["bucketing"]] = {k: r[k] for k in keys}
    return {**report, "summary": summary}


# ------------------------------------------------------------------------------------------ output
CSV_COLUMNS = (
    "model",
    "batch_size",
    "bucketing",
    "rows",
    "requests",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "total_s",
    "sentences_s",
    "padding",
    "speedup",
)


def write_csv(report: dict, path: str | Path) -> None:
    lengths = report["data"]["lengths"]
    data = {"data": report["data"]["source"], "tokens_mean": lengths["mean"], "tokens_p90": lengths["p90"]}
    write_results_csv(report, path, CSV_COLUMNS, data)


def print_table(report: dict, console=None) -> None:
    """The report in compress bench's table style, the data's token lengths in the caption."""
    from rich.console import Console
    from rich.table import Table

    # Eleven columns do not fit rich's 80 columns off a terminal (a pipe, a file): those have no width.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    env, d = report["environment"], report["data"]
    n = d["lengths"]
    t = Table(
        title=f"speed on {d['source']} ({n['rows']} rows, dynamic padding), {env['provider'].upper()} EP, "
        f"{env['threads'] or 'default'} threads (onnxruntime {env['onnxruntime']}, {env.get('gpu') or env['cpu_model']})",
        caption=f"tokens per row: mean {n['mean']:.1f}, p50 {n['p50']:g}, p90 {n['p90']:g}, max {n['max']} "
        f"(kept: {d['max_length']}); speedup: total time vs {report['baseline']}",
    )
    columns = ("model", "batch", "order", "requests", "p50 ms", "p90 ms", "p99 ms", "sent/s", "total s", "padding")
    columns += ("speedup",)
    for col in columns:
        t.add_column(col, justify="left" if col in ("model", "order") else "right")
    last = None
    for r in report["results"]:
        point = (r["batch_size"], r["bucketing"])
        if last is not None and point != last:
            t.add_section()
        last = point
        t.add_row(
            r["model"],
            str(r["batch_size"]),
            r["bucketing"],
            str(r["requests"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['sentences_s']:.0f}",
            f"{r['total_s']:.3g}",
            f"{r['padding']:.0%}",
            f"{r['speedup']:.2f}x",
        )
    console.print(t)
    for m in report["models"]:
        if m["lengths"] != n:
            console.print(f"{m['label']}: its tokenizer gives other lengths: {m['lengths']}")
