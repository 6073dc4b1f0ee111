"""Where the speed machinery meets its limits: budgets that would leave an empty model (refused before any
training, naming what is reachable), and latency-table caches that are corrupt, written by two processes
at once, or in a folder that cannot be written."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import helpers as h
from compress.core.config import DataConfig, PruneConfig, TrainConfig
from compress.core.errors import InvalidConfigError
from compress.core.structure import geometry
from compress.speed import table as table_mod
from compress.speed.deploy_graph import DeployConfig
from compress.speed.solver import Target, resolve_target, solve_budget
from compress.speed.table import LatencyTable, flops_table, load_or_build_table


def small_table(key=None) -> LatencyTable:
    # fixed 0.5 ms; the cheapest thing to keep is one FFN block of 16 dims (0.1 ms), then a head (0.3 ms)
    attn = [0.0, 0.30, 0.40, 0.50, 0.60]
    ffn = [0.0, 0.10, 0.16, 0.30, 0.55]
    return LatencyTable(key or {"k": 1}, 2, 4, 128, 0.5, attn, [0, 16, 32, 64, 128], ffn, 0.5 + 2 * (0.6 + 0.55))


# ------------------------------------------------------------------------------ budgets with nothing left
def test_flops_target_that_keeps_nothing_is_refused_with_the_reachable_fraction():
    geo = geometry(h.tiny_model(ffn=128).config)
    table = flops_table(geo, 2, 16)
    with pytest.raises(InvalidConfigError) as e:
        resolve_target(Target(flops=0.0001), table, ffn_block=16)
    msg = str(e.value)
    assert "\n" not in msg and "--target-flops" in msg and "every head and FFN dim" in msg, msg
    smallest = float(msg.split("--target-flops >= ")[1].split()[0])
    budget = resolve_target(Target(flops=smallest), table, ffn_block=16)  # what it names is reachable
    res = solve_budget([[1.0] * 4] * 2, [[1.0] * 128] * 2, table, budget, ffn_block=16)
    assert sum(res.heads_per_layer) + sum(res.ffn_per_layer) > 0


@pytest.mark.parametrize(
    "target, reach",
    [(Target(speedup=5.0), "at most 4.66x"), (Target(latency_ms=0.55), "--target-latency-ms >= 0.6")],
)
def test_latency_target_between_the_fixed_cost_and_one_unit_is_refused(target, reach):
    """Above the fixed cost (embeddings, classifier) but below it plus the cheapest unit: the solver
    would keep no head and no FFN dim anywhere."""
    with pytest.raises(InvalidConfigError, match=reach) as e:
        resolve_target(target, small_table(), ffn_block=16)
    assert "\n" not in str(e.value)
    assert resolve_target(Target(latency_ms=0.6), small_table(), ffn_block=16) == 0.6


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    h.write_sst2_like(d / "data" / "sst2", n_train=16, n_dev=8)
    h.save_checkpoint(h.tiny_model("bert", ffn=128), d / "base")
    return d


def test_prune_refuses_an_empty_budget_before_training(workspace, monkeypatch):
    from compress import api
    from compress.training import driver

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(driver, "train", no_training)
    cfg = PruneConfig(method="struct", target_flops=0.0001, train=TrainConfig(max_steps=2, progress=False))
    with pytest.raises(InvalidConfigError, match="every head and FFN dim"):
        api.prune(
            workspace / "base", workspace / "out", cfg, data=DataConfig(task="sst2", data_dir=str(workspace / "data"))
        )
    assert not (workspace / "out").exists()


def test_cli_prune_refuses_an_empty_budget_in_one_line(workspace, capsys):
    argv = ["prune", "--model", str(workspace / "base"), "--task", "sst2", "--method", "struct"]
    argv += ["--target-flops", "0.0001", "--data-dir", str(workspace / "data"), "-o", str(workspace / "cli")]
    err = h.cli_error(h.main(argv + ["--max-steps", "2", "--no-progress"]), capsys.readouterr().err)
    assert "--target-flops >=" in err, err
    assert not (workspace / "cli").exists()


# ------------------------------------------------------------------------------ the table cache
@pytest.fixture
def cached(workspace, tmp_path, monkeypatch):
    """load_or_build_table on the tiny checkpoint with a fake build (a table under the right key) that
    counts its calls: what is tested is the cache, not the timing."""
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_build(model, deploy, *, key=None, progress=True, classifier=None):
        calls.append(model)
        return small_table(key)

    monkeypatch.setattr(table_mod, "build_table", fake_build)
    deploy = DeployConfig(batch=2, seq=16, threads=1)

    def load(**kw):
        return load_or_build_table(str(workspace / "base"), deploy, progress=False, **kw)

    return load, calls


@pytest.mark.parametrize(
    "content",
    [b'{"format": 3, "key": {"a"', b"", b"[1, 2]", b"null", b'{"format": 3, "ffn_grid": []}', b"\xff\xfe\x00garbage"],
    ids=["truncated", "empty", "list", "null", "bad-fields", "binary"],
)
def test_corrupt_cache_file_is_rebuilt_with_a_one_line_warning(cached, content, capsys):
    load, calls = cached
    table, path, from_cache = load()
    assert not from_cache and len(calls) == 1
    path.write_bytes(content)
    capsys.readouterr()
    table2, path2, from_cache = load()
    assert path2 == path and not from_cache and len(calls) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning:") and "\n" not in err and str(path) in err and "rebuil" in err, err
    assert LatencyTable.load(path) == table2  # the rebuilt table replaced the corrupt file
    assert load()[2] and len(calls) == 2  # and is read from the cache next time


def _save_many(path: str, start, n: int) -> None:
    table = small_table({"writer": os.getpid(), "pad": "x" * 200_000})  # large: a torn write would show
    start.wait()
    for _ in range(n):
        table.save(path)


def test_two_processes_writing_one_table_leave_one_valid_file(tmp_path):
    path = tmp_path / "latency" / "t.json"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_save_many, args=(str(path), start, 30)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    reads = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            LatencyTable.load(path)  # a reader never sees a half-written file
            reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert LatencyTable.load(path).key["writer"] in {p.pid for p in procs}
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]  # no temp files left behind
    assert reads > 0


def test_unwritable_cache_folder_is_one_line_naming_the_variable(cached, tmp_path, monkeypatch):
    load, calls = cached
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(blocker))
    with pytest.raises(InvalidConfigError) as e:
        load()
    msg = str(e.value)
    assert "\n" not in msg and "COMPRESS_CACHE_DIR" in msg and str(blocker) in msg, msg
    assert calls == []  # refused before minutes of timing, not after


def test_cache_dir_is_compress_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "c"))
    assert table_mod.cache_dir() == tmp_path / "c" / "latency"
    monkeypatch.delenv("COMPRESS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert table_mod.cache_dir() == tmp_path / "x" / "compress" / "latency"
