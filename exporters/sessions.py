"""ONNX Runtime sessions: creating one for a file or an in-memory graph, running it, comparing two graphs
numerically, and collecting the advice ORT's python tools log.

Every numeric check goes through checked_diff: np.max of a difference holding NaN is NaN, and a running
max(worst, nan) keeps `worst`, so without it a graph whose outputs are all NaN would pass."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from compress.core.errors import ArtifactError, CompressError, ValidationError
from exporters.files import first_line, on_disk, over_protobuf_limit, resolve_onnx

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class _Collect(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage().splitlines()[0]
        if msg not in self.messages:
            self.messages.append(msg)


@contextlib.contextmanager
def ort_logging(level: int = logging.WARNING):
    """ORT's python tools (optimizer, quantizer, shape inference) log advice through the root logger;
    collect those messages (yielded list) instead of printing them, and restore the logger after."""
    root = logging.getLogger()
    handler = _Collect(level)
    saved = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(level)
    try:
        yield handler.messages
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def make_session(
    model: str | os.PathLike | object,
    provider: str = "cpu",
    threads: int | None = None,
    *,
    check: bool = True,
    optimization: str = "all",
    spinning: bool = True,
):
    """An InferenceSession on `provider` ("cpu" or "cuda") for a file, a folder holding model.onnx, or an
    in-memory onnx.ModelProto, with a fixed intra-op thread count (None: ONNX Runtime picks).

    Inter-op parallelism stays at 1: encoders are one long chain of ops, so it only adds contention.
    spinning=False stops the intra-op threads from busy-waiting between ops and after each run (ORT's
    default is to spin); benchmarks that interleave sessions either settle spinning threads or turn it off,
    see compress.ort.bench.
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise CompressError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise CompressError(
            f"{wanted} is not available in onnxruntime {ort.__version__} (it has "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu with a matching CUDA "
            "(pip install 'compress-encoders[gpu]') or use --provider cpu"
        )
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from the nvidia-* wheels that a CUDA PyTorch already
        # installed, so no system-wide CUDA toolkit is needed; without them session creation reports it below.
        try:
            ort.preload_dlls()
        except Exception:
            pass
    in_memory = hasattr(model, "SerializeToString")
    if in_memory and over_protobuf_limit(model):  # past 2 GiB ORT takes it from a file only
        with on_disk(model) as path:
            return make_session(path, provider, threads, check=False, optimization=optimization, spinning=spinning)
    source = model.SerializeToString() if in_memory else str(resolve_onnx(model, check=check))
    what = "the graph" if in_memory else source
    opts = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise CompressError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    levels = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise CompressError(f"unknown optimization level {optimization!r}; choose {', '.join(levels)}")
    opts.graph_optimization_level = levels[optimization]
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    providers = [wanted] if provider == "cpu" else [wanted, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises Fail/InvalidGraph/NotImplemented with long C++ messages
        error = ValidationError if in_memory else ArtifactError
        raise error(f"ONNX Runtime cannot load {what}: {first_line(e)}") from e
    # ORT silently falls back to CPU when the CUDA libraries fail to load; say so instead.
    if provider == "cuda" and wanted not in session.get_providers():
        raise CompressError(
            f"{wanted} is installed but could not be initialised (CUDA/cuDNN libraries missing or no GPU); "
            "check `nvidia-smi` and the onnxruntime-gpu CUDA version, or use --provider cpu"
        )
    return session


def run(model_or_session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name; feeds the graph does not take are dropped. A ModelProto gets a 1-thread CPU session."""
    sess = (
        make_session(model_or_session, threads=1)
        if hasattr(model_or_session, "SerializeToString")
        else model_or_session
    )
    names = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def checked_diff(reference, candidate, output: str, what: str, source: str = "its source") -> float:
    """Max |candidate - reference| of one output, in float64. ValidationError (one line) when the two
    cannot be compared: a NaN in the reference (it proves nothing, not even against the same NaN), or a
    NaN / inf in the candidate where the reference holds something else. An inf both hold at the same
    place counts as equal (e.g. masked logits)."""
    r, c = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    finite_r, finite_c = np.isfinite(r), np.isfinite(c)
    if not (finite_r.all() and finite_c.all()):
        nan_r = int(np.isnan(r).sum())
        if nan_r:
            raise ValidationError(
                f"{what}: {source}'s output {output!r} holds {nan_r} NaN of {r.size} values on the sample "
                "inputs, so nothing can be checked against it; fix the source first"
            )
        same = np.isinf(r) & (c == r)
        bad = int((~finite_c & ~same).sum())
        if bad:
            raise ValidationError(
                f"{what}: output {output!r} holds {bad} NaN/inf of {c.size} values where {source}'s are finite"
            )
        lost = int((~finite_r & ~same).sum())
        if lost:
            raise ValidationError(f"{what}: output {output!r} is finite at {lost} places where {source}'s is inf")
        both = finite_r & finite_c
        return float(np.max(np.abs(c[both] - r[both]), initial=0.0))
    return float(np.max(np.abs(c - r), initial=0.0))


def assert_close(reference, candidate, sample_inputs, atol: float, what: str) -> float:
    """Max |candidate - reference| over every output and sample batch; ValidationError above atol or on
    NaN / inf (see checked_diff)."""
    ref_s, cand_s = make_session(reference, threads=1), make_session(candidate, threads=1)
    worst = 0.0
    for feeds in sample_inputs:
        ref, cand = run(ref_s, feeds), run(cand_s, feeds)
        for name, r in ref.items():
            if name not in cand or cand[name].shape != r.shape:
                raise ValidationError(
                    f"{what}: output {name!r} is missing or has shape "
                    f"{getattr(cand.get(name), 'shape', None)} instead of {r.shape}"
                )
            worst = max(worst, checked_diff(r, cand[name], name, what))
    if not worst <= atol:
        raise ValidationError(f"{what} differs from its source by {worst:.3g} (max abs) > atol {atol:g}")
    return worst
