"""Latency tables (built on tiny models) and the budget solver (on synthetic tables)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from compress.core.errors import InvalidConfigError
from compress.speed.deploy_graph import DeployConfig
from compress.speed.solver import Target, marginal_step, resolve_target, solve_budget
from compress.speed.table import LatencyTable, build_table, ffn_grid, flops_table, load_or_build_table
from helpers import cli_error, save_checkpoint, tiny_model


def synthetic(num_layers=3, heads=4, ffn=64, fixed=1.0, dense=None):
    # The first head of a layer carries the attention block's fixed cost (softmax, reshapes), as measured tables do.
    attn = [0.0] + [1.5 + 0.5 * h for h in range(heads)]
    grid = [0, 16, 32, ffn]
    ffn_ms = [0.0, 0.6, 1.0, 2.0]
    dense = dense or fixed + num_layers * (attn[-1] + ffn_ms[-1])
    return LatencyTable({"synthetic": True}, num_layers, heads, ffn, fixed, attn, grid, ffn_ms, dense)


def random_importance(rng, L, H, F):
    return [rng.random(H) * 3 for _ in range(L)], [rng.random(F) for _ in range(L)]


# ------------------------------------------------------------------------------ table object
def test_table_lookups_interpolate_and_round_trip(tmp_path):
    t = synthetic()
    assert t.ffn_cost(24) == pytest.approx(0.8)  # halfway between 16 (0.6) and 32 (1.0)
    assert t.layer_ms(2, 64) == pytest.approx(2.0 + 2.0)
    assert t.predict_ms([4, 0, 1], [64, 0, 16]) == pytest.approx(1.0 + (3.0 + 2.0) + 0 + (1.5 + 0.6))
    assert t.predicted_dense_ms == pytest.approx(t.dense_ms)
    back = LatencyTable.load(t.save(tmp_path / "t.json"))
    assert back == t
    with pytest.raises(InvalidConfigError, match="outside"):
        t.layer_ms(5, 0)


def test_ffn_grid_is_finer_near_zero():
    assert ffn_grid(1536, 64)[:5] == [0, 16, 32, 64, 128]
    assert ffn_grid(1536, 64)[-1] == 1536
    assert ffn_grid(64, 16) == [0, 16, 32, 48, 64]


def test_flops_table_matches_the_flop_model():
    from compress.core.sparsity import flops_per_token
    from compress.core.structure import geometry

    geo = geometry(tiny_model().config)
    t = flops_table(geo, batch=2, seq=16)
    kept = [{"heads_kept": [0, 1], "ffn_dims_kept": list(range(40))}, {"heads_kept": [3], "ffn_dims_kept": []}]
    assert t.predict_kept(kept) == pytest.approx(2 * 2 * 16 * flops_per_token(geo, kept, 16) / 1e6)
    assert t.dense_ms == pytest.approx(2 * 2 * 16 * flops_per_token(geo, None, 16) / 1e6)


# ------------------------------------------------------------------------------ budget solver
@pytest.mark.parametrize("seed", range(6))
def test_solver_meets_budget_within_one_step(seed):
    rng = np.random.default_rng(seed)
    t = synthetic()
    hi, fi = random_importance(rng, 3, 4, 64)
    step = marginal_step(t, ffn_block=8)
    for frac in (0.15, 0.3, 0.5, 0.7, 0.9):
        budget = t.fixed_ms + frac * (t.dense_ms - t.fixed_ms)
        r = solve_budget(hi, fi, t, budget, ffn_block=8)
        assert r.predicted <= budget + 1e-9
        assert budget - r.predicted <= step + 1e-9, (frac, r.predicted, budget)
        assert r.predicted == pytest.approx(t.predict_ms(r.heads_per_layer, r.ffn_per_layer))


def test_solver_keeps_the_most_important_within_a_layer():
    rng = np.random.default_rng(0)
    t = synthetic()
    hi, fi = random_importance(rng, 3, 4, 64)
    r = solve_budget(hi, fi, t, t.fixed_ms + 0.5 * (t.dense_ms - t.fixed_ms), ffn_block=8)
    for l in range(3):
        if r.heads[l]:
            assert min(hi[l][r.heads[l]]) >= max(np.delete(hi[l], r.heads[l]), default=-1)
        if r.ffn_dims[l]:
            assert min(fi[l][r.ffn_dims[l]]) >= max(np.delete(fi[l], r.ffn_dims[l]), default=-1)
        assert r.ffn_per_layer[l] % 8 == 0 or r.ffn_per_layer[l] == 64


def test_solver_is_near_the_exhaustive_optimum():
    rng = np.random.default_rng(3)
    t = synthetic(num_layers=2)
    hi, fi = random_importance(rng, 2, 4, 64)
    budget = t.fixed_ms + 0.45 * (t.dense_ms - t.fixed_ms)
    r = solve_budget(hi, fi, t, budget, ffn_block=16)
    best = 0.0
    top = lambda v, k: float(np.sort(v)[::-1][:k].sum())  # noqa: E731
    for h0, h1, f0, f1 in itertools.product(range(5), range(5), range(0, 65, 16), range(0, 65, 16)):
        if t.predict_ms([h0, h1], [f0, f1]) <= budget:
            best = max(best, top(hi[0], h0) + top(hi[1], h1) + top(fi[0], f0) + top(fi[1], f1))
    assert r.value >= 0.97 * best


def test_solver_keeps_everything_when_dense_fits_and_prefers_valuable_structure():
    t = synthetic()
    hi = [np.ones(4)] * 3
    fi = [np.ones(64)] * 3
    r = solve_budget(hi, fi, t, t.dense_ms)
    assert r.heads_per_layer == [4, 4, 4] and r.ffn_per_layer == [64, 64, 64]
    # Layer 1's heads are worthless: they go first.
    hi = [np.ones(4), np.zeros(4), np.ones(4)]
    r = solve_budget(hi, fi, t, t.dense_ms - 3.0)
    assert r.heads_per_layer[1] == 0 and r.heads_per_layer[0] == 4


def test_targets_resolve_and_refuse_the_impossible():
    t = synthetic()
    assert resolve_target(Target(speedup=2), t) == pytest.approx(t.dense_ms / 2)
    assert resolve_target(Target(latency_ms=5.0), t) == 5.0
    with pytest.raises(InvalidConfigError, match="at most"):
        resolve_target(Target(speedup=100), t)
    with pytest.raises(InvalidConfigError, match="exactly one"):
        resolve_target(Target(speedup=2, latency_ms=3), t)
    with pytest.raises(InvalidConfigError, match="FLOPs table"):
        resolve_target(Target(flops=0.5), t)
    with pytest.raises(InvalidConfigError, match=">= 0"):
        solve_budget([-np.ones(4)] * 3, [np.ones(64)] * 3, t, 5.0)


# ------------------------------------------------------------------------------ measured tables
FAST = dict(batch=2, seq=16, repeats=2, min_sample_ms=1.0, ffn_step=32)


def _check_table(t: LatencyTable, model):
    from compress.core.structure import geometry

    geo = geometry(model.config)
    assert len(t.attn_ms) == geo.num_heads + 1 and t.ffn_grid[-1] == geo.intermediate_size
    assert t.attn_ms[0] == 0 and t.ffn_ms[0] == 0
    # The curves are the running maximum of the per-layer differences the build recorded (build_table makes
    # them monotone, so checking monotonicity alone could not fail); those differences are (T - fixed) / L.
    raw = t.measurements
    assert t.attn_ms == pytest.approx(np.maximum.accumulate(np.maximum(raw["attn_raw_ms"], 0)), abs=1e-4)
    assert t.ffn_ms == pytest.approx(np.maximum.accumulate(np.maximum(raw["ffn_raw_ms"], 0)), abs=1e-4)
    g = raw["graphs_ms"]
    assert raw["attn_raw_ms"][-1] == pytest.approx((g[f"attn{geo.num_heads}"] - g["fixed"]) / geo.num_layers, abs=1e-3)
    assert t.fixed_ms > 0 and t.dense_ms > 0
    extra = {"dense-fp32"} if t.key["precision"] == "int8" else set()
    assert set(t.measurements["graphs_ms"]) == {
        "fixed",
        "dense",
        *extra,
        *(f"attn{h}" for h in range(1, geo.num_heads + 1)),
        *(f"ffn{f}" for f in t.ffn_grid[1:]),
    }
    assert t.baseline_ms == pytest.approx(t.measurements["graphs_ms"]["dense-fp32" if extra else "dense"], abs=1e-3)


def test_table_is_built_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("bert")
    ckpt = save_checkpoint(model, tmp_path / "m")
    cfg = DeployConfig(**FAST)
    t, path, cached = load_or_build_table(str(ckpt), cfg, progress=False)
    assert not cached and path.parent == tmp_path / "cache" / "latency" and path.exists()
    _check_table(t, model)
    assert t.key["batch"] == 2 and t.key["precision"] == "fp32" and t.key["model"]["num_heads"] == 4
    t2, path2, cached2 = load_or_build_table(str(ckpt), cfg, progress=False)
    assert cached2 and path2 == path and t2 == t
    # Another shape is another table.
    other = DeployConfig(**{**FAST, "batch": 1})
    assert load_or_build_table.__module__  # (keeps flake quiet)
    from compress.speed.table import cache_path, table_key

    assert cache_path(table_key(model.config, other)) != path
    json.loads(path.read_text())  # plain JSON


@pytest.mark.parametrize("model_type,precision", [("roberta", "fp32"), ("distilbert", "int8")])
def test_table_builds_for_other_families(model_type, precision):
    model = tiny_model(model_type)
    t = build_table("tiny", DeployConfig(precision=precision, **FAST), classifier=model, progress=False)
    _check_table(t, model)


def _fake_timings(ms: dict[str, float]):
    """A stand-in for the timing of the table's graphs: fixed figures per graph label."""

    def timed(graphs, grid, deploy, progress):
        return {k: {"ms": v, "median_ms": v, "runs": 1} for k, v in ms.items()}, 0.0

    return timed


def test_builder_turns_noisy_raw_timings_into_the_documented_running_maximum(monkeypatch):
    """Raw timings that dip (noise) and fall below the fixed part: the table holds the running maximum
    of (T - fixed) / L from 0, and the raw differences stay on record."""
    from compress.speed import table as table_mod

    L, fixed = 2, 1.0
    attn_raw = [0.5, 0.4, 0.9, 0.8]  # per layer, heads 1..4: a dip at 2 and at 4
    ffn_raw = [-0.1, 0.3, 0.2]  # dims 16, 32, 64: below the fixed part at 16, a dip at 64
    ms = {"fixed": fixed, "dense": 4.0}
    ms |= {f"attn{h}": fixed + L * v for h, v in enumerate(attn_raw, 1)}
    ms |= {f"ffn{f}": fixed + L * v for f, v in zip((16, 32, 64), ffn_raw)}
    monkeypatch.setattr(table_mod, "_time_table_graphs", _fake_timings(ms))
    t = build_table("tiny", DeployConfig(**FAST), classifier=tiny_model(ffn=64), progress=False)
    assert t.ffn_grid == [0, 16, 32, 64] and t.fixed_ms == fixed and t.dense_ms == 4.0
    assert t.attn_ms == pytest.approx([0.0, 0.5, 0.5, 0.9, 0.9])
    assert t.ffn_ms == pytest.approx([0.0, 0.0, 0.3, 0.3])
    assert t.measurements["attn_raw_ms"] == pytest.approx([0.0, *attn_raw])
    assert t.measurements["ffn_raw_ms"] == pytest.approx([0.0, *ffn_raw])
    assert t.predict_ms([4, 1], [64, 24]) == pytest.approx(fixed + (0.9 + 0.3) + (0.5 + 0.15))


def test_measured_table_predicts_the_speedup_of_a_real_pruned_graph():
    """A table measured on a tiny model (8x64, 1 thread) against the deploy graph of an uneven structure,
    timed afterwards next to the dense graph: the predicted speedup is within 25% of the measured one
    (tiny graphs on a shared machine are noisy; a wrong per-layer division or a swapped curve is off by
    far more)."""
    import tempfile

    from compress.speed.deploy_graph import DeployGraphs, time_graphs

    model = tiny_model(ffn=64)
    cfg = DeployConfig(batch=8, seq=64, threads=1, repeats=5, min_sample_ms=20.0, ffn_step=16)
    t = build_table("tiny", cfg, classifier=model, progress=False)
    kept = [
        {"heads_kept": [0, 2], "ffn_dims_kept": list(range(0, 64, 2))},
        {"heads_kept": [1, 2, 3], "ffn_dims_kept": list(range(16))},
    ]
    with tempfile.TemporaryDirectory() as d:
        graphs = DeployGraphs("tiny", d, cfg, classifier=model)
        res = time_graphs({"dense": graphs.build(None, "dense"), "pruned": graphs.build(kept, "pruned")}, cfg)
    predicted = t.dense_ms / t.predict_kept(kept)
    measured = res["dense"]["ms"] / res["pruned"]["ms"]
    assert predicted == pytest.approx(measured, rel=0.25), (predicted, measured)


def test_deploy_config_errors():
    from compress.speed.deploy_graph import parse_shape

    assert parse_shape("32x128") == (32, 128)
    with pytest.raises(InvalidConfigError, match="BATCHxSEQ"):
        parse_shape("32*128")
    with pytest.raises(InvalidConfigError, match="fp32 or int8"):
        DeployConfig(precision="fp16").validate()


def test_cli_latency_table_reads_the_cache_and_refuses_bad_flags(tmp_path, monkeypatch, capsys):
    from compress.cli.main import main
    from compress.core.models import load_config
    from compress.speed.table import cache_path, table_key

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = save_checkpoint(tiny_model("bert", ffn=64), tmp_path / "m")
    key = table_key(load_config(str(ckpt)), DeployConfig(batch=8, seq=32, threads=1))
    LatencyTable(key, 2, 4, 64, 0.5, [0.0, 0.3, 0.4, 0.5, 0.6], [0, 16, 32, 64], [0.0, 0.1, 0.2, 0.4], 2.5).save(
        cache_path(key)
    )
    assert (
        main(
            ["latency-table", str(ckpt), "--deploy-shape", "8x32", "--threads", "1", "--json", str(tmp_path / "t.json")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "read from" in out and "fixed" in out
    assert LatencyTable.load(tmp_path / "t.json").key == key
    code = main(["latency-table", str(ckpt), "--deploy-shape", "8"])
    assert "BATCHxSEQ" in cli_error(code, capsys.readouterr().err)


def test_speed_info_warns_when_the_table_parts_do_not_add_up_to_dense():
    from compress.speed.plan import SpeedPlan, speed_info

    t = synthetic()
    kept = [{"heads_kept": [0], "ffn_dims_kept": list(range(16))}] * t.num_layers
    plan = SpeedPlan(Target(speedup=1.0), t, t.dense_ms, None)
    info = speed_info(plan, kept)
    assert info["table"]["parts_vs_dense"] == pytest.approx(t.predicted_dense_ms / t.dense_ms - 1, abs=1e-4)
    assert "warnings" not in info
    off = synthetic(dense=t.predicted_dense_ms * 0.8)  # parts 25% above the dense graph timed with them
    info = speed_info(SpeedPlan(Target(speedup=1.0), off, off.dense_ms, None), kept)
    assert "25% more" in info["warnings"][0] and "--rebuild" in info["warnings"][0]


# ------------------------------------------------------------------------------ calibration
def test_uniform_structure_is_the_largest_uniform_one_in_budget():
    from compress.speed.calibrate import uniform_structure

    t = synthetic()
    budget = 0.5 * t.dense_ms
    heads, dims = uniform_structure(t, budget, ffn_block=16)
    assert len(set(heads)) == 1 and len(set(dims)) == 1 and dims[0] % 16 == 0
    assert t.predict_ms(heads, dims) <= budget
    assert uniform_structure(t, t.dense_ms, 16) == ([4] * 3, [64] * 3)


def test_calibration_scales_the_budget_by_measured_over_predicted():
    from compress.speed.calibrate import calibrate_budget

    t = synthetic()
    budget = t.baseline_ms / 2.0
    seen = []

    def slow_by_20pct(kept):  # the deploy graph runs 0.8x the table's predicted speedup
        ms = t.predict_ms([len(k["heads_kept"]) for k in kept], [len(k["ffn_dims_kept"]) for k in kept])
        seen.append(kept)
        return 0.8 * t.baseline_ms / ms

    corrected, rec = calibrate_budget(t, budget, slow_by_20pct, ffn_block=16, rounds=2)
    assert corrected == pytest.approx(0.8 * budget) and rec["factor"] == pytest.approx(0.8)
    assert len(rec["rounds"]) == 2 and rec["rounds"][0]["measured_speedup"] < 2.0
    assert (
        t.predict_ms([len(k["heads_kept"]) for k in seen[1]], [len(k["ffn_dims_kept"]) for k in seen[1]]) <= corrected
    )

    def as_predicted(kept):  # the table is right: one round, budget unchanged
        return t.baseline_ms / t.predict_ms(
            [len(k["heads_kept"]) for k in kept], [len(k["ffn_dims_kept"]) for k in kept]
        )

    corrected, rec = calibrate_budget(t, budget, as_predicted, ffn_block=16)
    assert corrected == pytest.approx(budget) and len(rec["rounds"]) == 1

    with pytest.raises(InvalidConfigError, match="out of reach"):
        calibrate_budget(t, t.floor_ms * 1.05, lambda kept: 0.5, ffn_block=16)
