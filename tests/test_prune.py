"""Every method on tiny random models: gradients, freezing, sparsity targets, saved checkpoints."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import helpers as h
from compress.core.config import DataConfig, DistillConfig, PruneConfig, TrainConfig
from compress.core.errors import InvalidConfigError
from compress.pruning.masks import topk_mask
from compress.pruning.methods import METHODS, get_method
from compress.pruning.pruner import Pruner
from compress.training.driver import prune
from compress.training.loop import StudentWithLoss


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    d = tmp_path_factory.mktemp("prune")
    h.write_sst2_like(d / "data" / "sst2", n_train=48, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), d / "base")
    return d


def _cfg(d, method, out, steps=12, **kw):
    return PruneConfig(
        method=method,
        train=TrainConfig(max_steps=steps, batch_size=8, progress=False, save_steps=1000, logging_steps=1000),
        **kw,
    )


def _batch(model):
    tok = h.tiny_tokenizer()
    enc = tok(h.POSITIVE + h.NEGATIVE, padding=True, return_tensors="pt")
    if model.config.model_type == "distilbert":
        enc.pop("token_type_ids")
    return dict(enc), torch.tensor([1] * 5 + [0] * 5)


LEARNED = [m for m in METHODS.values() if m.binarizer in ("topk", "threshold", "smp-s")]


@pytest.mark.parametrize("name", [m.name for m in LEARNED])
def test_scores_get_gradients(name):
    model = h.tiny_model("bert")
    method = get_method(name)
    pruner = Pruner(model, method, PruneConfig(method=name, lambda_reg=1.0 if method.regularised else None))
    pruner.set_step(50, 100, 10)
    wrapper = StudentWithLoss(model, pruner, None, DistillConfig())
    wrapper.train()
    batch, labels = _batch(model)
    wrapper(**batch, labels=labels)["loss"].backward()
    grads = [p.grad for p in pruner.scores.values()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("init, stays_near_magnitude", [(None, True), (0.0, False)])
def test_topk_score_init_survives_noisy_steps(init, stays_near_magnitude):
    """Default (magnitude) scores keep a sensible mask through early noisy Adam steps; a constant init
    (the papers') does not, which is what made short movement / SMP runs collapse to the majority class."""
    torch.manual_seed(0)
    model = h.tiny_model("bert")
    pruner = Pruner(model, get_method("movement"), PruneConfig(method="movement", sparsity=0.7, score_init=init))
    pruner.set_step(100, 100, 0)
    name = pruner.groups[0].name
    linear = pruner.groups[0].members[0][0]
    by_magnitude = linear.parametrizations.weight.original.detach().abs()
    reference = pruner.group_mask(name).detach().clone()
    assert torch.equal(reference, topk_mask(by_magnitude, 0.3))  # both inits start at the magnitude mask
    opt = torch.optim.Adam(pruner.scores.parameters(), lr=1e-2)
    for _ in range(20):  # zero-mean gradient noise, like a converged model's
        for p in pruner.scores.values():
            p.grad = torch.randn_like(p)
        opt.step()
    pruner.invalidate()
    kept = pruner.group_mask(name).detach().bool()
    overlap = float((kept & reference.bool()).sum() / reference.sum())
    assert (overlap > 0.9) == stays_near_magnitude, overlap


def test_bad_score_init_is_refused():
    with pytest.raises(InvalidConfigError, match="score_init"):
        PruneConfig(method="movement", score_init="uniform").validate()


@pytest.mark.parametrize("name", ["smp-l", "smp-s"])
def test_smp_keeps_encoder_frozen(workspace, name):
    before = AutoModelForSequenceClassification.from_pretrained(workspace / "base")
    info = prune(
        _cfg(workspace, name, f"out-{name}", sparsity=0.4),
        DataConfig(task="sst2", data_dir=str(workspace / "data")),
        str(workspace / "base"),
        output=workspace / f"out-{name}",
    )
    after = AutoModelForSequenceClassification.from_pretrained(workspace / f"out-{name}")
    b, a = before.state_dict(), after.state_dict()
    for k in b:
        if k.startswith("bert.embeddings") or (k.startswith("bert.encoder") and not k.endswith(".weight")):
            assert torch.equal(a[k], b[k]), k  # frozen: embeddings, biases, LayerNorms unchanged
        elif k.startswith("bert.encoder") and "LayerNorm" not in k:
            keep = a[k] != 0
            assert torch.equal(a[k][keep], b[k][keep]), k  # kept weights are the pre-trained ones
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])  # the head trains
    assert abs(info["sparsity"]["encoder_linear"] - 0.4) < 0.01
    assert "smp_note" in info


@pytest.mark.parametrize("name", ["magnitude", "movement"])
def test_topk_methods_reach_target_and_reload(workspace, name):
    out = workspace / f"out-{name}"
    info = prune(
        _cfg(workspace, name, f"out-{name}", sparsity=0.7, distill=DistillConfig(teacher=str(workspace / "base"))),
        DataConfig(task="sst2", data_dir=str(workspace / "data")),
        str(workspace / "base"),
        output=workspace / f"out-{name}",
    )
    assert abs(info["sparsity"]["encoder_linear"] - 0.7) < 0.01
    saved = json.loads((out / "compression.json").read_text())
    assert saved["method"] == name and saved["teacher"] and set(saved["files"]) == {"model.safetensors", "config.json"}
    assert (out / "README.md").exists() and (out / "tokenizer_config.json").exists()
    # Plain transformers reloads it, the zeros are baked in, and it predicts the same as a second load.
    m = AutoModelForSequenceClassification.from_pretrained(out).eval()
    w = m.bert.encoder.layer[0].attention.self.query.weight
    assert abs(float((w == 0).float().mean()) - 0.7) < 0.02
    assert not any("parametrizations" in k for k in m.state_dict())


@pytest.mark.parametrize("name", ["soft-movement", "block", "hybrid", "struct"])
def test_soft_methods_prune_with_lambda(workspace, name):
    # A large score lr and lambda make a few steps enough to move scores below the threshold.
    cfg = _cfg(workspace, name, f"out-{name}", steps=20, lambda_reg=50.0, score_lr=0.5, block_size=8)
    cfg.train.warmup_ratio = 0.05
    info = prune(
        cfg,
        DataConfig(task="sst2", data_dir=str(workspace / "data")),
        str(workspace / "base"),
        output=workspace / f"out-{name}",
    )
    assert info["sparsity"]["encoder_linear"] > 0.3
    if name == "struct":
        assert sum(len(l["heads_kept"]) for l in info["layers"]) < 8  # whole heads went


def test_hybrid_filled_keeps_structure(workspace):
    src = workspace / "out-struct-src"
    cfg = _cfg(workspace, "struct", "out-struct-src", steps=20, lambda_reg=50.0, score_lr=0.5)
    cfg.train.warmup_ratio = 0.05
    src_info = prune(
        cfg, DataConfig(task="sst2", data_dir=str(workspace / "data")), str(workspace / "base"), output=src
    )
    info = prune(
        _cfg(workspace, "hybrid-filled", "out-filled", source=str(src)),
        DataConfig(task="sst2", data_dir=str(workspace / "data")),
        output=workspace / "out-filled",
    )
    assert [l["heads_kept"] for l in info["layers"]] == [l["heads_kept"] for l in src_info["layers"]]
    assert [l["ffn_dims_kept"] for l in info["layers"]] == [l["ffn_dims_kept"] for l in src_info["layers"]]


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_other_families(tmp_path, family):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=16, n_dev=8)
    h.save_checkpoint(h.tiny_model(family), tmp_path / "base")
    info = prune(
        _cfg(tmp_path, "movement", "out", steps=4, sparsity=0.5),
        DataConfig(task="sst2", data_dir=str(tmp_path / "data")),
        str(tmp_path / "base"),
        output=tmp_path / "out",
    )
    assert json.loads((tmp_path / "out" / "compression.json").read_text())["model_type"] == family
    assert abs(info["sparsity"]["encoder_linear"] - 0.5) < 0.01


def test_config_errors(workspace):
    data = DataConfig(task="sst2", data_dir=str(workspace / "data"))
    with pytest.raises(InvalidConfigError, match="unknown method"):
        prune(_cfg(workspace, "nope", "x"), data, str(workspace / "base"), output=workspace / "x")
    with pytest.raises(InvalidConfigError, match="out of range"):
        prune(_cfg(workspace, "movement", "x", sparsity=1.5), data, str(workspace / "base"), output=workspace / "x")
    with pytest.raises(InvalidConfigError, match="--lambda"):
        prune(_cfg(workspace, "hybrid", "x", sparsity=0.5), data, str(workspace / "base"), output=workspace / "x")
    with pytest.raises(InvalidConfigError, match="needs --source"):
        prune(_cfg(workspace, "hybrid-filled", "x"), data, str(workspace / "base"), output=workspace / "x")
    (workspace / "occupied").mkdir(exist_ok=True)
    (workspace / "occupied" / "file").write_text("x")
    with pytest.raises(InvalidConfigError, match="not empty"):
        prune(_cfg(workspace, "movement", "occupied"), data, str(workspace / "base"), output=workspace / "occupied")


def test_smp_bitmask_roundtrip(workspace, tmp_path):
    from compress.cli.main import main

    src = workspace / "out-smp-l"
    if not src.exists():
        prune(
            _cfg(workspace, "smp-l", "out-smp-l", sparsity=0.4),
            DataConfig(task="sst2", data_dir=str(workspace / "data")),
            str(workspace / "base"),
            output=workspace / "out-smp-l",
        )
    assert main(["mask", "save", str(src), "-o", str(tmp_path / "task.mask")]) == 0
    assert (
        main(["mask", "apply", str(workspace / "base"), str(tmp_path / "task.mask"), "-o", str(tmp_path / "rebuilt")])
        == 0
    )
    a = AutoModelForSequenceClassification.from_pretrained(src).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rebuilt").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = (src / "model.safetensors").stat().st_size
    assert (tmp_path / "task.mask").stat().st_size < full / 4


def test_smp_label_words_head_free(workspace, tmp_path):
    from transformers import AutoModelForMaskedLM

    from compress.cli.main import main
    from compress.core.errors import InvalidConfigError

    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(h.tiny_config("bert"))
    h.save_checkpoint(mlm, tmp_path / "mlm")
    cfg = _cfg(tmp_path, "smp-l", "out", sparsity=0.3)
    cfg.label_words = ["bad", "good"]
    info = prune(
        cfg, DataConfig(task="sst2", data_dir=str(workspace / "data")), str(tmp_path / "mlm"), output=tmp_path / "out"
    )
    assert info["head"] == "mlm-label-words" and abs(info["sparsity"]["encoder_linear"] - 0.3) < 0.01
    after = AutoModelForMaskedLM.from_pretrained(tmp_path / "out").state_dict()
    for k, v in mlm.state_dict().items():
        if k in after and "encoder" not in k:
            assert torch.equal(after[k], v), k  # nothing task-specific trained
    assert main(["eval", str(tmp_path / "out"), "--data-dir", str(workspace / "data")]) == 0
    # A model without its MLM head is refused rather than given a random one.
    cfg2 = _cfg(tmp_path, "smp-l", "out2", sparsity=0.3)
    cfg2.label_words = ["bad", "good"]
    with pytest.raises(InvalidConfigError, match="no masked-language-model head"):
        prune(
            cfg2,
            DataConfig(task="sst2", data_dir=str(workspace / "data")),
            str(workspace / "base"),
            output=tmp_path / "out2",
        )
