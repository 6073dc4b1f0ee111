"""Latency model of the deployment target: a per-layer lookup table measured with ONNX Runtime on the
deploy graphs of compress.speed.deploy_graph, and its cache.

Model (additive per layer; every layer of an encoder has the same geometry, so one row serves all):
    latency(structure) = fixed + sum_l attn[h_l] + ffn[f_l]
Measured at real depth L with every layer shrunk alike, so each difference is L times the per-layer
cost (better signal on a noisy machine than one layer alone):
    fixed   = T(0 heads, 0 dims)                     embeddings, LayerNorms, pooler, classifier
    attn[h] = (T(h, 0) - T(0, 0)) / L                h = 0..H, every head count
    ffn[f]  = (T(0, f) - T(0, 0)) / L                f on a grid (finer near 0), linear in between
Both curves are made non-decreasing (running maximum): removing structure never costs time, and a
noisy dip would otherwise mislead the budget solver. Every T is timed by time_graphs, in the same
rounds as the dense graph.

The hidden axis (DeployConfig.hidden_axis, for --prune-hidden): the same rows at a few smaller hidden
sizes k (hidden_grid: 1/4, 1/2, 3/4 of the hidden size, rounded to hidden_multiple), from graphs of the
model cut to k hidden dims in PyTorch (compress.core.hidden.slice_hidden) before export, the head size
unchanged. Every matmul left has one side = hidden and attention's QK^T / AV none, so each cost moves
smoothly with k; at each k only a few graphs are timed (fixed; 1, H/2 and H heads; three FFN widths)
and each full-size curve is scaled by one ratio per block, the summed time at those points over the
full-size curve's (per-point ratios were noise on a shared machine; the sum is dominated by the widest):
    attn_k[h] = attn[h] * sum_p attn_k(p) / sum_p attn(p),  likewise ffn_k[f]
Between measured sizes a cost is linear in k; below the smallest measured size the table refuses.
A row never costs more than the row of the next larger size. A table without hidden rows (older
tables too) is the model at its full hidden size.
Tables are cached per (device, execution provider, ORT version, threads, batch x seq, precision, model
geometry) in $COMPRESS_CACHE_DIR/latency, else $XDG_CACHE_HOME/compress/latency or ~/.cache/compress/latency.
Each is written to a temp file in the same folder and renamed onto its name, so two processes building
one table leave one whole file; a corrupt one is rebuilt with a warning; a cache folder that cannot be
written is an error before any timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from compress.core.artifacts import atomic_file
from compress.core.errors import ArtifactError, InvalidConfigError, first_line
from compress.speed.deploy_graph import DeployConfig, DeployGraphs, bench_config, time_graphs

# Raised whenever the way tables are timed changes, so that a cached table timed otherwise is rebuilt.
TABLE_FORMAT = 3


def hidden_multiple(hidden_size: int) -> int:
    """The step of kept hidden sizes: 32 (GEMM tiles) for real models, 8 for tiny ones."""
    for m in (32, 8):
        if hidden_size % m == 0 and hidden_size >= 4 * m:
            return m
    return 1


def hidden_grid(hidden_size: int) -> list[int]:
    """The smaller hidden sizes a table with a hidden axis is measured at: 1/4, 1/2 and 3/4 of the
    hidden size rounded to hidden_multiple (MiniLM's 384: 96, 192, 288). The full size is the main row."""
    m = hidden_multiple(hidden_size)
    sizes = {int(round(hidden_size * f / m)) * m for f in (0.25, 0.5, 0.75)}
    return sorted(k for k in sizes if 0 < k < hidden_size)


def ffn_grid(intermediate: int, step: int = 64) -> list[int]:
    """0, 16, 32, then every `step` dims, and the full width."""
    pts = {0, intermediate, *(p for p in (16, 32) if p < min(step, intermediate)), *range(step, intermediate, step)}
    return sorted(p for p in pts if p <= intermediate)


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
    # The hidden axis: the model's hidden size (the size of the row above) and rows at smaller sizes,
    # increasing: {"hidden": k, "fixed_ms": .., "attn_ms": [H + 1], "ffn_ms": [on ffn_grid]}. No rows (and
    # hidden_size 0 in tables from before the axis): the hidden size is fixed at the model's.
    hidden_size: int = 0
    hidden_rows: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.baseline_ms:
            self.baseline_ms = self.dense_ms
        sizes = [r.get("hidden") for r in self.hidden_rows]
        if self.hidden_rows and (
            not self.hidden_size
            or sizes != sorted(set(sizes))
            or not all(isinstance(k, int) and 0 <= k < self.hidden_size for k in sizes)
            or any(
                len(r["attn_ms"]) != self.num_heads + 1 or len(r["ffn_ms"]) != len(self.ffn_grid)
                for r in self.hidden_rows
            )
        ):
            raise ArtifactError("latency table hidden rows must be increasing sizes below the hidden size; rebuild it")
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

    # ------------------------------------------------------------------ hidden axis
    @property
    def hidden_sizes(self) -> list[int]:
        """The hidden sizes the table covers, measured ones, increasing (empty: unknown, full only)."""
        return [r["hidden"] for r in self.hidden_rows] + ([self.hidden_size] if self.hidden_size else [])

    @property
    def min_hidden(self) -> int:
        """The smallest hidden size the table can price (the full size without a hidden axis)."""
        return self.hidden_rows[0]["hidden"] if self.hidden_rows else self.hidden_size

    def at_hidden(self, hidden: int | None) -> "LatencyTable":
        """The table of the model with `hidden` kept hidden dims (None or the full size: this table), linear
        in the hidden size between the measured sizes."""
        if hidden is None or hidden == self.hidden_size:
            return self
        if not self.hidden_rows:
            raise InvalidConfigError(
                f"this latency table has no hidden axis, so it cannot price {hidden} hidden dims; build one with "
                "the hidden axis (`compress latency-table MODEL --prune-hidden`, or prune with --prune-hidden)"
            )
        if not self.min_hidden <= hidden <= self.hidden_size:
            raise InvalidConfigError(
                f"{hidden} hidden dims is outside the {self.min_hidden}..{self.hidden_size} the latency table measured"
            )
        cache = self.__dict__.setdefault("_at_hidden", {})  # not a field: not saved, not compared
        if hidden not in cache:
            rows = [*self.hidden_rows, self._row()]
            hi = next(i for i, r in enumerate(rows) if r["hidden"] >= hidden)
            a, b = rows[max(hi - 1, 0)], rows[hi]
            w = 0.0 if b["hidden"] == a["hidden"] else (hidden - a["hidden"]) / (b["hidden"] - a["hidden"])

            def mix(x, y):
                return [float((1 - w) * u + w * v) for u, v in zip(x, y)]

            cache[hidden] = LatencyTable(
                key=self.key,
                num_layers=self.num_layers,
                num_heads=self.num_heads,
                intermediate_size=self.intermediate_size,
                fixed_ms=mix([a["fixed_ms"]], [b["fixed_ms"]])[0],
                attn_ms=mix(a["attn_ms"], b["attn_ms"]),
                ffn_grid=list(self.ffn_grid),
                ffn_ms=mix(a["ffn_ms"], b["ffn_ms"]),
                dense_ms=self.dense_ms,
                unit=self.unit,
                baseline_ms=self.baseline_ms,
                hidden_size=hidden,
            )
        return cache[hidden]

    def _row(self) -> dict:
        return {"hidden": self.hidden_size, "fixed_ms": self.fixed_ms, "attn_ms": self.attn_ms, "ffn_ms": self.ffn_ms}

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

    def predict_ms(self, heads_per_layer: list[int], ffn_per_layer: list[int], hidden: int | None = None) -> float:
        """Cost of the structure; `hidden`: kept hidden dims (None: all)."""
        if len(heads_per_layer) != self.num_layers or len(ffn_per_layer) != self.num_layers:
            raise InvalidConfigError(
                f"a structure for {len(heads_per_layer)}/{len(ffn_per_layer)} layers does not fit "
                f"a table of {self.num_layers} layers"
            )
        t = self.at_hidden(hidden)
        return t.fixed_ms + sum(t.layer_ms(h, f) for h, f in zip(heads_per_layer, ffn_per_layer))

    def predict_kept(self, kept, hidden=None) -> float:
        """predict_ms for a kept structure: LayerKeeps or compression.json's `layers` entries; `hidden`: the
        kept hidden dims (a list, as compression.json's `hidden.kept`) or their count, None for all."""
        from compress.core.record import as_layer_keeps

        kept = as_layer_keeps(kept)
        return self.predict_ms([len(k.heads) for k in kept], [len(k.ffn_dims) for k in kept], hidden_count(hidden))

    @property
    def predicted_dense_ms(self) -> float:
        return self.predict_ms([self.num_heads] * self.num_layers, [self.intermediate_size] * self.num_layers)

    @property
    def floor_ms(self) -> float:
        """The least any structure can cost: every head and FFN dim gone."""
        return self.fixed_ms

    def speedup(self, heads_per_layer: list[int], ffn_per_layer: list[int], hidden: int | None = None) -> float:
        """Predicted speedup over the dense fp32 baseline."""
        return self.baseline_ms / self.predict_ms(heads_per_layer, ffn_per_layer, hidden)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyTable":
        if not isinstance(data, dict):
            raise ArtifactError(f"latency table is a JSON {type(data).__name__}, not an object; rebuild it")
        data = dict(data)
        version = data.pop("format", None)
        if version != TABLE_FORMAT:
            raise ArtifactError(
                f"latency table format {version!r} is not {TABLE_FORMAT}; rebuild it "
                "(`compress latency-table MODEL --rebuild`)"
            )
        try:
            return cls(**data)
        except ArtifactError:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as e:  # missing, extra or mistyped fields
            raise ArtifactError(f"latency table is malformed ({type(e).__name__}: {first_line(e)}); rebuild it") from e

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON (JSONDecodeError is a ValueError)
            raise ArtifactError(f"cannot read latency table {path} ({first_line(e)}); delete it to rebuild") from e

    def summary(self) -> dict:
        return {
            "unit": self.unit,
            "dense": round(self.dense_ms, 3),
            "baseline_fp32": round(self.baseline_ms, 3),
            "predicted_dense": round(self.predicted_dense_ms, 3),
            "fixed": round(self.fixed_ms, 3),
            "hidden_sizes": self.hidden_sizes,
            "key": self.key,
        }


def hidden_count(hidden) -> int | None:
    """Kept hidden dims given as a count, a list of dims or None (all) -> the count or None."""
    if hidden is None or isinstance(hidden, (int, np.integer)):
        return None if hidden is None else int(hidden)
    return len(hidden)


def _monotone(values) -> list[float]:
    """Running maximum from a 0 start: noise must not make removing structure look slower-free."""
    out, m = [], 0.0
    for v in values:
        m = max(m, float(v))
        out.append(m)
    return out


def flops_table(geo, batch: int = 1, seq: int = 128, model_key: dict | None = None) -> LatencyTable:
    """The hardware-free table (MFLOP of one batch): encoder-layer FLOPs only, as
    compress.core.sparsity.flops_per_token counts them (Q/K/V/O and attention products per head, W1/W2 per FFN dim);
    embeddings, LayerNorms and the classifier count 0. Use with --target-flops (a fraction of dense). Its hidden
    axis is exact: rows at hidden_grid's sizes, and FLOPs are linear in the hidden size between them."""
    tokens = batch * seq
    d = geo.head_size
    grid = [0, geo.intermediate_size]

    def row(h: int) -> dict:  # Q/K/V/O and W1/W2 are linear in the hidden size h; QK^T and AV do not see it
        per_head = 2 * tokens * (4 * h * d + 2 * seq * d) / 1e6
        per_dim = 2 * tokens * 2 * h / 1e6
        attn = [per_head * k for k in range(geo.num_heads + 1)]
        return {"hidden": h, "fixed_ms": 0.0, "attn_ms": attn, "ffn_ms": [0.0, per_dim * geo.intermediate_size]}

    full = row(geo.hidden_size)
    dense = geo.num_layers * (full["attn_ms"][-1] + full["ffn_ms"][-1])
    key = {"format": TABLE_FORMAT, "precision": "flops", "batch": batch, "seq": seq, "model": model_key or asdict(geo)}
    return LatencyTable(
        key,
        geo.num_layers,
        geo.num_heads,
        geo.intermediate_size,
        0.0,
        full["attn_ms"],
        grid,
        full["ffn_ms"],
        dense,
        unit="MFLOP",
        hidden_size=geo.hidden_size,
        hidden_rows=[row(k) for k in hidden_grid(geo.hidden_size)],
    )


def cache_dir() -> Path:
    root = os.environ.get("COMPRESS_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "latency"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "compress" / "latency"


def check_cache_writable(path: Path) -> None:
    """Before minutes of timing, not after: can a table be written next to `path` (in cache_dir())?
    Tried with a probe file, not read from mode bits (root, read-only mounts)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path.parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise InvalidConfigError(
            f"cannot write the latency-table cache {path.parent} ({e.strerror}); "
            "set COMPRESS_CACHE_DIR to a writable folder"
        ) from e


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


def table_hidden_sizes(config, deploy: DeployConfig) -> list[int]:
    """The smaller hidden sizes a table for this deployment is measured at (none without the hidden axis)."""
    from compress.core.structure import geometry

    return hidden_grid(geometry(config).hidden_size) if deploy.hidden_axis else []


def table_key(config, deploy: DeployConfig, hidden_sizes: list[int] | None = None) -> dict:
    """Everything the timings depend on. The model enters by geometry only: two checkpoints of the
    same shape (a teacher and its student) share a table. A table with a hidden axis also names its
    hidden sizes (`hidden_sizes`: default table_hidden_sizes); one without has the key it always had."""
    import onnxruntime as ort

    from compress.ort.bench import cpu_flags, cpu_model, gpu_name

    device = gpu_name() if deploy.provider == "cuda" else cpu_model()
    key = {
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
    sizes = table_hidden_sizes(config, deploy) if hidden_sizes is None else list(hidden_sizes)
    if sizes:
        key["hidden_sizes"] = sizes
    return key


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
    from compress.core.models import load_config, resolve_model

    deploy.validate()
    name = resolve_model(model)
    config = load_config(name)
    key = table_key(config, deploy)
    path = cache_path(key) if use_cache else None
    if path is not None and path.exists() and not rebuild:
        try:
            table = LatencyTable.load(path)
        except ArtifactError as e:  # an older format, or a file cut short (disk full, killed writer)
            sys.stderr.write(f"warning: rebuilding the cached latency table {path}: {first_line(e)}\n")
            table = None
        if table is not None and table.key == key:
            return table, path, True
    if path is not None:
        check_cache_writable(path)
    table = build_table(name, deploy, key=key, progress=progress)
    if path is not None:
        table.save(path)  # atomic (temp file in the same folder, then rename): concurrent builders never tear it
    return table, path, False


def build_table(
    model: str,
    deploy: DeployConfig,
    *,
    key: dict | None = None,
    progress: bool = True,
    classifier=None,
    hidden_sizes: list[int] | None = None,
) -> LatencyTable:
    """Measure the table (see the module docstring). `classifier`: an in-memory model to use instead
    of loading `model` (tests). `hidden_sizes`: the smaller hidden sizes to measure (default
    table_hidden_sizes: hidden_grid's with deploy.hidden_axis, else none)."""
    deploy.validate()
    t_start = time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="compress-latency-") as tmp:
        graphs = DeployGraphs(model, tmp, deploy, classifier=classifier)
        geo = graphs.geo
        sizes = table_hidden_sizes(graphs.config, deploy) if hidden_sizes is None else sorted(set(hidden_sizes))
        if any(not 0 < k < geo.hidden_size for k in sizes):
            raise InvalidConfigError(f"hidden sizes {sizes} of a latency table must lie in 1..{geo.hidden_size - 1}")
        if key is None:
            key = table_key(graphs.config, deploy, sizes)
        grid = ffn_grid(geo.intermediate_size, deploy.ffn_step)
        plan = _hidden_plan(sizes, geo.num_heads, grid)
        if plan:
            res, t_built = _time_table_graphs(graphs, grid, deploy, progress, hidden_plan=plan)
        else:
            res, t_built = _time_table_graphs(graphs, grid, deploy, progress)
    med = {k: v["ms"] for k, v in res.items()}
    L = geo.num_layers
    fixed = med["fixed"]
    attn_raw = [0.0] + [(med[f"attn{h}"] - fixed) / L for h in range(1, geo.num_heads + 1)]
    ffn_raw = [0.0] + [(med[f"ffn{f}"] - fixed) / L for f in grid[1:]]
    attn_ms, ffn_ms = _monotone(attn_raw), _monotone(ffn_raw)
    rows, hidden_raw = _hidden_rows(med, sizes, L, fixed, attn_ms, grid, ffn_ms)
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
    if hidden_raw:
        measurements["hidden_raw"] = hidden_raw
    return LatencyTable(
        key=key,
        num_layers=L,
        num_heads=geo.num_heads,
        intermediate_size=geo.intermediate_size,
        fixed_ms=fixed,
        attn_ms=attn_ms,
        ffn_grid=grid,
        ffn_ms=ffn_ms,
        dense_ms=med["dense"],
        baseline_ms=med.get("dense-fp32", med["dense"]),
        measurements=measurements,
        hidden_size=geo.hidden_size,
        hidden_rows=rows,
    )


def _hidden_points(num_heads: int, grid: list[int]) -> tuple[list[int], list[int]]:
    """The head counts and FFN widths timed at each smaller hidden size: 1, H/2 and H heads; the
    narrowest measured width, the one nearest half and the full width."""
    heads = sorted({1, max(1, num_heads // 2), num_heads}) if num_heads else []
    widths = grid[1:]
    half = min(widths, key=lambda f: abs(f - grid[-1] / 2)) if widths else None
    return heads, sorted({widths[0], half, widths[-1]}) if widths else []


def _hidden_plan(sizes: list[int], num_heads: int, grid: list[int]) -> dict[str, tuple[int, int, int]]:
    """label -> (heads, FFN dims, hidden size) of the graphs of the hidden axis, one size after another
    (DeployGraphs keeps one hidden cut's export at a time)."""
    heads, widths = _hidden_points(num_heads, grid)
    plan = {}
    for k in sizes:
        plan[f"h{k}-fixed"] = (0, 0, k)
        plan |= {f"h{k}-attn{h}": (h, 0, k) for h in heads}
        plan |= {f"h{k}-ffn{f}": (0, f, k) for f in widths}
    return plan


def _hidden_rows(med: dict, sizes: list[int], L: int, fixed: float, attn_ms: list, grid: list, ffn_ms: list):
    """(hidden_rows, their raw record) from the timed graphs of the hidden axis (see the module docstring)."""
    if not sizes:
        return [], {}
    heads, widths = _hidden_points(len(attn_ms) - 1, grid)
    larger = {"fixed_ms": fixed, "attn_ms": attn_ms, "ffn_ms": ffn_ms}
    rows, raw = [], {}

    def ratio(points, label, full, at, base) -> float:
        # Summed time at this size over the full-size curve's at the same points: one ratio per block and
        # size, dominated by the widest points, where the difference stands out of the noise most (per point,
        # the narrow ones' ratios were noise on a shared machine). At most 1: a narrower stream is never slower.
        timed = sum(max(med[label(p)] - base, 0.0) / L for p in points)
        whole = sum(full[at(p)] for p in points)
        return float(np.clip(timed / whole, 0.0, 1.0)) if whole > 0 else 0.0

    for k in reversed(sizes):  # from the largest down: each row is capped by the next larger one
        base = med[f"h{k}-fixed"]
        ra = ratio(heads, lambda h: f"h{k}-attn{h}", attn_ms, lambda h: h, base)
        rf = ratio(widths, lambda f: f"h{k}-ffn{f}", ffn_ms, grid.index, base)
        attn = [a * ra for a in attn_ms]
        ffn = [v * rf for v in ffn_ms]
        row = {
            "hidden": k,
            "fixed_ms": min(base, larger["fixed_ms"]),
            "attn_ms": _monotone(np.minimum(attn, larger["attn_ms"])),
            "ffn_ms": _monotone(np.minimum(ffn, larger["ffn_ms"])),
        }
        raw[str(k)] = {
            "fixed_ms": round(base, 4),
            "attn_ms": {str(h): round((med[f"h{k}-attn{h}"] - base) / L, 4) for h in heads},
            "ffn_ms": {str(f): round((med[f"h{k}-ffn{f}"] - base) / L, 4) for f in widths},
            "attn_ratio": round(ra, 4),
            "ffn_ratio": round(rf, 4),
        }
        rows.append(row)
        larger = row
    return rows[::-1], raw


def _time_table_graphs(
    graphs: DeployGraphs, grid: list[int], deploy: DeployConfig, progress: bool, hidden_plan: dict | None = None
):
    """(time_graphs' result for every table entry and the dense graphs, when building them ended)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    geo = graphs.geo
    plan = {
        "fixed": (0, 0, None),
        **{f"attn{h}": (h, 0, None) for h in range(1, geo.num_heads + 1)},
        **{f"ffn{f}": (0, f, None) for f in grid[1:]},
        **(hidden_plan or {}),
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task(f"latency table {deploy.precision} {deploy.shape}: building graphs", total=len(plan) + 1)
        paths = {}
        for label, (h, f, k) in plan.items():
            paths[label] = graphs.uniform(h, f, name=label, hidden=k)
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
    return res, t_built
