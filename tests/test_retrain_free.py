"""retrain-free (Kwon et al. 2022) and smp-struct on tiny random models: budget, Fisher, rearrangement,
least-squares mask tuning, saved checkpoints with zeroed structure, frozen encoders."""

import copy
import json

import datasets
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import helpers as h
from compress.core.config import DataConfig as DataArgs
from compress.core.config import PruneConfig, RetrainFreeConfig, TrainConfig
from compress.core.errors import InvalidConfigError
from compress.core.sparsity import kept_structure
from compress.core.structure import geometry, layer_linears
from compress.pruning.retrain_free import (
    StructureMasks,
    _batches,
    fisher_gradients,
    fold_masks,
    rearrange,
    search,
    tune_masks,
)
from compress.speed.table import flops_table
from compress.training.driver import prune


class TableCost:
    """A latency-table-like cost: per-layer costs differ (a layer-dependent factor) and a fixed overhead."""

    def __init__(self, geo, factors):
        self.geo, self.factors = geo, factors

    def layer_ms(self, heads, ffn_dims):
        return 3.0 * heads + 0.05 * ffn_dims

    def predict_ms(self, heads_per_layer, ffn_per_layer):
        return 1.0 + sum(f * self.layer_ms(a, b) for f, a, b in zip(self.factors, heads_per_layer, ffn_per_layer))

    def dense_ms(self):  # a method here, a property on FlopsCost: both are accepted
        g = self.geo
        return self.predict_ms([g.num_heads] * g.num_layers, [g.intermediate_size] * g.num_layers)


def _dataset(model_type, n=40):
    tok = h.tiny_tokenizer()
    texts = [(h.POSITIVE + h.NEGATIVE)[i % 10] for i in range(n)]
    enc = tok(texts, truncation=True, max_length=32)
    cols = {k: enc[k] for k in ("input_ids", "attention_mask")}
    if model_type != "distilbert":
        cols["token_type_ids"] = enc["token_type_ids"]
    cols["labels"] = [int(i % 10 < 5) for i in range(n)]
    return datasets.Dataset.from_dict(cols), tok


@pytest.mark.parametrize("cost_kind", ["flops", "table"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_search_meets_budget_and_prefers_important_units(cost_kind, target):
    torch.manual_seed(0)
    model = h.tiny_model("bert", layers=3)
    geo = geometry(model.config)
    cost = flops_table(geo, 1, 16) if cost_kind == "flops" else TableCost(geo, [1.0, 2.0, 0.5])
    head_imp, ffn_imp = torch.rand(3, geo.num_heads), torch.rand(3, geo.intermediate_size)
    budget = target * (cost.dense_ms if cost_kind == "flops" else cost.dense_ms())
    res = search(head_imp, ffn_imp, cost, budget)
    hc, fc = res.head_mask.sum(1).int().tolist(), res.ffn_mask.sum(1).int().tolist()
    assert cost.predict_ms(hc, fc) <= budget
    # Within one FFN dim of the budget: one more, in any layer, would break it.
    assert all(
        cost.predict_ms(hc, [f + (i == j) for j, f in enumerate(fc)]) > budget
        for i in range(3)
        if fc[i] < geo.intermediate_size
    )
    # Kept heads are the most important ones; so are kept FFN dims when unit costs are uniform (FLOPs).
    kept_h, dropped_h = head_imp[res.head_mask.bool()], head_imp[~res.head_mask.bool()]
    if len(kept_h) and len(dropped_h):
        assert kept_h.min() >= dropped_h.max()
    if cost_kind == "flops" and not res.ffn_mask.all():
        kept_f, dropped_f = ffn_imp[res.ffn_mask.bool()], ffn_imp[~res.ffn_mask.bool()]
        assert kept_f.min() >= dropped_f.max()
    # Better than keeping the same counts of random units.
    assert res.importance_kept >= float(
        (head_imp.flatten()[torch.randperm(head_imp.numel())[: int(res.head_mask.sum())]]).sum()
        + ffn_imp.flatten()[torch.randperm(ffn_imp.numel())[: int(res.ffn_mask.sum())]].sum()
    )


def test_search_refuses_an_impossible_budget():
    with pytest.raises(InvalidConfigError, match="no structure fits"):
        search(torch.rand(2, 4), torch.rand(2, 64), TableCost(geometry(h.tiny_config("bert")), [1, 1]), 0.5)


def test_fisher_gradients_are_per_example():
    model = h.tiny_model("bert")
    ds, tok = _dataset("bert", n=6)
    batches = _batches(ds, tok, model, 6, 3, seed=0)
    gh, gf = fisher_gradients(model, batches)
    singles = _batches(ds, tok, model, 6, 1, seed=0)
    sh, sf = fisher_gradients(model, singles)
    assert gh.shape == (6, 2, 4) and gf.shape == (6, 2, 64)
    assert gh.abs().sum() > 0
    # Batched with padding == one by one (padded positions are masked out of attention).
    torch.testing.assert_close(gh, sh, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gf, sf, atol=1e-5, rtol=1e-4)


def test_rearrangement_keeps_count_and_lowers_block_fisher_loss():
    torch.manual_seed(0)
    # Correlated gradients: units 0 and 1 are redundant copies, so dropping both costs more than diag says.
    base = torch.randn(200, 6)
    g = torch.cat([base[:, :1], base[:, :1] * 1.01, base[:, 1:]], 1)
    g[:, 2:] *= 0.9
    mask = torch.tensor([0.0, 0.0, 1, 1, 1, 1, 1])  # the diagonal search's choice drops the two copies
    new, before, after = rearrange(mask, g, max_swaps=10)
    assert new.sum() == mask.sum()
    assert after < before
    z = 1 - new.double()
    Fm = g.double().T @ g.double() / g.shape[0]
    assert abs(float(z @ Fm @ z) - after) < 1e-9


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_mask_tuning_reduces_reconstruction_error(family):
    model = h.tiny_model(family, seed=1)
    ds, tok = _dataset(family, n=40)
    batches = _batches(ds, tok, model, 40, 8, seed=0)
    geo = geometry(model.config)
    hm = torch.ones(geo.num_layers, geo.num_heads)
    fm = torch.ones(geo.num_layers, geo.intermediate_size)
    hm[0, :2], hm[1, 1] = 0, 0
    fm[:, ::2] = 0
    with StructureMasks(model) as sm:
        sm.head, sm.ffn = hm.clone(), fm.clone()
        report = tune_masks(model, sm, batches, RetrainFreeConfig())
        tuned_h, tuned_f = sm.head.clone(), sm.ffn.clone()
    assert all(r["error_after"] < r["error_before"] for r in report if r["kept"])
    assert not torch.equal(tuned_f, fm)  # values moved off 1
    assert torch.equal(tuned_h == 0, hm == 0) and torch.equal(tuned_f == 0, fm == 0)  # pruned stays pruned

    # Measured independently: the folded checkpoints' final hidden states against the dense model's.
    untuned, tuned = copy.deepcopy(model), copy.deepcopy(model)
    fold_masks(untuned, hm, fm)
    fold_masks(tuned, tuned_h, tuned_f)

    def err(m):
        total = 0.0
        for b in batches:
            inp = {k: v for k, v in b.items() if k != "labels"}
            with torch.no_grad():
                ref = model(**inp, output_hidden_states=True).hidden_states[-1]
                out = m(**inp, output_hidden_states=True).hidden_states[-1]
            valid = b["attention_mask"].bool()
            total += float(((out - ref)[valid] ** 2).sum())
        return total

    assert err(tuned) < err(untuned)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("rf")
    h.write_sst2_like(d / "data" / "sst2", n_train=48, n_dev=16)
    for family in ("bert", "roberta", "distilbert"):
        h.save_checkpoint(h.tiny_model(family, seed=2), d / f"base-{family}")
    return d


def _cfg(d, method, out, **kw):
    train = TrainConfig(max_steps=12, batch_size=8, progress=False, save_steps=1000, logging_steps=1000)
    return PruneConfig(method=method, train=train, **kw), d / out


def _prune(cfg_out, data, base):
    cfg, out = cfg_out
    return prune(cfg, data, base, output=out)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_retrain_free_checkpoint(workspace, family):
    base = workspace / f"base-{family}"
    out = workspace / f"rf-{family}"
    cfg = _cfg(
        workspace,
        "retrain-free",
        f"rf-{family}",
        target_flops=0.5,
        retrain_free=RetrainFreeConfig(fisher_samples=32, tune_samples=32, batch_size=8),
    )
    info = _prune(cfg, DataArgs(task="sst2", data_dir=str(workspace / "data")), str(base))
    assert info["training"]["steps"] == 0
    sp = info["speed"]
    assert sp["target"]["kind"] == "flops" and sp["predicted"] <= sp["budget"] <= 0.5 * sp["dense"] + 1e-6
    assert abs(info["retrain_free"]["predicted_cost_fraction"] - sp["predicted"] / sp["dense"]) < 1e-6
    saved = json.loads((out / "compression.json").read_text())
    assert saved["method"] == "retrain-free" and saved["layers"] == info["layers"]

    before = AutoModelForSequenceClassification.from_pretrained(base)
    after = AutoModelForSequenceClassification.from_pretrained(out).eval()  # plain transformers
    assert not any("parametrizations" in k for k in after.state_dict())
    d = geometry(after.config).head_size
    geo = geometry(after.config)
    pruned_any = False
    for lb, la, k in zip(layer_linears(before), layer_linears(after), info["layers"]):
        for hd in range(geo.num_heads):
            sl = slice(hd * d, (hd + 1) * d)
            if hd in k["heads_kept"]:  # Q/K/V untouched; O columns only rescaled by the tuned mask value
                for r in ("query", "key", "value"):
                    assert torch.equal(la[r].weight[sl], lb[r].weight[sl])
                ratio = la["attn_out"].weight[:, sl] / lb["attn_out"].weight[:, sl]
                assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
            else:
                pruned_any = True
                for r in ("query", "key", "value"):
                    assert not la[r].weight[sl].any() and not la[r].bias[sl].any()
                assert not la["attn_out"].weight[:, sl].any()
        dead = torch.ones(geo.intermediate_size, dtype=torch.bool)
        dead[k["ffn_dims_kept"]] = False
        assert dead.any() and not la["ffn_in"].weight[dead].any() and not la["ffn_out"].weight[:, dead].any()
        assert torch.equal(la["ffn_in"].weight[~dead], lb["ffn_in"].weight[~dead])
    assert pruned_any
    assert kept_structure(after) == info["layers"]
    emb_a = {k: v for k, v in after.state_dict().items() if "embeddings" in k}
    emb_b = before.state_dict()
    assert all(torch.equal(v, emb_b[k]) for k, v in emb_a.items())


def test_retrain_free_fill_keeps_structure(workspace):
    cfg = _cfg(
        workspace,
        "retrain-free",
        "rf-fill",
        target_flops=0.6,
        fill_steps=4,
        retrain_free=RetrainFreeConfig(fisher_samples=16, tune_samples=16, batch_size=8),
    )
    info = _prune(cfg, DataArgs(task="sst2", data_dir=str(workspace / "data")), str(workspace / "base-bert"))
    ref = _prune(
        _cfg(
            workspace,
            "retrain-free",
            "rf-nofill",
            target_flops=0.6,
            retrain_free=RetrainFreeConfig(fisher_samples=16, tune_samples=16, batch_size=8),
        ),
        DataArgs(task="sst2", data_dir=str(workspace / "data")),
        str(workspace / "base-bert"),
    )
    assert info["training"]["steps"] == 4
    assert info["layers"] == ref["layers"]  # the fill trains inside the structure retrain-free chose
    a = AutoModelForSequenceClassification.from_pretrained(workspace / "rf-fill")
    b = AutoModelForSequenceClassification.from_pretrained(workspace / "rf-nofill")
    assert not torch.equal(
        a.bert.encoder.layer[0].intermediate.dense.weight, b.bert.encoder.layer[0].intermediate.dense.weight
    )


def test_budget_flag_errors(workspace):
    data = DataArgs(task="sst2", data_dir=str(workspace / "data"))
    base = str(workspace / "base-bert")
    with pytest.raises(InvalidConfigError, match="needs a budget"):
        _prune(_cfg(workspace, "retrain-free", "x"), data, base)
    with pytest.raises(InvalidConfigError, match="drop --lambda / --sparsity"):
        _prune(_cfg(workspace, "retrain-free", "x", target_flops=0.5, sparsity=0.3), data, base)
    with pytest.raises(InvalidConfigError, match="structured method"):
        _prune(_cfg(workspace, "movement", "x", target_flops=0.5), data, base)
    with pytest.raises(InvalidConfigError, match="hybrid-filled"):
        _prune(_cfg(workspace, "struct", "x", fill_steps=3), data, base)
    with pytest.raises(InvalidConfigError, match="out of range"):
        _prune(_cfg(workspace, "retrain-free", "x", target_flops=0.0), data, base)


# ------------------------------------------------------------------ smp-struct
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_smp_struct_frozen_encoder_and_structured_mask(workspace, tmp_path, family):
    from compress.cli.main import main

    base = workspace / f"base-{family}"
    out = workspace / f"smp-struct-{family}"
    cfg = _cfg(workspace, "smp-struct", f"smp-struct-{family}", target_flops=0.5)
    cfg[0].train.warmup_ratio = 0.05
    info = _prune(cfg, DataArgs(task="sst2", data_dir=str(workspace / "data")), str(base))
    assert info["speed"]["predicted"] <= info["speed"]["budget"] + 1e-6  # the speed branch's budget solver chose it
    geo = geometry(h.tiny_config(family))
    assert sum(len(k["heads_kept"]) for k in info["layers"]) < geo.num_layers * geo.num_heads
    before = AutoModelForSequenceClassification.from_pretrained(base)
    after = AutoModelForSequenceClassification.from_pretrained(out)
    # Encoder weights bit-identical except whole zeroed heads / FFN dims.
    d = geo.head_size
    for lb, la, k in zip(layer_linears(before), layer_linears(after), info["layers"]):
        rows = torch.zeros(geo.num_heads * d, dtype=torch.bool)
        for hd in k["heads_kept"]:
            rows[hd * d : (hd + 1) * d] = True
        dims = torch.zeros(geo.intermediate_size, dtype=torch.bool)
        dims[k["ffn_dims_kept"]] = True
        for role, keep in (
            ("query", rows[:, None]),
            ("key", rows[:, None]),
            ("value", rows[:, None]),
            ("attn_out", rows[None, :]),
            ("ffn_in", dims[:, None]),
            ("ffn_out", dims[None, :]),
        ):
            assert torch.equal(la[role].weight, lb[role].weight * keep), role
    emb_b = before.state_dict()
    assert all(
        torch.equal(v, emb_b[k])
        for k, v in after.state_dict().items()
        if "embeddings" in k or "LayerNorm" in k or "layer_norm" in k
    )
    # One bit per head and FFN dim on disk; re-applied to the backbone it gives the same checkpoint.
    assert main(["mask", "save", str(out), "--backbone", str(base), "-o", str(tmp_path / "task.mask")]) == 0
    size = (tmp_path / "task.mask").stat().st_size
    classifier_bytes = sum(
        v.numel() * 4 for k, v in after.state_dict().items() if k.startswith(("classifier", "pre_classifier"))
    )
    assert size < classifier_bytes + 8192  # bits of structure + the trained head, not a bit per weight
    assert main(["mask", "apply", str(base), str(tmp_path / "task.mask"), "-o", str(tmp_path / "rebuilt")]) == 0
    rebuilt = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rebuilt")
    for k, v in after.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k


def test_smp_struct_scores_start_from_unit_magnitude():
    from compress.pruning.methods import get_method
    from compress.pruning.pruner import Pruner

    model = h.tiny_model("bert")
    lin = layer_linears(model)[0]
    with torch.no_grad():
        lin["attn_out"].weight[:, 8:16] *= 10  # head 1 is far larger than the others
    pruner = Pruner(model, get_method("smp-struct"), PruneConfig(method="smp-struct", sparsity=0.5))
    scores = pruner.scores["layer_0_heads"].detach()
    assert int(scores.argmax()) == 1 and len(set(scores.tolist())) == len(scores)  # no ties kept by index
    pruner.finalize()
    assert pruner.group_mask("layer.0.heads")[1] == 1
