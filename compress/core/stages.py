"""The stage record of a resumable multi-stage run (`compress run --resume`): stages.json in the run's work
folder (compress.core.artifacts.resumable_dir).

stages.json (format_version 1):
  recipe (the run's recipe, as recipe.json), inputs ({label: {path, files: {relative name: [size, mtime_ns]}}}),
  stages ({name: {outputs: [paths], files: {path: sha256}, seconds, result}}, in the order they finished).

A stage counts as finished only once its entry is in stages.json, written (atomically) after all its files:
a run killed mid-stage leaves files but no entry, so that stage is redone. `result` is what later stages
need from it (paths, metrics, latencies), stored as JSON and read back through JSON on every run, so a
resumed run and an uninterrupted one take the same values. Inputs are fingerprinted by size and mtime, as
make and rsync do: one stat per file whatever the size of the weights and data (hashing gigabytes at every
start would cost more than it protects against); a re-saved, re-downloaded or edited input gets a new mtime.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from compress.core.artifacts import sha256_file, write_json
from compress.core.errors import ArtifactError, InvalidConfigError

STAGES_JSON = "stages.json"
FORMAT_VERSION = 1
# Fault injection for tests (tests/test_run_resume.py): COMPRESS_KILL_AT=STAGE SIGKILLs this process as STAGE
# starts; STAGE:STEP (read by the training stages) at the end of that training step. SIGKILL, not an exception:
# nothing is cleaned up or flushed, as when a job is preempted or runs out of memory.
KILL_AT = "COMPRESS_KILL_AT"


def kill_point(stage: str, step: int | None = None) -> None:
    if os.environ.get(KILL_AT) == (stage if step is None else f"{stage}:{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_step(stage: str) -> int | None:
    """The training step of `stage` at which COMPRESS_KILL_AT asks for a kill, if any."""
    name, _, step = os.environ.get(KILL_AT, "").partition(":")
    return int(step) if name == stage and step.isdigit() else None


def fingerprint(inputs: dict[str, str | None]) -> dict:
    """{label: {path, files}} of the run's inputs (model folders, data files or folders): size and mtime of
    every file, hidden ones left out (caches); `files` is None for a name that is not a local path (a hub id)."""
    out = {}
    for label, name in inputs.items():
        if not name:
            continue
        p = Path(name).expanduser()
        if not p.exists():
            out[label] = {"path": name, "files": None}
            continue
        p = p.resolve()
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f, p))
        out[label] = {
            "path": str(p),
            "files": {
                (f.name if f == p else str(f.relative_to(p))): [f.stat().st_size, f.stat().st_mtime_ns] for f in files
            },
        }
    return out


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in f.relative_to(root).parts)


def first_difference(old, new, prefix: str = "") -> str | None:
    """`key: old -> new` for the first (dotted) key whose values differ, None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            d = first_difference(old.get(k, "(absent)"), new.get(k, "(absent)"), f"{prefix}{k}.")
            if d:
                return d
        return None
    if old == new:
        return None
    return f"{prefix[:-1]}: {_shown(old)} -> {_shown(new)}"


def _added_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The (dotted) keys of `new` that `old` lacks, with their values: `prune.train.x=1`."""
    out = []
    for k, v in new.items():
        if k not in old:
            out.append(f"{prefix}{k}={json.dumps(v)}")
        elif isinstance(v, dict) and isinstance(old[k], dict):
            out += _added_keys(old[k], v, f"{prefix}{k}.")
    return out


def _recipe_with(old: dict, new: dict) -> dict:
    """`old` with the keys only `new` has added (recursively)."""
    out = dict(old)
    for k, v in new.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _recipe_with(out[k], v)
    return out


def _shown(v) -> str:
    return v if v == "(absent)" else json.dumps(v)


class Stages:
    """The stages of one run in work folder `work`: `run` skips those finished in an earlier attempt (their
    files verified when the record was opened) and records the others as they finish."""

    def __init__(self, work: Path, record: dict, log: Callable[..., None]):
        self.work, self.record, self.log = work, record, log
        self.skipped: list[str] = []
        self.timings: dict[str, float] = {}  # the stages of this run, skipped or run

    def run(self, name: str, title: str, fn: Callable[[], dict], outputs: tuple[str, ...] = ()) -> dict:
        """`fn()`'s result (JSON), or the recorded one when `name` finished earlier. `outputs`: the work-folder
        paths the stage writes (files or folders), checksummed into the record and cleared before a rerun."""
        done = self.record["stages"].get(name)
        if done is not None:
            self.log(f"skipped {name}: finished in an earlier attempt, its files verified")
            self.skipped.append(name)
            self.timings[name] = done["seconds"]
            return done["result"]
        # The record holds the stages skipped in this run and those finished in it: any other (a later stage
        # of an earlier attempt) is stale once this one runs again.
        for stale in [n for n in self.record["stages"] if n not in self.timings]:
            _remove(self.work, tuple(self.record["stages"].pop(stale)["outputs"]))
        write_json(self.work / STAGES_JSON, self.record)
        _remove(self.work, outputs)  # what an unfinished attempt left (training checkpoints are not outputs)
        kill_point(name)
        self.log(title, rule=True)
        t = time.time()
        result = json.loads(json.dumps(fn()))  # as a resumed run reads it back, so both runs go the same way
        self.timings[name] = time.time() - t
        self.record["stages"][name] = {
            "outputs": list(outputs),
            "files": {rel: sha256_file(self.work / rel) for rel in _files(self.work, outputs)},
            "seconds": round(self.timings[name], 3),
            "result": result,
        }
        write_json(self.work / STAGES_JSON, self.record)
        return result


def open_stages(
    work: Path, recipe: dict, inputs: dict, earlier: bool, log: Callable[..., None], stale: tuple[str, ...] = ()
) -> Stages:
    """The stage record of `work`: a new one, or (`earlier`: the folder holds an earlier attempt) the earlier
    one, refused when the recipe or the inputs differ, with every stage from the first whose files are missing
    or changed dropped (those stages are redone, and the folders matching the `stale` globs, e.g. training
    checkpoints of the unfinished stages after them, removed)."""
    recipe = json.loads(json.dumps(recipe))
    path = work / STAGES_JSON
    if not (earlier and path.is_file()):
        _clear(work)  # an attempt killed before its record was written left nothing to reuse
        record = {"format_version": FORMAT_VERSION, "recipe": recipe, "inputs": inputs, "stages": {}}
        write_json(path, record)
        return Stages(work, record, log)
    record = _read(path)
    fix = "run it as it started, or pass --overwrite to start from scratch"
    # Options added to compress since the interrupted attempt are absent from its record: they take their
    # value now (stages they add run), and the recorded recipe gains them.
    added = _added_keys(record["recipe"], recipe)
    if added:
        log(f"--resume: options new since the interrupted run, taken as given now: {', '.join(added)}")
        record["recipe"] = _recipe_with(record["recipe"], recipe)
    diff = first_difference(record["recipe"], recipe)
    if diff:
        raise InvalidConfigError(f"--resume: the recipe differs from the interrupted run's at {diff}; {fix}")
    diff = first_difference(record["inputs"], inputs)
    if diff:
        raise InvalidConfigError(f"--resume: an input changed since the interrupted run ({diff}); {fix}")
    names = list(record["stages"])
    for i, name in enumerate(names):
        problem = _check_files(work, record["stages"][name]["files"])
        if problem:
            later = f" and the stages after it ({', '.join(names[i + 1 :])})" if names[i + 1 :] else ""
            log(f"{name}: {problem}; redoing {name}{later}")
            for n in names[i:]:
                _remove(work, tuple(record["stages"].pop(n)["outputs"]))
            for pattern in stale:
                _remove(work, tuple(str(p.relative_to(work)) for p in work.glob(pattern)))
            break
    write_json(path, record)
    return Stages(work, record, log)


def has_progress(work: Path, checkpoints: str = "*.checkpoints/checkpoint-*") -> bool:
    """Whether `work` holds something --resume would reuse: a finished stage or a training checkpoint."""
    try:
        if json.loads((work / STAGES_JSON).read_text())["stages"]:
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return any(work.glob(checkpoints))


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
        if record.get("format_version") == FORMAT_VERSION and {"recipe", "inputs", "stages"} <= set(record):
            return record
    except (OSError, ValueError, AttributeError):
        pass
    raise ArtifactError(f"{path} is not a stage record this version reads; pass --overwrite to start from scratch")


def _check_files(work: Path, files: dict) -> str | None:
    for rel, digest in files.items():
        f = work / rel
        if not f.is_file():
            return f"{rel} is missing"
        if sha256_file(f) != digest:
            return f"{rel} changed since it was written (checksum differs)"
    return None


def _files(work: Path, outputs: tuple[str, ...]) -> list[str]:
    out = []
    for rel in outputs:
        p = work / rel
        if p.is_file():
            out.append(rel)
        elif p.is_dir():
            out += sorted(str(f.relative_to(work)) for f in p.rglob("*") if f.is_file())
    return out


def _remove(work: Path, paths: tuple[str, ...]) -> None:
    for rel in paths:
        p = work / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _clear(work: Path) -> None:
    _remove(work, tuple(p.name for p in work.iterdir()))
