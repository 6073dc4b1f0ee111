"""`compress run --resume`: a run killed (SIGKILL) at any stage and resumed ends with what an uninterrupted run
writes; a resume refuses another recipe or changed inputs, and redoes a stage whose files changed."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import helpers as h
from compress.core.stages import KILL_AT

main = h.main
STAGES = ["prune", "fill", "export", "quantize", "eval", "bench", "bench-data"]
# Where each attempt of the chain is killed: prune and fill mid-training, after a periodic checkpoint
# (checkpoints every 3 steps), the others as they start. Each attempt resumes the one before.
KILLS = ["prune:7", "fill:5", "export", "quantize", "eval", "bench", "bench-data"]


def _recipe(d):
    return {
        "task": "sst2",
        "data_dir": str(d / "data"),
        "bench_batch_sizes": [1],
        "bench_seq_len": 16,
        "bench_iterations": 2,
        "bench_threads": 1,
        "optimize": True,
        "fill_steps": 6,
        "prune": {
            "method": "struct",
            "lambda_reg": 50.0,
            "score_lr": 0.5,
            "train": {
                "max_steps": 8,
                "save_steps": 3,
                "batch_size": 8,
                "warmup_ratio": 0.05,
                "logging_steps": 1000,
                "progress": False,
            },
            "distill": {"teacher": str(d / "teacher")},
        },
    }


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The inputs, the recipe and one uninterrupted run (ref/ref) every test compares with."""
    d = tmp_path_factory.mktemp("resume")
    h.write_sst2_like(d / "data" / "sst2", n_train=32, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), d / "teacher")
    (d / "recipe.json").write_text(json.dumps(_recipe(d)))
    assert main(["run", "--recipe", str(d / "recipe.json"), "-o", str(d / "ref")]) == 0
    return d


def _cli(d, out, *flags, kill=""):
    """`python -m compress run` in a subprocess (so it can be SIGKILLed), its console not wrapped."""
    env = {**os.environ, KILL_AT: kill, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "compress", "run", "--recipe", str(d / "recipe.json"), "-o", str(out), *flags]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _text(s: str) -> str:
    return " ".join(s.split())


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_results(ref_out, out):
    """Same pruned and filled weights (bitwise), metrics and structure as the uninterrupted run."""
    for f in ("pruned/model.safetensors", "filled/model.safetensors"):
        assert _sha(out / f) == _sha(ref_out / f), f
    a, b = (json.loads((p / "summary.json").read_text()) for p in (ref_out, out))

    def untimed(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("p50_ms_", "speedup_"))} for r in rows]

    assert untimed(b["rows"]) == untimed(a["rows"])
    for key in ("layers", "geometry", "shrink", "recipe"):
        assert b[key] == a[key], key
    assert {k: v for k, v in b["pruning"].items() if k != "seconds_per_step"} == {
        k: v for k, v in a["pruning"].items() if k != "seconds_per_step"
    }


def test_killed_at_every_stage_then_resumed_equals_uninterrupted(ref, tmp_path, capsys):
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    finished = []  # the stages recorded when the attempt starts
    for i, kill in enumerate(KILLS):
        stage = kill.partition(":")[0]
        r = _cli(ref, out, *(["--resume"] if i else []), kill=kill)
        assert r.returncode == -signal.SIGKILL, r.stdout[-3000:] + r.stderr[-3000:]
        assert partial.is_dir() and not out.exists(), kill
        said = _text(r.stdout)
        assert [s for s in STAGES if f"skipped {s}:" in said] == finished, kill
        finished = list(json.loads((partial / "stages.json").read_text())["stages"])
        assert finished == STAGES[: STAGES.index(stage)], kill
        if i == 0:
            assert (partial / "pruned.checkpoints" / "checkpoint-6").is_dir()
            # A plain rerun over the interrupted run refuses, naming both ways on.
            capsys.readouterr()
            assert main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err, err
        if kill == "fill:5":
            assert "pruned: continuing from its periodic checkpoint checkpoint-6" in said
        if kill == "export":
            assert "filled: continuing from its periodic checkpoint checkpoint-3" in said
    capsys.readouterr()
    assert main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out), "--resume"]) == 0  # in-process: faster
    said = _text(capsys.readouterr().out)
    assert "resumed: skipped prune, fill, export, quantize, eval, bench" in said
    assert not partial.exists() and (out / "report.md").is_file()
    # The resumed training stages continued from their checkpoints, not silently from step 0.
    for folder, step, total in (("pruned", 6, 8), ("filled", 3, 6)):
        training = json.loads((out / folder / "compression.json").read_text())["training"]
        assert (training["resumed_from_step"], training["steps"]) == (step, total), folder
    _same_results(ref / "ref", out)


def _as_partial(ref, tmp_path, name):
    """A work folder holding every stage of the reference run, as a resume finds it."""
    shutil.copytree(ref / "ref", tmp_path / f".{name}.partial")
    return tmp_path / f".{name}.partial", tmp_path / name


def test_tampered_stage_file_redoes_that_stage_and_the_later_ones(ref, tmp_path, capsys):
    partial, out = _as_partial(ref, tmp_path, "t")
    graph = partial / "onnx" / "pruned-int8" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-16])  # truncated
    capsys.readouterr()
    assert main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out), "--resume"]) == 0
    said = _text(capsys.readouterr().out)
    assert "quantize: onnx/pruned-int8/model.onnx changed since it was written (checksum differs)" in said
    assert "redoing quantize and the stages after it (eval, bench, bench-data)" in said
    assert "resumed: skipped prune, fill, export (finished" in said
    _same_results(ref / "ref", out)


def test_exception_keeps_the_work_folder_and_says_how_to_resume(ref, tmp_path, capsys, monkeypatch):
    import compress.pipeline as pipeline

    partial, out = _as_partial(ref, tmp_path, "x")
    record = json.loads((partial / "stages.json").read_text())
    del record["stages"]["bench"]
    (partial / "stages.json").write_text(json.dumps(record))

    def broken(models, cfg):
        raise RuntimeError("benchmark failed")

    monkeypatch.setattr(pipeline, "bench_models", broken)
    with pytest.raises(RuntimeError):
        main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out), "--resume"])
    assert partial.is_dir() and not out.exists()
    assert "run the same command with --resume" in _text(capsys.readouterr().out)
    monkeypatch.undo()
    assert main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out), "--resume"]) == 0
    assert "resumed: skipped prune, fill, export, quantize, eval" in _text(capsys.readouterr().out)
    _same_results(ref / "ref", out)


def test_resume_refuses_another_recipe_or_changed_inputs(ref, tmp_path, capsys):
    partial, out = _as_partial(ref, tmp_path, "r")
    changed = _recipe(ref)
    changed["prune"]["train"]["lr"] = 1e-4
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    capsys.readouterr()
    assert main(["run", "--recipe", str(tmp_path / "changed.json"), "-o", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "prune.train.lr: 3e-05 -> 0.0001" in err, err

    config = ref / "teacher" / "config.json"
    before = config.stat()
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # re-saved, as far as a stat tells
    try:
        assert main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out), "--resume"]) == 2
    finally:
        os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teacher.files.config.json" in err, err
    assert partial.is_dir() and not out.exists()  # a refusal keeps the work it could not reuse


def test_resume_takes_options_added_since_the_interrupted_run(ref, tmp_path, capsys):
    """A run interrupted before compress gained an option resumes: the option takes its value now."""
    partial, out = _as_partial(ref, tmp_path, "n")
    record = json.loads((partial / "stages.json").read_text())
    del record["recipe"]["bench_data_samples"], record["recipe"]["prune"]["train"]["seed"]
    (partial / "stages.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["run", "--recipe", str(ref / "recipe.json"), "-o", str(out), "--resume"]) == 0
    said = _text(capsys.readouterr().out)
    assert (
        "options new since the interrupted run, taken as given now: prune.train.seed=42, bench_data_samples=1024"
        in said
    )
    assert (
        json.loads((out / "stages.json").read_text())["recipe"]
        == json.loads((ref / "ref" / "stages.json").read_text())["recipe"]
    )
