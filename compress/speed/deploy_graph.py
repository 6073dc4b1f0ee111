"""The deployment a speed target is for, and its graphs: what is timed is what ships.

DeployConfig says where and how the pruned model will run. DeployGraphs exports the user's model once
with our own exporter and gives the deploy graph of any kept structure: cut down by our own surgery
(exporters.surgery.shrink), fused by ORT's transformer optimizer like `compress export --shrink --optimize`,
and for int8 quantized by compress's own quantize_onnx, exactly as `compress run` builds its deploy
graphs. So a fused Attention op with h heads, an FFN MatMul pair of width f, int8 MatMulInteger kernels
and a head-free layer's bypass are what the timings describe.

time_graphs times such graphs against a reference graph (the dense one) with the harness `compress bench`
uses (compress.ort.timing): loaded a chunk at a time next to the reference and run in interleaved rounds;
each graph's figure is the median over rounds of its time / the reference's time in the same round, times
the reference's median (statistic "median"; the fastest round, "min", is recorded too). Each timed sample
averages enough back-to-back runs to last ~100 ms, so a batch-1 graph is not judged by single runs that
another job interrupted, and ORT's threads are settled before each sample, so each graph runs as it would
deployed alone with ORT's default threads.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import ArtifactError, InvalidConfigError
from compress.ort.timing import interleaved_rounds, runs_per_sample, settle

PRECISIONS = ("fp32", "int8")


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
    # Also time graphs at smaller hidden sizes (compress.speed.table.hidden_grid), for --prune-hidden. Off, the
    # table and its cache key are those of a table without a hidden axis.
    hidden_axis: bool = False

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


# The sequence length of a deploy shape read from the task's data ('32xdata'): compress.speed.plan's
# resolve_deploy_shape turns it into a number before anything parses the shape.
DATA_SEQ = "data"


def parse_shape(text: str) -> tuple[int, int]:
    """'32x128' -> (32, 128)."""
    if text.lower().partition("x")[2] == DATA_SEQ:
        raise InvalidConfigError(
            f"--deploy-shape {text}: the length '{DATA_SEQ}' is read from the task's dev data, which only "
            "compress prune and compress run do; give a number here, e.g. 32x128"
        )
    try:
        b, s = (int(x) for x in text.lower().split("x"))
    except ValueError as e:
        raise InvalidConfigError(f"--deploy-shape {text!r} is not BATCHxSEQ; e.g. 32x128") from e
    if b < 1 or s < 1:
        raise InvalidConfigError(f"--deploy-shape {text!r} needs positive sizes; e.g. 32x128")
    return b, s


class DeployGraphs:
    """The user's model exported once by our exporter; `build(kept)` gives the deploy graph of any kept
    structure (surgery, ORT fusions, int8), as files under `workdir`. Also used by the benchmark to
    measure whole pruned models."""

    def __init__(self, model: str, workdir: str | os.PathLike, deploy: DeployConfig, classifier=None):
        import onnx

        from compress.core.models import load_classifier, load_config
        from compress.core.structure import geometry
        from exporters.export import export_checkpoint
        from exporters.inputs import sample_inputs

        self.deploy = deploy
        self.workdir = Path(workdir)
        self.config = load_config(model) if classifier is None else classifier.config
        self.geo = geometry(self.config)
        self._ckpt = self.workdir / "checkpoint"
        model_obj = classifier if classifier is not None else load_classifier(model)
        model_obj.save_pretrained(self._ckpt)  # no tokenizer needed: graphs are checked on random ids
        export_checkpoint(self._ckpt, self.workdir / "dense-export", validate=False, shrink=False)  # build() cuts it
        self.dense = onnx.load(str(self.workdir / "dense-export" / "model.onnx"))
        shutil.rmtree(self.workdir / "dense-export", ignore_errors=True)
        self._narrow: tuple[tuple[int, ...], onnx.ModelProto] | None = None  # the last hidden-cut export
        names = [i.name for i in self.dense.graph.input]
        # One small random batch: enough for ORT's fusion check (exporters.optimize) to catch a wrong fusion.
        self.batches = sample_inputs(names, None, getattr(self.config, "vocab_size", 100), 16)[:2]
        self._n = 0

    def export_at(self, hidden: list[int] | None):
        """The export of the model with only the hidden dims `hidden` (None: all of them), cut in PyTorch by
        compress.core.hidden.slice_hidden before export, as `compress export` does for a hidden-pruned
        checkpoint. The checkpoint is reloaded for each cut (eager attention, as the exporter loads it)."""
        import onnx

        from compress.core.hidden import slice_hidden
        from exporters.export import export_checkpoint, infer_task, load_for_task

        if hidden is None or len(hidden) == self.geo.hidden_size:
            return self.dense
        key = tuple(sorted(int(i) for i in hidden))
        if not key or key[0] < 0 or key[-1] >= self.geo.hidden_size:
            raise InvalidConfigError(f"kept hidden dims must lie in 0..{self.geo.hidden_size - 1}, got {len(key)} dims")
        if self._narrow is None or self._narrow[0] != key:
            self._narrow = None  # free the previous cut's graph first
            model = slice_hidden(load_for_task(self._ckpt, infer_task(self.config)), list(key))
            out = self.workdir / f"export-h{len(key)}"
            export_checkpoint(self._ckpt, out, validate=False, shrink=False, model=model, overwrite=True)
            self._narrow = (key, onnx.load(str(out / "model.onnx")))
            shutil.rmtree(out, ignore_errors=True)
        return self._narrow[1]

    def build(
        self, kept: list[dict] | None, name: str | None = None, precision: str | None = None, hidden=None
    ) -> Path:
        """Deploy graph (model.onnx path) for `kept` (compression.json `layers` form; None = dense), at the
        deploy precision unless `precision` is given, keeping the hidden dims `hidden` (None: all)."""
        import gc

        import onnx

        from exporters.surgery.rewrite import normalize_heads
        from exporters.surgery.shrink import shrink

        self._n += 1
        name = name or f"g{self._n}"
        # Graph rewrites leave reference cycles holding whole model copies; collect them now or a
        # 40-graph table of MiniLM grows past 7 GB before Python's object-count trigger fires.
        gc.collect()
        source = self.export_at(hidden)
        if kept is None:
            graph = normalize_heads(source, self.geo.head_size)
        else:
            graph, _ = shrink(self._zeroed(kept, source), kept, self.geo.num_heads, self.geo.head_size)
        if self.deploy.optimize:
            from exporters.optimize import optimize

            graph, _ = optimize(graph, self.batches, atol=1e-3)
        out = self.workdir / name
        out.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(out / "model.onnx"))
        self.config.to_json_file(str(out / "config.json"))
        if (precision or self.deploy.precision) == "fp32":
            return out / "model.onnx"
        from compress.core.config import QuantizeConfig
        from compress.ort.quantize import quantize_onnx

        res = quantize_onnx(
            out / "model.onnx", self.workdir / f"{name}-int8", QuantizeConfig(), threads=self.deploy.threads
        )
        (out / "model.onnx").unlink()
        return Path(res.output)

    def _zeroed(self, kept: list[dict], source):
        """The dense export with the output weights (W_O rows, W2 rows) of the removed heads / dims set
        to zero, as a pruned checkpoint's export would have them: the surgery only cuts structure it can
        see is dead. Latency does not depend on the values of the weights that remain."""
        import copy

        from onnx import numpy_helper

        from compress.core.record import as_layer_keeps
        from exporters.graph import Graph
        from exporters.surgery.layers import find_layers

        kept = as_layer_keeps(kept)
        model = copy.deepcopy(source)
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

    def uniform(self, heads: int, dims: int, name: str | None = None, hidden: int | None = None) -> Path:
        """Every layer keeps its first `heads` heads and `dims` FFN dims; the first `hidden` hidden dims
        (None: all). Latency does not depend on which ones."""
        kept = [{"heads_kept": list(range(heads)), "ffn_dims_kept": list(range(dims))}] * self.geo.num_layers
        return self.build(kept, name, hidden=None if hidden is None else list(range(hidden)))


def bench_config(deploy: DeployConfig):
    """The compress bench settings that time graphs for this deployment."""
    from compress.core.config import BenchConfig

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
    activation arena: 40 MiniLM sessions at 32x128 took 6 GB) and timed in interleaved rounds.
    A graph's figure is the median over rounds of its time / the reference's time in the same round,
    times the reference's median over all rounds: load from other processes that comes and goes
    between chunks cancels in the ratio. Each timed sample repeats a graph so it lasts about
    deploy.min_sample_ms (timer and scheduler jitter matter at batch 1). A graph's folder is deleted
    once loaded when `delete` (DeployGraphs gives each graph a folder of its own)."""
    import gc

    bc = bench_config(deploy)
    reference = reference or next(iter(paths))
    others = [k for k in paths if k != reference]
    chunks = [others[i : i + chunk] for i in range(0, len(others), chunk)] or [[]]
    total = deploy.repeats * sum(len(c) + 1 for c in chunks)
    done = 0

    def count_sample():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    ref_call, ref_inner = _load_timed(paths[reference], reference, deploy, bc, delete)
    ref_samples: list[float] = []
    ratios: dict[str, list[float]] = {}
    raw: dict[str, list[float]] = {}
    inner = {reference: ref_inner}
    for labels in chunks:
        calls = {reference: ref_call}
        for label in labels:
            calls[label], inner[label] = _load_timed(paths[label], label, deploy, bc, delete)
        seconds = interleaved_rounds(calls, deploy.repeats, bc, repeats=inner, after_sample=count_sample)
        rounds = {k: [s * 1e3 / inner[k] for s in v] for k, v in seconds.items()}
        ref_samples += rounds[reference]
        for label in labels:
            raw[label] = rounds[label]
            ratios[label] = [t / ref for t, ref in zip(rounds[label], rounds[reference])]
        del calls, rounds
        gc.collect()
    return _timing_record(reference, ref_samples, raw, ratios, inner, deploy.statistic)


def _load_timed(path: Path, label: str, deploy: DeployConfig, bc, delete: bool):
    """(one-run callable of the graph at the deploy shape, runs per timed sample)."""
    from compress.ort.bench import onnx_runner

    call = onnx_runner(str(path), bc, label=label).prepare(deploy.batch, deploy.seq)
    call()  # warm-up: the first run allocates
    settle(call, bc)  # the previous graph's threads must not spin while the runs per sample are sized
    if delete:
        shutil.rmtree(path.parent, ignore_errors=True)
    return call, runs_per_sample(call, deploy.min_sample_ms)


def _timing_record(reference: str, ref_samples: list[float], raw: dict, ratios: dict, inner: dict, statistic: str):
    """time_graphs' result from the reference's samples and the others' (in loading order) ms and ratios."""
    ref_ms = float(np.median(ref_samples))
    out = {
        reference: {
            "median_ms": ref_ms,
            "min_ms": float(np.min(ref_samples)),
            "runs": len(ref_samples) * inner[reference],
            "samples_ms": [round(x, 4) for x in ref_samples],
        }
    }
    for label in raw:
        out[label] = {
            "median_ms": float(np.median(ratios[label])) * ref_ms,
            "min_ms": float(np.min(raw[label])),
            "runs": len(raw[label]) * inner[label],
            "median_ratio_to_reference": round(float(np.median(ratios[label])), 5),
            "samples_ms": [round(x, 4) for x in raw[label]],
        }
    for v in out.values():
        v["ms"] = v["min_ms"] if statistic == "min" else v["median_ms"]
    return out
