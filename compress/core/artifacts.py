"""Atomic outputs, checksums and `compression.json`, the contract between PyTorch and ONNX sides.

compression.json (format_version 1):
  method, recipe (every hyper-parameter), model_type, geometry {num_layers, num_heads, head_size,
  hidden_size, intermediate_size}, layers [{heads_kept: [int], ffn_dims_kept: [int]}] (indices into
  the dense model), sparsity {per_matrix: {"layer.i.role": fraction zero}, encoder_linear},
  params {encoder_linear_dense, encoder_linear_nonzero, encoder_linear_after_removal},
  metrics {...}, versions {...}, files {name: sha256}.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from compress.core.errors import ArtifactError, InvalidConfigError

COMPRESSION_JSON = "compression.json"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a non-empty output directory unless overwrite is set."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidConfigError(f"output {path} exists and is a file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InvalidConfigError(f"output directory {path} exists and is not empty; pass --overwrite or pick another path")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    On any exception (Ctrl-C included) the temporary directory is removed and `path` is untouched.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_compression_json(directory: str | os.PathLike, verify: bool = True) -> dict | None:
    """Read DIR/compression.json if present; verify the checksums of the files it lists."""
    p = Path(directory) / COMPRESSION_JSON
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{p} is not valid JSON ({e}); re-run the step that wrote it") from e
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{p} has format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
    if verify:
        for name, digest in data.get("files", {}).items():
            f = Path(directory) / name
            if not f.exists():
                raise ArtifactError(f"{f} listed in compression.json is missing; the directory is incomplete")
            if sha256_file(f) != digest:
                raise ArtifactError(
                    f"{f} does not match the checksum in compression.json (corrupt, truncated or replaced); "
                    "re-export it or remove compression.json if you edited the weights on purpose"
                )
    return data


def record_checksums(directory: str | os.PathLike, data: dict, names: list[str]) -> dict:
    data["files"] = {n: sha256_file(Path(directory) / n) for n in names if (Path(directory) / n).exists()}
    return data
