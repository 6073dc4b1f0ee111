"""ONNX files on disk: finding and checking a model.onnx (external data, a forgotten contrib-op domain),
the files that travel with it, its config.json, and the first line of the errors ONNX tools raise.
"""

from __future__ import annotations

import json
import os
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
