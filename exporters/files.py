"""ONNX files on disk: finding and checking a model.onnx (external data, a forgotten contrib-op domain),
the files that travel with it, its config.json, and the first line of the errors ONNX tools raise.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from compress.core.errors import ArtifactError
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


# protobuf cannot serialize a message past 2 GiB: a bigger model keeps its weights in external data on disk,
# and is handed to ONNX Runtime and the checker as a path, never as bytes.
PROTOBUF_LIMIT = 2**31 - 1


def over_protobuf_limit(model) -> bool:
    """Whether `model` (a ModelProto in memory) is too large to serialize in one piece."""
    try:
        return model.ByteSize() > PROTOBUF_LIMIT
    except Exception:  # past the limit, ByteSize itself raises EncodeError
        return True


def save_model(model, path: str | os.PathLike, data_name: str | None = None) -> None:
    """onnx.save; a model past 2 GiB gets its weights in one external-data file beside `path` (named
    `data_name`, default the file's name + '.data'), and keeps them in memory as before."""
    import onnx

    path = Path(path)
    if not over_protobuf_limit(model):
        onnx.save(model, str(path))
        return
    location = data_name or path.name + ".data"
    (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    onnx.load_external_data_for_model(model, str(path.parent))  # saving moved the weights out of `model`


@contextlib.contextmanager
def on_disk(model):
    """A path to `model`: a temporary file (weights in external data beside it) removed afterwards; for the
    tools that take a large model by path only."""
    with tempfile.TemporaryDirectory(prefix="compress-large-") as tmp:
        path = Path(tmp) / MODEL_FILE
        save_model(model, path)
        yield path


def check_model(model) -> None:
    """onnx.checker.check_model of a ModelProto of any size (past 2 GiB through a file: the path form of
    the checker follows external data)."""
    import onnx

    if not over_protobuf_limit(model):
        onnx.checker.check_model(model)
        return
    with on_disk(model) as path:
        onnx.checker.check_model(str(path))


def first_line(e: BaseException) -> str:
    """The first line of an exception message (ORT and onnx append long C++ context)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:200]


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
            # a sentence-transformers folder keeps its graphs in onnx/
            found = sorted(x.relative_to(p).as_posix() for x in [*p.glob("*.onnx"), *p.glob("onnx/*.onnx")])
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


def read_config(model_dir: str | Path | None) -> dict:
    """config.json next to a graph, or {} when there is none (or it is unreadable)."""
    if model_dir is None:
        return {}
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
