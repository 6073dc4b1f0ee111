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

# Files of a model folder (checkpoint or ONNX export) that no report may be written over.
MODEL_FOLDER_FILES = (
    "model.onnx",
    "model.onnx.data",
    "model.safetensors",
    "config.json",
    COMPRESSION_JSON,
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_dir(path: str | os.PathLike, overwrite: bool, inputs: tuple = ()) -> Path:
    """Refuse a non-empty output directory unless overwrite is set, an output that is or holds one of
    `inputs`, and a location that cannot be written (checked before any work starts)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidConfigError(f"output {path} exists and is a file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InvalidConfigError(
            f"output directory {path} exists and is not empty; pass --overwrite or pick another path"
        )
    check_not_input(path, inputs)
    check_writable(path, directory=True, replace=path.is_dir())
    return path


def check_output_file(path: str | os.PathLike | None, inputs: tuple = ()) -> Path | None:
    """For a report/JSON/ONNX file written at the end of a verb: fail now, not after the work."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise InvalidConfigError(f"output {path} is a directory; give a file path")
    check_not_input(path, inputs)
    check_writable(path, directory=False)
    return path


def check_not_input(output: Path, inputs) -> None:
    """An output that is one of the inputs, or a folder holding one, would be replaced while in use."""
    out = Path(output).resolve()
    for i in inputs:
        if not i:
            continue
        src = Path(i).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if out == src or out in src.parents:
            what = "is" if out == src else "contains"
            raise InvalidConfigError(f"output {output} {what} the input {i}; write the result somewhere else")


def check_writable(path: Path, directory: bool, replace: bool = False) -> None:
    """Can `path` be created (or, with `replace`, swapped for a new one)? Tried, not guessed from mode
    bits: a probe file in the nearest existing folder, which also covers read-only mounts and root."""
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidConfigError(f"cannot write {path}: {parent} is a file, not a folder; choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.tmp-probe-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise InvalidConfigError(
            f"cannot write {path}: {e.strerror} in {parent}; choose a writable output location"
        ) from e
    if replace and directory and not os.access(path, os.W_OK | os.X_OK):
        raise InvalidConfigError(
            f"cannot write {path}: the existing folder is read-only, so --overwrite could not "
            "remove its files; fix its permissions or choose another output"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(path: Path) -> None:
    """mkdtemp/mkstemp create 0700/0600 and copy2 copies source modes (a read-only teacher's 0444);
    give every output the modes a plain mkdir/open would, so a serving process under another user
    can read model.onnx."""
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                if not os.path.islink(os.path.join(root, f)):
                    os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    On any exception (Ctrl-C included) the temporary directory is removed and `path` is untouched.
    """
    path = check_output_dir(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidConfigError(f"cannot write {path}: {e.strerror}; choose a writable output location") from e
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, path: Path) -> None:
    """Give `tmp` the umask's modes and rename it onto `path` (an existing `path` is swapped out first)."""
    _apply_umask(tmp)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def partial_dir(path: str | os.PathLike) -> Path:
    """The work folder of a resumable output DIR: `.DIR.partial` beside it. One fixed name, not a random
    one, so the work of a run that was killed (SIGKILL runs no cleanup) is found again by --resume."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def resumable_dir(
    path: str | os.PathLike, overwrite: bool = False, resume: bool = False, keep=lambda work: True
) -> Iterator[tuple[Path, bool]]:
    """atomic_dir for a long multi-stage job: yields (work folder, whether it holds an earlier attempt). The work
    folder is partial_dir(path); on success it replaces `path` in one rename, as with atomic_dir. On an
    exception it is kept when `keep(work)` says it holds work --resume can reuse, else removed.

    A work folder left by an earlier attempt is reused with `resume`, emptied with `overwrite` (start from
    scratch), and otherwise refused. A lock on it keeps a second run from writing into it at the same time."""
    path = check_output_dir(path, overwrite)
    work = partial_dir(path)
    if work.exists() and not work.is_dir():
        raise InvalidConfigError(f"{work} is a file; remove it (it is where `compress run` keeps its work)")
    earlier = work.is_dir()
    if earlier and not resume and not overwrite:
        raise InvalidConfigError(
            f"{work} holds an interrupted run of {path}; pass --resume to continue it or --overwrite to start from scratch"
        )
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidConfigError(f"cannot write {path}: {e.strerror}; choose a writable output location") from e
    lock = _lock(work)
    try:
        if earlier and not resume:
            for p in work.iterdir():
                _rm(p)
        else:
            _remove_temporaries(work)
        yield work, earlier and resume
        _move_into_place(work, path)
    except BaseException:
        if not keep(work):
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _lock(work: Path) -> int:
    import fcntl

    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InvalidConfigError(f"{work} is in use by another run; wait for it to finish") from None
    return fd


def _remove_temporaries(work: Path) -> None:
    """The temporaries of atomic_dir / atomic_file that a killed process left inside `work`."""
    stale = [p for p in work.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    for p in sorted(stale, key=lambda p: len(p.parts)):  # a folder before what it holds
        _rm(p)


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; renamed onto it only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise InvalidConfigError(f"output {path} is a directory; give a file path")
    check_writable(path, directory=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidConfigError(f"cannot write {path}: {e.strerror}; choose a writable output location") from e
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _apply_umask(Path(tmp))
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


# A verb that turns one ONNX graph into another (quantize) writes a folder (the new graph, the sidecar
# files of the source's folder and its compression.json with a section for the step) or a lone .onnx
# file, beside which those files are copied only where they cannot mix with somebody else's.


def check_derived_output(src: Path, out: Path, graph: Path, overwrite: bool) -> None:
    """Before any work: `out` is the .onnx file or the folder asked for, `graph` where the new graph
    lands (`out` itself, or inside it), `src` the source graph."""
    as_file = graph == out
    if as_file and out.exists() and not overwrite:
        raise InvalidConfigError(f"{out} exists; pass --overwrite or choose another path")
    if graph.resolve() == src.resolve():
        raise InvalidConfigError("the output would replace the input model; choose another --output")
    if as_file:
        check_output_file(out, inputs=(src,))
    else:
        check_output_dir(out, overwrite, inputs=(src.parent,))


def write_derived_output(
    built: Path, src: Path, out: Path, graph: Path, *, overwrite: bool, sidecars: tuple[str, ...], sections: dict
) -> list[str]:
    """Write the graph file `built` to `graph` (see check_derived_output) with the `sidecars` (file
    names: config, tokenizer) and the compression.json of `src`'s folder, `sections` added to it.
    Returns warnings for the user."""
    warnings = []
    if graph == out:
        with atomic_file(out) as tmp:
            shutil.copyfile(built, tmp)
        other = unrelated_files(out.parent, src, sidecars)
        if other:
            warnings.append(
                f"{out.parent} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}), so the config "
                f"and tokenizer were not copied beside {out.name}; `compress eval` needs them: pass -o a new folder"
            )
        elif out.parent.resolve() != src.parent.resolve():
            copy_sidecars(src.parent, out.parent, sidecars, replace=False)
            if not (out.parent / COMPRESSION_JSON).exists():
                carry_compression_json(src.parent, out.parent, out.name, sections)
            elif (src.parent / COMPRESSION_JSON).exists():
                warnings.append(f"kept the existing {out.parent / COMPRESSION_JSON}; it does not describe {out.name}")
        return warnings
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copyfile(built, tmp / graph.name)
        copy_sidecars(src.parent, tmp, sidecars, replace=True)
        carry_compression_json(src.parent, tmp, graph.name, sections)
    return warnings


def unrelated_files(folder: Path, src: Path, sidecars: tuple[str, ...]) -> list[str]:
    """Files in `folder` that are not model files: `-o DIR/x.onnx` must not scatter config and
    tokenizer files among someone else's."""
    if not folder.is_dir() or folder.resolve() == src.parent.resolve():
        return []
    ours = set(sidecars) | {COMPRESSION_JSON}
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file()
        and p.name not in ours
        and not p.name.endswith((".onnx", ".onnx.data"))
        and not p.name.startswith(".")
    )


def copy_sidecars(src_dir: Path, dst_dir: Path, sidecars: tuple[str, ...], replace: bool) -> list[str]:
    """Copy the `sidecars` files of `src_dir` that exist (over those in `dst_dir` only when `replace`)."""
    copied = []
    for name in sidecars:
        f = src_dir / name
        if f.is_file() and (replace or not (dst_dir / name).exists()):
            shutil.copy2(f, dst_dir / name)
            copied.append(name)
    return copied


def carry_compression_json(src_dir: Path, dst_dir: Path, graph_name: str, sections: dict) -> None:
    """Carry `src_dir`'s compression.json over to `dst_dir` with `sections` added and checksums of the
    files it lists that are there, the new graph `graph_name` in place of the source's .onnx files."""
    data = read_compression_json(src_dir, verify=False)
    if data is None:
        return
    listed = [n for n in data.get("files", {}) if not n.endswith(".onnx")] + [graph_name]
    data.update(sections)
    record_checksums(dst_dir, data, [n for n in listed if (dst_dir / n).exists()])
    write_json(dst_dir / COMPRESSION_JSON, data)


def load_pretrained(cls, path, **kw):
    """`cls.from_pretrained(path)` for every verb (prune, eval, export, ...), so a corrupt or truncated
    weights file gives the same one-line error everywhere (safetensors, torch and transformers raise
    many types for it)."""
    try:
        loaded = cls.from_pretrained(str(path), **kw)
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        raise ArtifactError(
            f"cannot load weights from {path} ({e.__class__.__name__}: {first}); the file may be corrupt "
            "or truncated: re-download or re-create it"
        ) from e
    # A pruned hidden dimension changes how the LayerNorms compute: apply it wherever a checkpoint is loaded.
    if Path(path).is_dir():
        from compress.core import hidden

        hidden.apply_record(
            loaded[0] if isinstance(loaded, tuple) else loaded, read_compression_json(path, verify=False)
        )
    return loaded
