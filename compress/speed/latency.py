"""Latency model of the deployment target: a per-layer lookup table measured with ONNX Runtime.

What is timed is what ships. The user's model is exported by our own exporter, and each table entry
is a graph that our own surgery cut down (exporters.surgery.shrink), fused by ORT's transformer
optimizer like `compress export --shrink --optimize`, and for int8 quantized by compress's own
quantize_onnx, exactly as `compress run` builds its deploy graphs. So a fused Attention op with h
heads, an FFN MatMul pair of width f, int8 MatMulInteger kernels and a head-free layer's bypass are
what the numbers describe.

Model (additive per layer; every layer of an encoder has the same geometry, so one row serves all):
    latency(structure) = fixed + sum_l attn[h_l] + ffn[f_l]
Measured at real depth L with every layer shrunk alike, so each difference is L times the per-layer
cost (better signal on a noisy machine than one layer alone):
    fixed   = T(0 heads, 0 dims)                     embeddings, LayerNorms, pooler, classifier
    attn[h] = (T(h, 0) - T(0, 0)) / L                h = 0..H, every head count
    ffn[f]  = (T(0, f) - T(0, 0)) / L                f on a grid (finer near 0), linear in between
Both curves are made non-decreasing (running maximum): removing structure never costs time, and a
noisy dip would otherwise mislead the budget solver.

Timing (time_graphs): graphs are loaded a chunk at a time next to a reference graph (the dense one) and
run round-robin with a rotating start; each entry's figure is the median over rounds of its time / the
reference's time in the same round, times the reference's median (statistic "median"; the fastest round,
"min", is recorded too). Each timed sample averages enough back-to-back runs to last ~100 ms, so a batch-1
graph is not judged by single runs that another job interrupted; before each sample compress bench's
settle() lets the previous graph's spinning threads go to sleep and warms this one, so each graph runs as
it would deployed alone with ORT's default threads.
Tables are cached per (device, execution provider, ORT version, threads, batch x seq, precision, model
geometry) in $COMPRESS_CACHE_DIR/latency or ~/.cache/compress/latency, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compress.core.artifacts import atomic_file
from compress.core.errors import ArtifactError, InvalidConfigError

# 3: ORT's spinning threads, settled before each sample (compress.ort.bench.settle); 2: spinning off
# (every op waited for a thread wake-up); 1: spinning on without settling (sessions stole each other's cores)
TABLE_FORMAT = 3
PRECISIONS = ("fp32", "int8")


# --------------------------------------------------------------------------------------- config
@dataclass
class DeployConfig:
    """Where and how the pruned model will run; everything here is part of the table's cache key
    except the measurement effort (repeats, min_sample_ms)."""

    precision: str = "fp32"  # "fp32" | "int8" (compress quantize's dynamic int8 of the fused graph)
    batch: int = 32
    seq: int = 128
    threads: int | None = 2  # intra-op threads; None = ONNX Runtime's default
    provider: str = "cpu"  # "cpu" | "cuda"
    optimize: bool = True  # ORT transformer fusions after surgery, as `compress run` ships its graphs
    ffn_step: int = 64  # FFN grid spacing (plus 16 and 32 near 0, where the fixed cost of the block shows)
    repeats: int = 7  # timed rounds per graph (median)
    min_sample_ms: float = 100.0  # each timed sample repeats a graph until it lasts about this long
    # "median": median over rounds of the ratio to the reference graph (timed in the same round) times
    # the reference's median; "min": the fastest round. Measured on this shared 2-core machine at load
    # 7-11, fp32 32x128: the median-ratio table predicted 8 random structures within 7.2%, the
    # fastest-round table within 36% (single 1-2 s runs: the minimum of 7 is luck).
    statistic: str = "median"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidConfigError(f"--deploy {self.precision!r} is unknown; choose fp32 or int8")
        if self.batch < 1 or self.seq < 1:
            raise InvalidConfigError(f"--deploy-shape {self.batch}x{self.seq} is invalid; give BATCHxSEQ, e.g. 32x128")
        if self.threads is not None and self.threads < 1:
            raise InvalidConfigError(f"--threads {self.threads} must be >= 1")
        if self.provider not in ("cpu", "cuda"):
            raise InvalidConfigError(f"--provider {self.provider!r} is unknown; choose cpu or cuda")
        if self.statistic not in ("min", "median"):
            raise InvalidConfigError(f"statistic {self.statistic!r} is unknown; choose min or median")
        if self.ffn_step < 1 or self.repeats < 1:
            raise InvalidConfigError("the FFN grid step and the repeat count must be >= 1")

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.seq}"


def parse_shape(text: str) -> tuple[int, int]:
    """'32x128' -> (32, 128)."""
    try:
        b, s = (int(x) for x in text.lower().split("x"))
    except ValueError as e:
        raise InvalidConfigError(f"--deploy-shape {text!r} is not BATCHxSEQ; e.g. 32x128") from e
    if b < 1 or s < 1:
        raise InvalidConfigError(f"--deploy-shape {text!r} needs positive sizes; e.g. 32x128")
    return b, s


def ffn_grid(intermediate: int, step: int = 64) -> list[int]:
    """0, 16, 32, then every `step` dims, and the full width."""
    pts = {0, intermediate, *(p for p in (16, 32) if p < min(step, intermediate)), *range(step, intermediate, step)}
    return sorted(p for p in pts if p <= intermediate)


# --------------------------------------------------------------------------------------- the table
@dataclass
class LatencyTable:
    """Per-layer cost of attention with h kept heads and FFN with f kept dims, plus the fixed part.

    `unit` is "ms" for measured tables and "MFLOP" for flops_table(); the methods are named after
    milliseconds because that is what they mean for a measured table."""

    key: dict
    num_layers: int
    num_heads: int
    intermediate_size: int
    fixed_ms: float
    attn_ms: list[float]  # index h = kept heads, attn_ms[0] == 0
    ffn_grid: list[int]  # kept FFN dims at which ffn_ms was measured, from 0 to intermediate_size
    ffn_ms: list[float]  # ffn_ms[0] == 0
    dense_ms: float  # the dense deploy graph at this precision, measured in the same rounds
    unit: str = "ms"
    # The speedup baseline: the dense fp32 deploy graph on the same EP and shape, timed in the same rounds.
    # Speedups are against the model as the user has it, so "3x, int8 deploy" means 3x faster than dense
    # fp32, the convention of the README's tables; 0 means "same as dense_ms" (fp32 and FLOPs tables).
    baseline_ms: float = 0.0
    measurements: dict = field(default_factory=dict)  # raw medians per graph, load, timings

    def __post_init__(self):
        if not self.baseline_ms:
            self.baseline_ms = self.dense_ms
        if len(self.attn_ms) != self.num_heads + 1:
            raise ArtifactError(
                f"latency table has {len(self.attn_ms)} attention entries for {self.num_heads} heads; rebuild it"
            )
        if (
            len(self.ffn_grid) != len(self.ffn_ms)
            or self.ffn_grid[0] != 0
            or self.ffn_grid[-1] != self.intermediate_size
        ):
            raise ArtifactError("latency table FFN grid must run from 0 to the FFN width; rebuild it")

    # ------------------------------------------------------------------ lookups
    def attn_cost(self, heads: int) -> float:
        if not 0 <= heads <= self.num_heads:
            raise InvalidConfigError(f"{heads} heads is outside 0..{self.num_heads}")
        return self.attn_ms[heads]

    def ffn_cost(self, dims: float) -> float:
        if not 0 <= dims <= self.intermediate_size:
            raise InvalidConfigError(f"{dims} FFN dims is outside 0..{self.intermediate_size}")
        return float(np.interp(dims, self.ffn_grid, self.ffn_ms))

    def ffn_costs(self) -> np.ndarray:
        """Cost of every FFN width 0..intermediate_size (vectorised interpolation)."""
        return np.interp(np.arange(self.intermediate_size + 1), self.ffn_grid, self.ffn_ms)

    def layer_ms(self, heads: int, ffn_dims: float) -> float:
        return self.attn_cost(heads) + self.ffn_cost(ffn_dims)

    def predict_ms(self, heads_per_layer: list[int], ffn_per_layer: list[int]) -> float:
        if len(heads_per_layer) != self.num_layers or len(ffn_per_layer) != self.num_layers:
            raise InvalidConfigError(
                f"a structure for {len(heads_per_layer)}/{len(ffn_per_layer)} layers does not fit "
                f"a table of {self.num_layers} layers"
            )
        return self.fixed_ms + sum(self.layer_ms(h, f) for h, f in zip(heads_per_layer, ffn_per_layer))

    def predict_kept(self, kept) -> float:
        """predict_ms for a kept structure: LayerKeeps or compression.json's `layers` entries."""
        from compress.core.record import as_layer_keeps

        kept = as_layer_keeps(kept)
        return self.predict_ms([len(k.heads) for k in kept], [len(k.ffn_dims) for k in kept])

    @property
    def predicted_dense_ms(self) -> float:
        return self.predict_ms([self.num_heads] * self.num_layers, [self.intermediate_size] * self.num_layers)

    @property
    def floor_ms(self) -> float:
        """The least any structure can cost: every head and FFN dim gone."""
        return self.fixed_ms

    def speedup(self, heads_per_layer: list[int], ffn_per_layer: list[int]) -> float:
        """Predicted speedup over the dense fp32 baseline."""
        return self.baseline_ms / self.predict_ms(heads_per_layer, ffn_per_layer)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyTable":
        data = dict(data)
        if data.pop("format", None) != TABLE_FORMAT:
            raise ArtifactError(
                f"latency table format {data.get('format')!r} is not {TABLE_FORMAT}; rebuild it "
                "(`compress latency-table MODEL --rebuild`)"
            )
        try:
            return cls(**data)
        except TypeError as e:
            raise ArtifactError(f"latency table is malformed ({e}); rebuild it") from e

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"cannot read latency table {path} ({e}); delete it to rebuild") from e

    def summary(self) -> dict:
        return {
            "unit": self.unit,
            "dense": round(self.dense_ms, 3),
            "baseline_fp32": round(self.baseline_ms, 3),
            "predicted_dense": round(self.predicted_dense_ms, 3),
            "fixed": round(self.fixed_ms, 3),
            "key": self.key,
        }


def _monotone(values) -> list[float]:
    """Running maximum from a 0 start: noise must not make removing structure look slower-free."""
    out, m = [], 0.0
    for v in values:
        m = max(m, float(v))
        out.append(m)
    return out


# --------------------------------------------------------------------------------------- FLOPs table
def flops_table(geo, batch: int = 1, seq: int = 128, model_key: dict | None = None) -> LatencyTable:
    """The hardware-free table (MFLOP of one batch): encoder-layer FLOPs only, as
    compress.sparsity.flops_per_token counts them (Q/K/V/O and attention products per head, W1/W2 per FFN dim);
    embeddings, LayerNorms and the classifier count 0. Use with --target-flops (a fraction of dense)."""
    tokens = batch * seq
    h, d = geo.hidden_size, geo.head_size
    per_head = 2 * tokens * (4 * h * d + 2 * seq * d) / 1e6
    per_dim = 2 * tokens * 2 * h / 1e6
    attn = [per_head * k for k in range(geo.num_heads + 1)]
    grid = [0, geo.intermediate_size]
    ffn = [0.0, per_dim * geo.intermediate_size]
    dense = geo.num_layers * (attn[-1] + ffn[-1])
    key = {"format": TABLE_FORMAT, "precision": "flops", "batch": batch, "seq": seq, "model": model_key or asdict(geo)}
    return LatencyTable(
        key, geo.num_layers, geo.num_heads, geo.intermediate_size, 0.0, attn, grid, ffn, dense, unit="MFLOP"
    )


# --------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    root = os.environ.get("COMPRESS_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "latency"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "compress" / "latency"


def model_key(config) -> dict:
    from compress.core.structure import geometry

    geo = geometry(config)
    return {
        "model_type": config.model_type,
        "num_layers": geo.num_layers,
        "num_heads": geo.num_heads,
        "hidden_size": geo.hidden_size,
        "intermediate_size": geo.intermediate_size,
        "vocab_size": getattr(config, "vocab_size", None),
        "num_labels": getattr(config, "num_labels", None),
    }


def table_key(config, deploy: DeployConfig) -> dict:
    """Everything the timings depend on. The model enters by geometry only: two checkpoints of the
    same shape (a teacher and its student) share a table."""
    import onnxruntime as ort

    from compress.ort.bench import cpu_flags, cpu_model, gpu_name

    device = gpu_name() if deploy.provider == "cuda" else cpu_model()
    return {
        "format": TABLE_FORMAT,
        "device": device,
        "cpu_flags": cpu_flags() if deploy.provider == "cpu" else None,
        "provider": deploy.provider,
        "onnxruntime": ort.__version__,
        "threads": deploy.threads or "default",
        "batch": deploy.batch,
        "seq": deploy.seq,
        "precision": deploy.precision,
        "optimize": deploy.optimize,
        "ffn_step": deploy.ffn_step,
        "statistic": deploy.statistic,
        "ort_thread_spinning": bench_config(deploy).spinning,
        "model": model_key(config),
    }


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    m = key["model"]
    name = (
        f"{m['model_type']}-L{m['num_layers']}H{m['num_heads']}F{m['intermediate_size']}-{key['precision']}-"
        f"{key['batch']}x{key['seq']}-{key['provider']}-t{key['threads']}-{digest}.json"
    )
    return cache_dir() / name


def load_or_build_table(
    model: str, deploy: DeployConfig, *, rebuild: bool = False, use_cache: bool = True, progress: bool = True
) -> tuple[LatencyTable, Path | None, bool]:
    """(table, cache file, whether it came from the cache). `model`: a local dir or hub name."""
    from compress.training.models import load_config, resolve_model

    deploy.validate()
    name = resolve_model(model)
    config = load_config(name)
    key = table_key(config, deploy)
    path = cache_path(key) if use_cache else None
    if path is not None and path.exists() and not rebuild:
        try:
            table = LatencyTable.load(path)
        except ArtifactError:
            table = None  # an older table format under this key: measure again
        if table is not None and table.key == key:
            return table, path, True
    table = build_table(name, deploy, key=key, progress=progress)
    if path is not None:
        table.save(path)
    return table, path, False


# --------------------------------------------------------------------------------------- deploy graphs
class DeployGraphs:
    """The user's model exported once by our exporter; `build(kept)` gives the deploy graph of any kept
    structure (surgery, ORT fusions, int8), as files under `workdir`. Also used by the benchmark to
    measure whole pruned models."""

    def __init__(self, model: str, workdir: str | os.PathLike, deploy: DeployConfig, classifier=None):
        import onnx

        from compress.core.structure import geometry
        from compress.training.models import load_classifier, load_config
        from exporters.export import export_checkpoint
        from exporters.toolbox import sample_inputs

        self.deploy = deploy
        self.workdir = Path(workdir)
        self.config = load_config(model) if classifier is None else classifier.config
        self.geo = geometry(self.config)
        ckpt = self.workdir / "checkpoint"
        model_obj = classifier if classifier is not None else load_classifier(model)
        model_obj.save_pretrained(ckpt)  # no tokenizer needed: graphs are checked on random ids
        export_checkpoint(ckpt, self.workdir / "dense-export", validate=False, shrink=False)  # build() cuts it
        self.dense = onnx.load(str(self.workdir / "dense-export" / "model.onnx"))
        shutil.rmtree(ckpt, ignore_errors=True)
        names = [i.name for i in self.dense.graph.input]
        # One small random batch: enough for ORT's fusion check (exporters.optimize) to catch a wrong fusion.
        self.batches = sample_inputs(names, None, getattr(self.config, "vocab_size", 100), 16)[:2]
        self._n = 0

    def build(self, kept: list[dict] | None, name: str | None = None, precision: str | None = None) -> Path:
        """Deploy graph (model.onnx path) for `kept` (compression.json `layers` form; None = dense), at the
        deploy precision unless `precision` is given."""
        import gc

        import onnx

        from exporters.surgery.rewrite import normalize_heads
        from exporters.surgery.shrink import shrink

        self._n += 1
        name = name or f"g{self._n}"
        # Graph rewrites leave reference cycles holding whole model copies; collect them now or a
        # 40-graph table of MiniLM grows past 7 GB before Python's object-count trigger fires.
        gc.collect()
        if kept is None:
            graph = normalize_heads(self.dense, self.geo.head_size)
        else:
            graph, _ = shrink(self._zeroed(kept), kept, self.geo.num_heads, self.geo.head_size)
        if self.deploy.optimize:
            from exporters.optimize import optimize

            graph, _ = optimize(graph, self.batches, atol=1e-3)
        out = self.workdir / name
        out.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(out / "model.onnx"))
        self.config.to_json_file(str(out / "config.json"))
        if (precision or self.deploy.precision) == "fp32":
            return out / "model.onnx"
        from compress.ort.quantize import QuantizeConfig, quantize_onnx

        res = quantize_onnx(
            out / "model.onnx", self.workdir / f"{name}-int8", QuantizeConfig(), threads=self.deploy.threads
        )
        (out / "model.onnx").unlink()
        return Path(res.output)

    def _zeroed(self, kept: list[dict]):
        """The dense export with the output weights (W_O rows, W2 rows) of the removed heads / dims set
        to zero, as a pruned checkpoint's export would have them: the surgery only cuts structure it can
        see is dead. Latency does not depend on the values of the weights that remain."""
        import copy

        from onnx import numpy_helper

        from compress.core.record import as_layer_keeps
        from exporters.graph import Graph
        from exporters.surgery.match import find_layers

        kept = as_layer_keeps(kept)
        model = copy.deepcopy(self.dense)
        g = Graph(model)
        layers, d = find_layers(g, self.geo.head_size)
        inits = {t.name: t for t in model.graph.initializer}
        for layer, k in zip(layers, kept):
            for name, keep, unit in (
                (layer.attention.o.matmul.input[1], k.heads, d),
                (layer.ffn.w2.matmul.input[1], k.ffn_dims, 1),
            ):
                w = g.const(name).copy()
                rows = np.ones(w.shape[0], bool)
                for j in keep:
                    rows[j * unit : (j + 1) * unit] = False
                w[rows] = 0
                src = g._resolve(name)
                if not isinstance(src, str):
                    raise ArtifactError(
                        f"weight {name} of the export is not an initializer; cannot build latency graphs"
                    )
                inits[src].CopyFrom(numpy_helper.from_array(w, src))
        return model

    def uniform(self, heads: int, dims: int, name: str | None = None) -> Path:
        """Every layer keeps its first `heads` heads and `dims` FFN dims."""
        kept = [{"heads_kept": list(range(heads)), "ffn_dims_kept": list(range(dims))}] * self.geo.num_layers
        return self.build(kept, name)


def bench_config(deploy: DeployConfig):
    """The compress bench settings that time graphs for this deployment."""
    from compress.ort.bench import BenchConfig

    return BenchConfig(
        batch_sizes=(deploy.batch,),
        seq_lens=(deploy.seq,),
        provider=deploy.provider,
        threads=deploy.threads,
    )


def time_graphs(
    paths: dict[str, Path],
    deploy: DeployConfig,
    progress=None,
    delete: bool = True,
    reference: str | None = None,
    chunk: int = 10,
) -> dict[str, dict]:
    """ms per run of each graph at the deploy shape ("ms": by deploy.statistic; "min_ms" and "median_ms"
    both recorded), measured against a reference graph.

    Graphs are loaded `chunk` at a time next to the reference (a session holds the model and its
    activation arena: 40 MiniLM sessions at 32x128 took 6 GB) and run round-robin with a rotating start.
    A graph's figure is the median over rounds of its time / the reference's time in the same round,
    times the reference's median over all rounds: load from other processes that comes and goes
    between chunks cancels in the ratio. Each timed sample repeats a graph `inner` times, sized so it
    lasts about deploy.min_sample_ms (timer and scheduler jitter matter at batch 1). A graph's folder
    is deleted once loaded when `delete` (DeployGraphs gives each graph a folder of its own)."""
    import gc

    from compress.ort.bench import onnx_runner, settle

    bc = bench_config(deploy)
    reference = reference or next(iter(paths))

    def load(label):
        call = onnx_runner(str(paths[label]), bc, label=label).prepare(deploy.batch, deploy.seq)
        call()  # warm-up: the first run allocates
        settle(call, bc)  # the previous graph's threads must not spin while `inner` is sized
        if delete:
            shutil.rmtree(paths[label].parent, ignore_errors=True)
        one = float("inf")
        for _ in range(3):  # the fastest of a few: one run slowed by another job would make `inner` 1
            t0 = time.perf_counter()
            call()
            one = min(one, (time.perf_counter() - t0) * 1e3)
            if one > deploy.min_sample_ms:
                break
        return call, max(1, min(200, math.ceil(deploy.min_sample_ms / max(one, 1e-3))))

    others = [k for k in paths if k != reference]
    chunks = [others[i : i + chunk] for i in range(0, len(others), chunk)] or [[]]
    total = deploy.repeats * sum(len(c) + 1 for c in chunks)
    done = 0
    ref_call, ref_inner = load(reference)
    ref_samples: list[float] = []
    ratios: dict[str, list[float]] = {}
    raw: dict[str, list[float]] = {}
    inner = {reference: ref_inner}
    for labels in chunks:
        calls = {reference: ref_call}
        for label in labels:
            calls[label], inner[label] = load(label)
        order = list(calls)
        rounds = {k: [] for k in order}
        for r in range(deploy.repeats):
            for k in range(len(order)):
                label = order[(r + k) % len(order)]
                n = inner[label]
                settle(calls[label], bc)
                t0 = time.perf_counter()
                for _ in range(n):
                    calls[label]()
                rounds[label].append((time.perf_counter() - t0) * 1e3 / n)
                done += 1
                if progress:
                    progress(done, total)
        ref_samples += rounds[reference]
        for label in labels:
            raw[label] = rounds[label]
            ratios[label] = [t / ref for t, ref in zip(rounds[label], rounds[reference])]
        del calls, rounds
        gc.collect()
    ref_ms = float(np.median(ref_samples))
    out = {
        reference: {
            "median_ms": ref_ms,
            "min_ms": float(np.min(ref_samples)),
            "runs": len(ref_samples) * ref_inner,
            "samples_ms": [round(x, 4) for x in ref_samples],
        }
    }
    for label in others:
        out[label] = {
            "median_ms": float(np.median(ratios[label])) * ref_ms,
            "min_ms": float(np.min(raw[label])),
            "runs": len(raw[label]) * inner[label],
            "median_ratio_to_reference": round(float(np.median(ratios[label])), 5),
            "samples_ms": [round(x, 4) for x in raw[label]],
        }
    for v in out.values():
        v["ms"] = v["min_ms"] if deploy.statistic == "min" else v["median_ms"]
    return out


def build_table(
    model: str, deploy: DeployConfig, *, key: dict | None = None, progress: bool = True, classifier=None
) -> LatencyTable:
    """Measure the table (see the module docstring). `classifier`: an in-memory model to use instead
    of loading `model` (tests)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    deploy.validate()
    t_start = time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
        graphs = DeployGraphs(model, tmp, deploy, classifier=classifier)
        geo = graphs.geo
        if key is None:
            key = table_key(graphs.config, deploy)
        grid = ffn_grid(geo.intermediate_size, deploy.ffn_step)
        plan = {
            "fixed": (0, 0),
            **{f"attn{h}": (h, 0) for h in range(1, geo.num_heads + 1)},
            **{f"ffn{f}": (0, f) for f in grid[1:]},
        }
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            disable=not progress,
            transient=False,
        ) as bar:
            task = bar.add_task(
                f"latency table {deploy.precision} {deploy.shape}: building graphs", total=len(plan) + 1
            )
            paths = {}
            for label, (h, f) in plan.items():
                paths[label] = graphs.uniform(h, f, name=label)
                bar.advance(task)
            paths["dense"] = graphs.build(None, name="dense")
            if deploy.precision != "fp32":
                paths["dense-fp32"] = graphs.build(None, name="dense-fp32", precision="fp32")
            bar.advance(task)
            t_built = time.time()
            timing = bar.add_task("timing (interleaved rounds)", total=None)
            res = time_graphs(
                paths,
                deploy,
                progress=lambda done, total: bar.update(timing, completed=done, total=total),
                reference="dense-fp32" if "dense-fp32" in paths else "dense",
            )
    med = {k: v["ms"] for k, v in res.items()}
    L = geo.num_layers
    fixed = med["fixed"]
    attn_raw = [0.0] + [(med[f"attn{h}"] - fixed) / L for h in range(1, geo.num_heads + 1)]
    ffn_raw = [0.0] + [(med[f"ffn{f}"] - fixed) / L for f in grid[1:]]
    measurements = {
        "graphs_ms": {k: round(v, 4) for k, v in med.items()},
        "statistic": deploy.statistic,
        "graphs_median_ms": {k: round(v["median_ms"], 4) for k, v in res.items()},
        "attn_raw_ms": [round(x, 4) for x in attn_raw],
        "ffn_raw_ms": [round(x, 4) for x in ffn_raw],
        "runs_per_graph": {k: v["runs"] for k, v in res.items()},
        "reference": "dense-fp32" if "dense-fp32" in res else "dense",
        "build_seconds": round(t_built - t_start, 1),
        "timing_seconds": round(time.time() - t_built, 1),
        "load_average_start": [round(x, 2) for x in load_start] if load_start else None,
        "load_average_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return LatencyTable(
        key=key,
        num_layers=L,
        num_heads=geo.num_heads,
        intermediate_size=geo.intermediate_size,
        fixed_ms=fixed,
        attn_ms=_monotone(attn_raw),
        ffn_grid=grid,
        ffn_ms=_monotone(ffn_raw),
        dense_ms=med["dense"],
        baseline_ms=med.get("dense-fp32", med["dense"]),
        measurements=measurements,
    )
