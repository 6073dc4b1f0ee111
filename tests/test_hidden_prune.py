"""Hidden-dimension pruning: the masked LayerNorm, exact removal in PyTorch and in the exported graph,
the methods that learn the mask, checkpoints that keep it, and the refusals."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
import transformers
from task_helpers import base_checkpoint
from test_qa_task import make_examples
from test_token_task import tagged_rows, write_jsonl

import compress
import helpers as h
from compress.core import hidden
from compress.core.artifacts import load_pretrained
from compress.pruning.compact import compact_model
from compress.task_onnx import INT8_FILE

FAMILIES = ("bert", "roberta", "distilbert")
HEADS = ("ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification", "Model")
CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_cutting_the_masked_dims_changes_nothing(family, head):
    torch.manual_seed(0)
    model = getattr(transformers, CLASS_PREFIX[family] + head)(h.tiny_config(family)).eval()
    size = hidden.geometry(model.config).hidden_size
    kept = sorted(torch.randperm(size)[: size * 5 // 8].tolist())
    hidden.fix(model, kept)
    hidden.zero_pruned(model, kept)
    key = "last_hidden_state" if head == "Model" else ("start_logits" if "Question" in head else "logits")
    with torch.no_grad():
        masked = model(**_inputs())[key]
        cut = hidden.slice_hidden(copy.deepcopy(model), kept)
        sliced = cut(**_inputs())[key]
        compact = compact_model(cut)(**_inputs())[key]
    if head == "Model":  # the stream itself is narrower: compare on the kept dims, the rest is exactly 0
        assert float(masked[..., [i for i in range(size) if i not in kept]].abs().max()) == 0
        masked = masked[..., kept]
    assert sliced.shape == masked.shape
    assert float((masked - sliced).abs().max()) < 1e-5
    assert float((masked - compact).abs().max()) < 1e-5
    # and the masked LayerNorm matters: over all dims the same weights predict something else
    plain = getattr(transformers, CLASS_PREFIX[family] + head)(h.tiny_config(family)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        other = plain(**_inputs())[key]
    assert float((other[..., kept] if head == "Model" else other).sub(masked).abs().max()) > 1e-3


def _train(**kw) -> compress.TrainConfig:
    return compress.TrainConfig(**{"max_steps": 4, "batch_size": 8, "warmup_ratio": 0.05, "progress": False, **kw})


# smp-struct is top-k: hidden_sparsity 0.25 keeps exactly 24 of the tiny models' 32 dims.
TOPK = dict(method="smp-struct", sparsity=0.5, prune_hidden=True, hidden_sparsity=0.25)


def _export_and_check(tmp_path, pruned, data, ev=None):
    exported = compress.export_onnx(pruned.path, tmp_path / "onnx", compress.ExportConfig(optimize=True))
    graph = onnx.load(str(exported.path))
    widths = {
        tuple(onnx.numpy_helper.to_array(i).shape) for i in graph.graph.initializer if "word_embeddings" in i.name
    }
    assert widths and all(w[1] == 24 for w in widths), widths
    ev = ev or compress.EvalConfig()
    on_checkpoint = compress.evaluate(pruned.path, ev, data=data).metrics
    assert on_checkpoint == compress.evaluate(exported.path, ev, data=data).metrics
    int8 = compress.quantize(exported.path, exported.path.with_name(INT8_FILE))
    assert compress.evaluate(int8.path, ev, data=data).metrics.keys() == on_checkpoint.keys()
    return exported


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classifier_chain(tmp_path, family):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=32, n_dev=16)
    base = base_checkpoint(family, tmp_path / "base")
    data = compress.DataConfig(task="sst2", data_dir=str(tmp_path / "data"))
    pruned = compress.prune(str(base), tmp_path / "pruned", compress.PruneConfig(**TOPK, train=_train()), data=data)
    info = json.loads((pruned.path / "compression.json").read_text())
    assert info["hidden"]["size"] == 32 and info["hidden"]["kept_count"] == 24
    assert "hidden dimension is pruned to 24 of 32" in (pruned.path / "README.md").read_text()
    # compress's loader applies the record; plain transformers normalises over all 32 dims
    batch = dict(h.tiny_tokenizer()(h.POSITIVE, padding=True, return_tensors="pt"))
    if family == "distilbert":
        batch.pop("token_type_ids")
    cls = transformers.AutoModelForSequenceClassification
    with torch.no_grad():
        ours = load_pretrained(cls, pruned.path).eval()(**batch).logits
        theirs = cls.from_pretrained(str(pruned.path)).eval()(**batch).logits
    assert float((ours - theirs).abs().max()) > 1e-4
    assert pruned.metrics["accuracy"] == compress.evaluate(pruned.path, data=data).metrics["accuracy"]
    _export_and_check(tmp_path, pruned, data)


def test_question_answering_and_tagging_chains(tmp_path):
    base = base_checkpoint("bert", tmp_path / "base")
    for split, n, seed in (("train", 16, 0), ("dev", 6, 1)):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(e) for e in make_examples(n, seed=seed)))
    qa = compress.DataConfig(
        task_type="question-answering",
        train_file=str(tmp_path / "train.jsonl"),
        validation_file=str(tmp_path / "dev.jsonl"),
        doc_stride=8,
    )
    cfg = compress.PruneConfig(**TOPK, train=_train(max_length=24, eval_max_length=24))
    pruned = compress.prune(str(base), tmp_path / "qa", cfg, data=qa)
    _export_and_check(tmp_path / "qa-out", pruned, qa, compress.EvalConfig(max_length=24))
    tags = compress.DataConfig(
        task_type="token-classification",
        train_file=str(write_jsonl(tmp_path / "t.jsonl", tagged_rows(16))),
        validation_file=str(write_jsonl(tmp_path / "d.jsonl", tagged_rows(6, seed=1))),
    )
    pruned = compress.prune(str(base), tmp_path / "tags", compress.PruneConfig(**TOPK, train=_train()), data=tags)
    _export_and_check(tmp_path / "tags-out", pruned, tags)


def test_struct_learns_the_hidden_mask_and_hybrid_filled_keeps_it(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=48, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    data = compress.DataConfig(task="sst2", data_dir=str(tmp_path / "data"))
    cfg = compress.PruneConfig(
        method="struct", lambda_reg=5.0, score_lr=0.3, prune_hidden=True, train=_train(max_steps=20)
    )
    src = compress.prune(str(tmp_path / "base"), tmp_path / "struct", cfg, data=data)
    kept = json.loads((src.path / "compression.json").read_text())["hidden"]
    assert 0 < kept["kept_count"] < 32
    filled = compress.prune(
        None,
        tmp_path / "filled",
        compress.PruneConfig(method="hybrid-filled", source=str(src.path), train=_train()),
        data=data,
    )
    assert json.loads((filled.path / "compression.json").read_text())["hidden"] == kept
    model = load_pretrained(transformers.AutoModelForSequenceClassification, filled.path)
    emb = model.bert.embeddings.word_embeddings.weight
    dead = [i for i in range(32) if i not in kept["kept"]]
    assert not emb[:, dead].any() and emb[:, kept["kept"]].any()


def test_a_threshold_never_empties_the_stream(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=48, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    cfg = compress.PruneConfig(
        method="struct", lambda_reg=50.0, score_lr=0.5, prune_hidden=True, train=_train(max_steps=20)
    )
    data = compress.DataConfig(task="sst2", data_dir=str(tmp_path / "data"))
    out = compress.prune(str(tmp_path / "base"), tmp_path / "out", cfg, data=data)
    assert json.loads((out.path / "compression.json").read_text())["hidden"]["kept_count"] >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "movement"], "--prune-hidden works with"),
        (["--method", "retrain-free", "--target-flops", "0.5"], "fixed residual width"),
        (["--method", "hybrid-filled", "--source", "x"], "keeps the hidden dims of its --source"),
        (["--method", "struct", "--task", "embedding"], "shrink the sentence embedding"),
    ],
)
def test_refusals(tmp_path, capsys, args, message):
    code = h.main(["prune", "--prune-hidden", *args, "-o", str(tmp_path / "o")])
    assert message in h.cli_error(code, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_hidden_record_mismatch_is_caught_by_the_reload_check(tmp_path):
    """A checkpoint whose recorded kept dims are not the ones it was trained with predicts differently."""
    model = h.tiny_model("bert").eval()
    kept = list(range(0, 32, 2))
    hidden.fix(model, kept)
    hidden.zero_pruned(model, kept)
    with torch.no_grad():
        a = model(**_inputs())["logits"]
    h.save_checkpoint(model, tmp_path / "ckpt")
    info = {"format_version": compress.core.artifacts.FORMAT_VERSION, "hidden": hidden.record(kept[:-1], 32)}
    (tmp_path / "ckpt" / "compression.json").write_text(json.dumps(info))
    b = load_pretrained(transformers.AutoModelForSequenceClassification, tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert float((b(**_inputs())["logits"] - a).abs().max()) > 1e-4
    info["hidden"] = hidden.record(kept, 32)
    (tmp_path / "ckpt" / "compression.json").write_text(json.dumps(info))
    c = load_pretrained(transformers.AutoModelForSequenceClassification, tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert np.allclose(c(**_inputs())["logits"].numpy(), a.numpy(), atol=1e-6)


def test_a_speed_target_with_the_hidden_mask(tmp_path):
    """Under a FLOPs budget the solver prices the hidden dims with the heads and FFN dims (which it keeps is
    its business: tests/test_speed_hidden.py); what it keeps is what compression.json, the speed record and
    the exported graph say, and the graph scores as the checkpoint does."""
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=48, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    data = compress.DataConfig(task="sst2", data_dir=str(tmp_path / "data"))
    cfg = compress.PruneConfig(method="struct", target_flops=0.3, prune_hidden=True, train=_train(max_steps=12))
    out = compress.prune(str(tmp_path / "base"), tmp_path / "out", cfg, data=data)
    info = json.loads((out.path / "compression.json").read_text())
    kept = info["hidden"]["kept_count"]
    assert info["speed"]["hidden_kept"] == kept
    assert info["speed"]["predicted_speedup"] > 1
    exported = compress.export_onnx(out.path, tmp_path / "onnx")
    graph = onnx.load(str(exported.path))
    table = next(i for i in graph.graph.initializer if "word_embeddings" in i.name)
    assert table.dims[1] == kept
    assert compress.evaluate(out.path, data=data).metrics == compress.evaluate(exported.path, data=data).metrics


def test_compress_run_takes_the_flags(tmp_path, capsys):
    """`compress run --prune-hidden` reaches the prune stage's config (here: its refusal for movement)."""
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=16, n_dev=8)
    args = ["--teacher", str(tmp_path / "base"), "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "o")]
    capsys.readouterr()  # the checkpoint writer's progress bar
    code = h.main(["run", "--prune-hidden", "--method", "movement", "--layer-weight", "1", *args])
    assert "--prune-hidden works with" in h.cli_error(code, capsys.readouterr().err)


def test_compress_run_with_the_hidden_mask(tmp_path):
    """The whole chain: prune with the hidden mask, fill holding it, export, int8, eval; the report says so."""
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "base")
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=32, n_dev=8)
    cfg = compress.RunConfig(
        task="sst2",
        data_dir=str(tmp_path / "data"),
        fill_steps=2,
        prune=compress.PruneConfig(**TOPK, train=_train()),
        bench_data=False,
    )
    cfg.prune.distill.teacher = str(tmp_path / "base")
    out = compress.run(None, tmp_path / "run", cfg)
    summary = json.loads((out.path / "summary.json").read_text())
    assert summary["hidden"]["kept_count"] == 24
    filled = json.loads((out.path / "filled" / "compression.json").read_text())
    assert filled["method"] == "hybrid-filled" and filled["hidden"] == summary["hidden"]
    assert "Hidden dimension pruned to 24 of 32" in (out.path / "report.md").read_text()
