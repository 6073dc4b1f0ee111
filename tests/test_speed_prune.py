"""Budget-aware pruning (--target-speedup / --target-latency-ms / --target-flops) on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

import helpers as h
from compress.core.config import DataConfig, DistillConfig, PruneConfig, TrainConfig
from compress.core.errors import InvalidConfigError
from compress.core.structure import geometry, layer_linears
from compress.pruning.methods import get_method
from compress.pruning.pruner import Pruner
from compress.speed.plan import SpeedPlan, budget_for
from compress.speed.solver import Target, marginal_step, resolve_target
from compress.speed.table import LatencyTable, flops_table
from compress.training.driver import prune
from compress.training.loop import StudentWithLoss


def _plan(model, fraction=0.5, table=None):
    geo = geometry(model.config)
    table = table or flops_table(geo, 2, 16)
    target = Target(flops=fraction)
    return SpeedPlan(target, table, resolve_target(target, table), None)


def _batch(model):
    tok = h.tiny_tokenizer()
    enc = tok(h.POSITIVE + h.NEGATIVE, padding=True, return_tensors="pt")
    if model.config.model_type == "distilbert":
        enc.pop("token_type_ids")
    return dict(enc), torch.tensor([1] * 5 + [0] * 5)


def _masked_structure(model):
    """Heads / FFN dims whose weights the masks left non-zero, per layer."""
    geo = geometry(model.config)
    d = geo.head_size
    out = []
    for lin in layer_linears(model):
        wo = lin["attn_out"].weight
        heads = [j for j in range(geo.num_heads) if wo[:, j * d : (j + 1) * d].abs().sum() > 0]
        dims = int((lin["ffn_out"].weight.abs().sum(0) > 0).sum())
        out.append((len(heads), dims))
    return out


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_struct_budget_masks_meet_the_schedule_and_train_scores(model_type):
    model = h.tiny_model(model_type, ffn=128)
    plan = _plan(model, 0.4)
    cfg = PruneConfig(method="struct", target_flops=0.4, ffn_block=16)
    pruner = Pruner(model, get_method("struct"), cfg, budget=budget_for(model, "struct", plan, cfg.ffn_block))
    assert pruner.lam_final == 0.0 and pruner.regularization() == 0.0
    pruner.set_step(0, 100, 10)  # before pruning starts: everything kept
    with torch.no_grad():
        assert all(f == (4, 128) for f in _masked_structure(model))
    pruner.set_step(100, 100, 10)  # end of the schedule: the target
    wrapper = StudentWithLoss(model, pruner, None, DistillConfig())
    wrapper.train()
    batch, labels = _batch(model)
    wrapper(**batch, labels=labels)["loss"].backward()
    grads = [p.grad for p in pruner.scores.values()]
    # straight-through: every score gets a gradient (a removed FFN dim's is 0 only while its W1 bias is 0,
    # as in this random init: gelu(0) = 0 cuts both paths)
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    res = pruner.budget.last
    assert res.predicted <= plan.budget + 1e-9
    assert plan.budget - res.predicted <= marginal_step(plan.table, 16) + 1e-9
    with torch.no_grad():
        assert [s[0] for s in _masked_structure(model)] == res.heads_per_layer


def test_budget_level_follows_the_cubic_schedule():
    model = h.tiny_model("bert", ffn=128)
    plan = _plan(model, 0.3)
    pruner = Pruner(
        model,
        get_method("struct"),
        PruneConfig(method="struct", target_flops=0.3, initial_warmup=1, final_warmup=2),
        budget=budget_for(model, "struct", plan, 32),
    )
    levels = []
    for step in range(0, 101, 10):
        pruner.set_step(step, 100, 10)
        levels.append(pruner.budget.level)
    assert levels[0] == pytest.approx(plan.table.predicted_dense_ms) and levels[-1] == pytest.approx(plan.budget)
    assert all(b <= a + 1e-9 for a, b in zip(levels, levels[1:]))
    assert levels[3] > plan.budget  # still ramping in the middle


def test_hybrid_budget_uses_block_scores_per_head():
    # head size 32 = one 32x32 block row per head
    model = h.tiny_model("bert", hidden=64, heads=2, ffn=64)
    plan = _plan(model, 0.5)
    pruner = Pruner(
        model,
        get_method("hybrid"),
        PruneConfig(method="hybrid", target_flops=0.5, ffn_block=16, budget_importance="scores"),
        budget=budget_for(model, "hybrid", plan, 16, importance="scores"),
    )
    with torch.no_grad():  # make head 1 of layer 0 clearly more important in its Q blocks
        pruner.scores["layer_0_query"][1] += 5.0
        pruner.scores["layer_0_query"][0] -= 5.0
    pruner.set_step(100, 100, 10)
    pruner.group_mask("layer.0.query")
    res = pruner.budget.last
    assert res.predicted <= plan.budget + 1e-9
    if len(res.heads[0]) == 1:
        assert res.heads[0] == [1]
    q = pruner.group_mask("layer.0.query")
    o = pruner.group_mask("layer.0.attn_out")
    for j in range(2):
        kept = float(j in res.heads[0])
        assert torch.all(q[j] == kept) and torch.all(o[:, j] == kept)


def _fisher_pruner(model, method="struct", fraction=0.4):
    plan = _plan(model, fraction)
    cfg = PruneConfig(method=method, target_flops=fraction, ffn_block=16)
    return Pruner(model, get_method(method), cfg, budget=budget_for(model, method, plan, 16))


def _backward(model, pruner):
    wrapper = StudentWithLoss(model, pruner, None, DistillConfig())
    wrapper.train()
    batch, labels = _batch(model)
    wrapper(**batch, labels=labels)["loss"].backward()


def test_fisher_importance_is_the_squared_mask_gradient():
    model = h.tiny_model("bert", ffn=128)
    pruner = _fisher_pruner(model)
    b = pruner.budget
    assert b.kind == "fisher" and float(b.head_fisher.abs().sum()) == 0.0
    pruner.set_step(0, 100, 10)  # dense level: every unit kept, with all importances still 0
    _backward(model, pruner)
    g_heads = pruner.scores["layer_0_heads"].grad  # straight-through: the score gradient is the mask gradient
    assert torch.allclose(b.head_fisher[0], g_heads.double().square())  # first update: the plain square
    assert float(b.ffn_fisher.sum()) > 0 and float(b.head_fisher.sum()) > 0
    # state_dict holds the averages, so a resumed run continues from them
    assert {"budget.head_fisher", "budget.ffn_fisher", "budget.fisher_updates"} <= set(pruner.state_dict())


def test_fisher_importance_chooses_the_structure_and_freezes_removed_units():
    model = h.tiny_model("bert", ffn=128)
    pruner = _fisher_pruner(model, fraction=0.3)
    b = pruner.budget
    with torch.no_grad():
        b.head_fisher.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2, dtype=torch.float64))
        b.ffn_fisher.copy_(torch.rand(2, 128, dtype=torch.float64))
        b.fisher_updates.fill_(100)
    pruner.set_step(100, 100, 10)
    _backward(model, pruner)
    res = b.last
    for layer, kept in enumerate(res.heads):  # the most important heads are the ones kept
        assert kept == list(range(4 - len(kept), 4))
        removed = [j for j in range(4) if j not in kept]
        assert b.head_fisher[layer, removed].tolist() == [float(j + 1) for j in removed]  # frozen


def test_hybrid_fisher_sums_the_output_column_blocks_of_a_head():
    model = h.tiny_model("bert", hidden=64, heads=2, ffn=64)
    pruner = _fisher_pruner(model, "hybrid", 0.5)
    pruner.set_step(0, 100, 10)
    _backward(model, pruner)
    g = pruner.scores["layer_1_attn_out"].grad  # (row blocks, column blocks); head j owns column block j
    assert torch.allclose(pruner.budget.head_fisher[1], g.sum(0).double().square())


def test_hybrid_budget_refuses_heads_smaller_than_blocks():
    model = h.tiny_model("bert")  # head size 8 < 32
    with pytest.raises(InvalidConfigError, match="multiple of its 32x32"):
        Pruner(
            model,
            get_method("hybrid"),
            PruneConfig(method="hybrid", target_flops=0.5),
            budget=budget_for(model, "hybrid", _plan(model), 32),
        )


# ------------------------------------------------------------------------------ prune() end to end
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("speedprune")
    h.write_sst2_like(d / "data" / "sst2", n_train=48, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert", ffn=128), d / "base")
    return d


def _cfg(steps=16, **kw):
    return PruneConfig(
        method=kw.pop("method", "struct"),
        train=TrainConfig(max_steps=steps, batch_size=8, progress=False, save_steps=1000, logging_steps=1000),
        **kw,
    )


def _prune(d, out, cfg):
    return prune(cfg, DataConfig(task="sst2", data_dir=str(d / "data")), str(d / "base"), output=d / out)


def test_prune_with_target_speedup_meets_its_table(workspace, monkeypatch):
    from compress.core.models import load_config
    from compress.speed.deploy_graph import DeployConfig
    from compress.speed.table import cache_path, table_key

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(workspace / "cache"))
    d = workspace
    # A table in the cache under this deployment's key (timings of a tiny model on a shared machine are
    # noise; test_speed.py covers measuring): prune must find it there and meet it.
    key = table_key(load_config(str(d / "base")), DeployConfig(batch=2, seq=16, threads=1))
    attn = [0.0, 0.30, 0.40, 0.50, 0.60]
    ffn = [0.0, 0.10, 0.16, 0.30, 0.55]
    LatencyTable(key, 2, 4, 128, 0.5, attn, [0, 16, 32, 64, 128], ffn, 0.5 + 2 * (0.6 + 0.55)).save(cache_path(key))
    # synthetic table: calibration against the tiny model's real graphs would rescale it by noise
    cfg = _cfg(target_speedup=1.6, deploy_shape="2x16", deploy_threads=1, ffn_block=16, calibrate=False)
    info = _prune(d, "fast", cfg)
    sp = info["speed"]
    table = LatencyTable.load(sp["table"]["cache_file"])
    budget = table.baseline_ms / 1.6
    saved = json.loads((d / "fast" / "compression.json").read_text())
    predicted = table.predict_kept(saved["layers"])
    assert predicted <= budget + 1e-9
    assert budget - predicted <= marginal_step(table, 16) + 1e-9
    assert sp["predicted"] == pytest.approx(predicted, abs=1e-3) and sp["predicted_speedup"] >= 1.6 - 1e-6
    assert sp["measured"]["speedup"] > 0 and sp["measured"]["shape"] == "2x16"
    assert "speed target" in (d / "fast" / "README.md").read_text()
    assert saved["speed"]["target"]["speedup"] == 1.6 and sp["table"]["from_cache"]


def test_prune_with_target_flops_is_hardware_free(workspace):
    d = workspace
    info = _prune(d, "flops", _cfg(target_flops=0.5, ffn_block=16))
    sp = info["speed"]
    assert sp["unit"] == "MFLOP" and "measured" not in sp
    assert sp["predicted"] <= sp["budget"] + 1e-6 and sp["predicted_speedup"] >= 2.0 - 1e-6


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="movement", target_flops=0.5), "structured method"),
        (dict(method="struct", target_flops=0.5, lambda_reg=2.0), "drop --lambda"),
        (dict(method="struct", target_flops=0.5, target_speedup=2.0), "exactly one"),
        (dict(method="struct", target_speedup=0.5), ">= 1"),
        (dict(method="struct", target_speedup=2.0, deploy_shape="big"), "BATCHxSEQ"),
    ],
)
def test_prune_target_errors(workspace, kw, match):
    d = workspace
    with pytest.raises(InvalidConfigError, match=match):
        _prune(d, "bad", _cfg(**kw))
    assert not (d / "bad").exists()


def test_cli_target_flags(workspace, capsys):
    from compress.cli import main

    d = workspace
    rc = main(
        [
            "prune",
            "--method",
            "movement",
            "--target-speedup",
            "2",
            "--model",
            str(d / "base"),
            "--data-dir",
            str(d / "data"),
            "-o",
            str(d / "cli"),
            "--max-steps",
            "2",
            "--no-progress",
        ]
    )
    assert "structured method" in h.cli_error(rc, capsys.readouterr().err)


def test_run_with_target_speedup_reports_predicted_and_measured(tmp_path, monkeypatch):
    from compress.cli import main
    from compress.core.models import load_config
    from compress.speed.deploy_graph import DeployConfig
    from compress.speed.table import cache_path, table_key

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=32, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert", ffn=128), tmp_path / "teacher")
    key = table_key(load_config(str(tmp_path / "teacher")), DeployConfig(batch=4, seq=16, threads=1))
    LatencyTable(
        key, 2, 4, 128, 0.5, [0.0, 0.3, 0.4, 0.5, 0.6], [0, 16, 32, 64, 128], [0.0, 0.1, 0.16, 0.3, 0.55], 2.8
    ).save(cache_path(key))
    recipe = {
        "task": "sst2",
        "data_dir": str(tmp_path / "data"),
        "bench_batch_sizes": [1],
        "bench_seq_len": 16,
        "bench_iterations": 3,
        "fill_steps": 2,
        "prune": {"method": "struct", "train": {"max_steps": 8, "batch_size": 8, "progress": False}},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    rc = main(
        [
            "run",
            "--recipe",
            str(tmp_path / "recipe.json"),
            "--teacher",
            str(tmp_path / "teacher"),
            "--target-speedup",
            "2",
            "--deploy-shape",
            "4x16",
            "--threads",
            "1",
            "--ffn-block",
            "16",
            "--no-calibrate",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sp = summary["speed"]
    assert sp["target"]["speedup"] == 2 and sp["predicted_speedup"] >= 2 - 1e-6 and sp["measured_speedup"] > 0
    assert summary["recipe"]["bench_batch_sizes"] == [1, 4]  # the deploy batch was added to the benchmark
    assert "Speed target 2x" in (tmp_path / "out" / "report.md").read_text()


def test_prune_calibrates_the_budget_on_the_deploy_graph(workspace, monkeypatch):
    import compress.speed.calibrate as cal
    from compress.core.models import load_config
    from compress.speed.deploy_graph import DeployConfig
    from compress.speed.table import cache_path, table_key

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(workspace / "cache-cal"))
    d = workspace
    key = table_key(load_config(str(d / "base")), DeployConfig(batch=2, seq=16, threads=1))
    attn, ffn = [0.0, 0.30, 0.40, 0.50, 0.60], [0.0, 0.10, 0.16, 0.30, 0.55]
    table = LatencyTable(key, 2, 4, 128, 0.5, attn, [0, 16, 32, 64, 128], ffn, 0.5 + 2 * (0.6 + 0.55))
    table.save(cache_path(key))
    measured = []

    def fake_measure(model, deploy, workdir, repeats=9):  # the deploy graph runs 0.9x the table's speedup
        def measure(kept):
            measured.append(kept)
            return 0.9 * table.baseline_ms / table.predict_kept(kept)

        return measure

    monkeypatch.setattr(cal, "deploy_measure", fake_measure)
    cfg = _cfg(
        target_speedup=1.5, deploy_shape="2x16", deploy_threads=1, ffn_block=16, measure_speed=False, calibrate=True
    )
    info = _prune(d, "calibrated", cfg)
    c = info["speed"]["calibration"]
    assert measured and c["factor"] == pytest.approx(0.9, abs=1e-3)
    assert c["table_budget"] == pytest.approx(table.baseline_ms / 1.5, abs=1e-3)
    assert info["speed"]["budget"] == pytest.approx(0.9 * table.baseline_ms / 1.5, abs=1e-3)
    saved = json.loads((d / "calibrated" / "compression.json").read_text())
    assert table.predict_kept(saved["layers"]) <= 0.9 * table.baseline_ms / 1.5 + 1e-9
    assert info["speed"]["expected_speedup"] == pytest.approx(0.9 * info["speed"]["predicted_speedup"], rel=1e-3)
