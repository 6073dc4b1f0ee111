"""The one ONNX toolbox every ONNX-side module shares: file checks, ONNX Runtime sessions, inputs to
run a graph with (tokenized sentences or seeded random ids), the files that travel with model.onnx,
ORT's logging, the contrib-op domain, and comparing two graphs numerically.

Light imports at module level (numpy only), so the CLI parser and the shrink path stay quick.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from compress.core.errors import ArtifactError, CompressError, ValidationError
from exporters.spec import MODEL_FILE

# Files that describe the model next to model.onnx: copied along so an exported, shrunk or quantized
# model stays usable on its own (tokenizer + config).
SIDECAR_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# A few sentences of different lengths: validation runs on real tokenized text, not random ids.
SENTENCES = (
    "the movie is good",
    "a great film, with very fun actors and a plot that was not boring at all!",
    "it was bad.",
    "the actors are great but the plot is awful and the film is very boring from the start",
    "an awful film",
    "good",
)


def first_line(e: BaseException) -> str:
    """The first line of an exception message (ORT and onnx append long C++ context)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:200]


# ------------------------------------------------------------------------------------------ logging
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


# ------------------------------------------------------------------------------------------ graphs
def import_contrib_domains(model) -> None:
    """Declare every op domain the graph uses. ORT's optimizer returns graphs with com.microsoft ops
    without importing that domain (only its save_model_to_file adds it); the checker and shape
    inference reject such graphs."""
    import onnx

    domains = {o.domain for o in model.opset_import}
    for d in sorted({n.domain for n in model.graph.node} - domains - {"", "ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(d, 1))


def has_contrib_ops(model) -> bool:
    return any(n.domain not in ("", "ai.onnx") for n in model.graph.node)


def resolve_onnx(path: str | os.PathLike, check: bool = True) -> Path:
    """Return the .onnx file behind `path` (a file, or a directory holding model.onnx).

    With `check`, the file is parsed and run through onnx.checker so that a truncated download or a
    half-written file fails here with a clear message rather than deep inside ONNX Runtime.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / MODEL_FILE).is_file():
            found = sorted(x.name for x in p.glob("*.onnx"))
            hint = f" (it holds {', '.join(found)}; pass that file)" if found else ""
            raise ArtifactError(f"{p} has no {MODEL_FILE}{hint}")
        p = p / MODEL_FILE
    elif not p.exists():
        raise ArtifactError(f"ONNX model {p} not found; pass a .onnx file or a directory holding {MODEL_FILE}")
    if check:
        check_onnx(p)
    return p


def check_onnx(path: Path) -> None:
    """Parse and check an ONNX file; any failure becomes an ArtifactError naming the file."""
    import onnx

    if path.stat().st_size == 0:
        raise ArtifactError(f"{path} is empty (0 bytes); re-export it")
    _check_external_data(path)
    try:
        # The path form of the checker also follows external data and works beyond 2 GB.
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        if "No opset import for domain" in str(e) and _valid_with_domain_imports(path):
            return  # an optimizer forgot to import com.microsoft; ONNX Runtime accepts that, so do we
        raise ArtifactError(f"{path} fails the ONNX checker ({first_line(e)}); re-export it") from e
    except Exception as e:  # protobuf DecodeError, OSError...: the bytes are not a model
        raise ArtifactError(
            f"{path} is not a valid ONNX file ({e.__class__.__name__}: {first_line(e)}); "
            "it is corrupt or truncated: re-export it"
        ) from e


def _check_external_data(path: Path) -> None:
    """Weights saved as external data live in files beside the .onnx; a copy without them fails in the
    checker with a message about a tensor, so name the missing file instead."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return  # not parseable: the checker below reports it
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if location and not (path.parent / location).is_file():
            raise ArtifactError(
                f"{path} keeps its weights in the external data file {location}, which is missing "
                f"beside it; copy {location} into {path.parent}"
            )


def _valid_with_domain_imports(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    import_contrib_domains(model)
    try:
        onnx.checker.check_model(model)
    except Exception:
        return False
    return True


def graph_inputs(model) -> list[tuple[str, str]]:
    """(name, ONNX type string such as 'tensor(int64)') for each real input of an onnx.ModelProto
    (initializers listed as inputs by old exporters are not inputs)."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    return [
        (i.name, f"tensor({onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower()})")
        for i in model.graph.input
        if i.name not in inits
    ]


def read_config(model_dir: str | Path | None) -> dict:
    """config.json next to a graph, or {} when there is none (or it is unreadable)."""
    if model_dir is None:
        return {}
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def vocab_size(model, model_dir: str | Path | None = None) -> int:
    """Vocabulary size from config.json, else from the embedding table that input_ids indexes
    (through Casts: fused graphs feed int32 ids to EmbedLayerNormalization); 100 if neither."""
    v = read_config(model_dir).get("vocab_size")
    if isinstance(v, int) and v > 0:
        return v
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    ids = {"input_ids"}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.input[0] in ids:
            ids.add(n.output[0])
    sizes = []
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[1:2] and n.input[1] in ids:
            table = n.input[0]
        elif n.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
            table = n.input[2]  # (input_ids, segment_ids, word_embedding, position_embedding, ...)
        else:
            continue
        if len(shapes.get(table, [])) == 2:
            sizes.append(shapes[table][0])
    return min(sizes) if sizes else 100  # 100: a small range that any real vocabulary covers


# ------------------------------------------------------------------------------------------ inputs
def load_tokenizer(directory: str | Path, required: bool = False):
    """The tokenizer saved in `directory`. Without `required`, None when there is none or it cannot be
    read (callers then fall back to random ids); with it, an ArtifactError naming the folder."""
    try:
        from transformers import AutoTokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # missing files, unreadable vocab: transformers raises many types
        if required:
            raise ArtifactError(f"cannot load a tokenizer from {directory} ({first_line(e)})") from e
        return None


def random_feeds(
    inputs: list[tuple[str, str]],
    vocab: int,
    batch: int = 2,
    seq: int = 16,
    seed: int = 0,
    *,
    low: int = 0,
    ragged: bool = False,
) -> dict[str, np.ndarray]:
    """Seeded random token ids for every graph input (ids in [low, vocab); masks of ones, or with
    `ragged` each row after the first padded further, like a real batch; token types zero)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(low, max(vocab - 1, 0)), max(vocab, 1), size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if ragged:
        for r in range(1, batch):
            mask[r, seq - (r * seq) // (batch + 1) :] = 0
    feeds = {}
    for name, kind in inputs:
        arr = ids if name == "input_ids" else mask if name == "attention_mask" else np.zeros((batch, seq), np.int64)
        feeds[name] = arr.astype(np.int32) if kind == "tensor(int32)" else arr
    return feeds


def sample_inputs(
    input_names: list[str], tokenizer=None, vocab: int = 100, max_length: int = 48, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Validation batches of several sizes and lengths, padded so the attention mask matters.
    Real tokenized sentences when a tokenizer is given; otherwise seeded random ids."""
    if tokenizer is None:
        typed = [(n, "tensor(int64)") for n in input_names]
        return [
            random_feeds(typed, vocab, b, length, seed, ragged=True) for b, length in ((1, 5), (3, 17), (6, max_length))
        ]
    batches = []
    for texts, padding in ((SENTENCES[:1], "longest"), (SENTENCES[1:4], "longest"), (SENTENCES, "max_length")):
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="np")
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        batches.append({k: np.asarray(enc[k], dtype=np.int64) if k in enc else np.zeros_like(ids) for k in input_names})
    return batches


# ------------------------------------------------------------------------------------------ sessions
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


def assert_close(reference, candidate, sample_inputs, atol: float, what: str) -> float:
    """Max |candidate - reference| over every output and sample batch; ValidationError above atol."""
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
            worst = max(worst, float(np.max(np.abs(cand[name].astype(np.float64) - r))) if r.size else 0.0)
    if not worst <= atol:
        raise ValidationError(f"{what} differs from its source by {worst:.3g} (max abs) > atol {atol:g}")
    return worst
