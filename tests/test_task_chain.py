"""Every task type through the whole chain on tiny BERT, RoBERTa and DistilBERT models: prune (struct, a
few steps) -> export -> shrink -> quantize -> eval, the checkpoint and its fp32 graph scoring the same;
an embedding export is a sentence-transformers folder whose graph embeds as SentenceTransformer does;
`compress run` on data files and on the embedding task."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import onnx
import pytest
import torch
from task_helpers import base_checkpoint, sentence, tokenizer
from test_embedding_task import EMBEDDING_METRICS, TEXTS
from test_qa_task import make_examples
from test_token_task import TAGS, tagged_rows, write_jsonl

import compress
import helpers as h
from compress.core.errors import DataError
from compress.task_onnx import INT8_FILE, default_seq_lens
from compress.tasks.embedding import PoolingSpec, SentenceEncoder, save_sentence_transformers_folder
from exporters.sessions import make_session


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny models' steps take milliseconds on one thread and up to a second on two threads of a
    loaded machine (they wait for each other), so this module trains on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A few steps to a FLOPs budget: the structure is cut whatever the training did, so shrink has work.
PRUNE = dict(method="struct", target_flops=0.5)


def train_config(max_length: int, **kw) -> compress.TrainConfig:
    return compress.TrainConfig(
        max_steps=3,
        batch_size=8,
        warmup_ratio=0.05,
        progress=False,
        max_length=max_length,
        eval_max_length=max_length,
        **kw,
    )


def embedding_checkpoint(family: str, folder, mode: str, normalize: bool):
    """A tiny random sentence-transformers folder of `family` with this pooling. Weights drawn wider than
    transformers' 0.02: at 0.02 every text's CLS vector is the same to 1e-4, and metrics read from the
    order of similarities would order float noise."""
    from transformers import AutoModel

    torch.manual_seed(0)
    encoder = AutoModel.from_config(h.tiny_config(family, initializer_range=0.2)).eval()
    return save_sentence_transformers_folder(
        SentenceEncoder(encoder, PoolingSpec(mode, normalize)), tokenizer(family), folder
    )


def chain(tmp_path, model, data: compress.DataConfig, length: int, teacher=None):
    """prune -> export (shrunk, fused) -> int8; (pruned checkpoint, fp32 export, int8 graph)."""
    cfg = compress.PruneConfig(**PRUNE, train=train_config(length), distill=compress.DistillConfig(teacher=teacher))
    pruned = compress.prune(str(model), tmp_path / "pruned", cfg, data=data)
    exported = compress.export_onnx(pruned.path, tmp_path / "onnx", compress.ExportConfig(optimize=True))
    assert exported.report["shrink"] is not None  # the budget removed heads / FFN dims, and the graph lost them
    assert exported.report["shrink"]["params_after"] < exported.report["shrink"]["params_before"]
    assert exported.report["optimize"]["applied"]
    int8 = compress.quantize(exported.path, exported.path.with_name(INT8_FILE))
    return pruned, exported, int8


def assert_same_metrics(a: dict, b: dict, approx: tuple[str, ...] = ()):
    """Equal metrics; `approx`: those read from the order of float similarities, where the graph's float
    noise (1e-6) can swap two nearly equal pairs (one swap moves a Spearman correlation by ~1e-5)."""
    assert set(a) == set(b)
    for k in a:
        assert a[k] == (pytest.approx(b[k], abs=1e-3) if k in approx else b[k]), k


# --------------------------------------------------------------------------------------- QA and tagging
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_question_answering_chain(tmp_path, family):
    base = base_checkpoint(family, tmp_path / "base")
    for split, n, seed in (("train", 16, 0), ("dev", 6, 1)):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(e) for e in make_examples(n, seed=seed)))
    data = compress.DataConfig(
        task_type="question-answering",
        train_file=str(tmp_path / "train.jsonl"),
        validation_file=str(tmp_path / "dev.jsonl"),
        doc_stride=8,
    )
    length = 64 if family == "roberta" else 24  # RoBERTa's test tokenizer spells words out by character
    pruned, exported, int8 = chain(tmp_path, base, data, length)
    assert [o.name for o in onnx.load(str(exported.path)).graph.output] == ["start_logits", "end_logits"]
    ev = compress.EvalConfig(max_length=length)
    on_checkpoint = compress.evaluate(pruned.path, ev, data=data).metrics
    assert set(on_checkpoint) == {"exact_match", "f1"}
    assert on_checkpoint == compress.evaluate(exported.path, ev, data=data).metrics
    # The task type is the model's own: the validation file alone is enough.
    only_file = compress.DataConfig(validation_file=data.validation_file, doc_stride=8)
    result = compress.evaluate(int8.path, ev, data=only_file)
    assert result.report["task_type"] == "question-answering" and result.report["batch_size"] == 1
    assert 0 <= result.metrics["f1"] <= 100
    with pytest.raises(DataError, match="--validation-file"):  # trained on files: nothing built in to score on
        compress.evaluate(exported.path, ev)
    assert default_seq_lens([exported.path, int8.path]) == (384,)  # QA graphs are timed at their windows


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_token_classification_chain(tmp_path, family):
    kw = {"add_prefix_space": True} if family == "roberta" else {}
    base = base_checkpoint(family, tmp_path / "base", **kw)
    data = compress.DataConfig(
        task_type="token-classification",
        train_file=str(write_jsonl(tmp_path / "train.jsonl", tagged_rows(16))),
        validation_file=str(write_jsonl(tmp_path / "dev.jsonl", tagged_rows(6, seed=1))),
    )
    pruned, exported, int8 = chain(tmp_path, base, data, 64)
    graph = onnx.load(str(exported.path))
    assert [o.name for o in graph.graph.output] == ["logits"]
    ev = compress.EvalConfig(max_length=64)
    on_checkpoint = compress.evaluate(pruned.path, ev, data=data).metrics
    assert on_checkpoint == compress.evaluate(exported.path, ev, data=data).metrics
    assert {"precision", "recall", "f1", "accuracy", "per_type"} <= set(on_checkpoint)
    assert compress.evaluate(int8.path, ev, data=data).report["task_type"] == "token-classification"
    assert set(json.loads((exported.path.parent / "config.json").read_text())["label2id"]) <= set(TAGS)
    assert default_seq_lens([exported.path]) == (128,)


# --------------------------------------------------------------------------------------- embeddings
FLOAT_METRICS = ("mrpc_roc_auc", "mrpc_f1", "fidelity_cosine", "fidelity_spearman")


def write_data_dir(root, seed: int = 0):
    """The embedding evaluation sets (sst2/, mrpc/, squad/dev-v1.1.json) in words the tiny tokenizers
    know, so texts differ as token sequences too: 8 articles (2 held out for retrieval)."""
    rng = random.Random(seed)
    say = lambda n: " ".join(sentence(rng, n))  # noqa: E731
    for name in ("sst2", "mrpc", "squad"):
        (root / name).mkdir(parents=True)
    for split in ("train", "dev"):
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{say(6)}\t1\n" for _ in range(8)))
        rows = [f"{i % 2}\t{i}\t{i + 100}\t{say(7)}\t{say(7)}" for i in range(8)]
        header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        (root / "mrpc" / f"{split}.tsv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    articles = [
        {
            "title": f"A{a}",
            "paragraphs": [{"context": say(20), "qas": [{"question": say(5)} for _ in range(2)]} for _ in "pq"],
        }
        for a in range(8)
    ]
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": articles}))
    return root


def graph_embeddings(graph_path, family: str, texts) -> np.ndarray:
    session = make_session(graph_path, threads=1)
    batch = tokenizer(family)(list(texts), padding=True, return_tensors="np")
    ids = np.asarray(batch["input_ids"], np.int64)
    feeds = {i.name: np.asarray(batch.get(i.name, np.zeros_like(ids)), np.int64) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    assert names == ["last_hidden_state", "sentence_embedding"]
    return dict(zip(names, session.run(None, feeds)))["sentence_embedding"]


def st_embeddings(folder, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(folder), device="cpu").encode(list(texts), batch_size=len(texts))


@pytest.mark.parametrize(
    "family,mode,normalize", [("bert", "mean", True), ("roberta", "cls", False), ("distilbert", "mean", False)]
)
def test_embedding_chain(tmp_path, family, mode, normalize):
    base = embedding_checkpoint(family, tmp_path / "base", mode, normalize)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 4 + [f"{t} , very fun" for t in TEXTS]))
    data = compress.DataConfig(
        task="embedding", train_file=str(tmp_path / "corpus.txt"), data_dir=str(write_data_dir(tmp_path / "data"))
    )
    pruned, exported, int8 = chain(tmp_path, base, data, 48)
    out = tmp_path / "onnx"
    assert exported.path == out / "onnx" / "model.onnx" and int8.path == out / "onnx" / INT8_FILE
    assert {"modules.json", "1_Pooling", "model.safetensors", "config.json", "compression.json"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "2_Normalize").is_dir() == normalize
    info = compress.core.artifacts.read_compression_json(out, verify=True)  # the graph's checksum included
    assert info["onnx"]["file"] == "onnx/model.onnx" and info["pooling"] == {"mode": mode, "normalize": normalize}
    # The folder is the pruned model for sentence-transformers, and its graph embeds the same.
    want = st_embeddings(out, TEXTS)
    np.testing.assert_allclose(graph_embeddings(exported.path, family, TEXTS), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(st_embeddings(pruned.path, TEXTS), want, atol=1e-6, rtol=0)
    # Checkpoint and graph score alike; fidelity is against the dense model the pruned one recorded.
    ev = compress.EvalConfig(max_length=48)
    on_checkpoint = compress.evaluate(pruned.path, ev, data=data).metrics
    assert set(on_checkpoint) == EMBEDDING_METRICS
    assert_same_metrics(on_checkpoint, compress.evaluate(out / "onnx", ev, data=data).metrics, FLOAT_METRICS)
    # Without a task the model's own is used (its compression.json), the folder's data from the flags.
    from_record = compress.evaluate(int8.path, ev, data=compress.DataConfig(data_dir=data.data_dir))
    assert from_record.report["task_type"] == "embedding" and set(from_record.metrics) == EMBEDDING_METRICS


@pytest.mark.parametrize("family,mode,normalize", [("bert", "cls", True), ("roberta", "mean", True)])
def test_dense_embedding_export_is_a_sentence_transformers_folder(tmp_path, family, mode, normalize):
    base = embedding_checkpoint(family, tmp_path / "base", mode, normalize)
    result = compress.export_onnx(base, tmp_path / "out")  # the task from modules.json
    assert result.report["task"] == "sentence-embedding" and result.path == tmp_path / "out" / "onnx" / "model.onnx"
    assert "compression.json" not in {p.name for p in (tmp_path / "out").iterdir()}  # nothing compressed
    want = st_embeddings(tmp_path / "out", TEXTS)
    np.testing.assert_allclose(graph_embeddings(result.path, family, TEXTS), want, atol=1e-5, rtol=0)
    assert compress.quantize(result.path, result.path.with_name(INT8_FILE)).report["kept_fp32"] == []


# --------------------------------------------------------------------------------------- compress run
RUN_FLAGS = ["--bench-batch-sizes", "1", "--bench-seq-len", "16", "--bench-iterations", "2", "--max-steps", "3"]


def test_run_on_pair_classification_files(tmp_path):
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "teacher")
    for split, n in (("a", 24), ("b", 8)):
        rows = ["s1\ts2\ty"] + [
            f"{h.POSITIVE[k % 5]}\t{(h.POSITIVE if k % 2 else h.NEGATIVE)[k % 5]}\t{k % 2}" for k in range(n)
        ]
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    argv = ["run", "--teacher", str(tmp_path / "teacher"), "--train-file", str(tmp_path / "a.tsv")]
    argv += ["--validation-file", str(tmp_path / "b.tsv"), "--text-column", "s1", "--text-pair-column", "s2"]
    argv += ["--label-column", "y", "--method", "struct", "--target-flops", "0.5", "--fill-steps", "2"]
    assert h.main(argv + RUN_FLAGS + ["--max-eval-samples", "6", "-o", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["recipe"]["task"] is None and summary["task"] == "custom"
    assert [r["model"] for r in summary["rows"]] == ["dense fp32", "pruned fp32", "dense int8", "pruned int8"]
    for r in summary["rows"]:
        assert 0 <= r["dev_accuracy"] <= 1 and 0 <= r["dev_f1"] <= 1 and r["speedup_b1"] > 0
    assert "| pruned int8 |" in (tmp_path / "out" / "report.md").read_text()


def test_run_embedding_task(tmp_path):
    base = embedding_checkpoint("bert", tmp_path / "base", "mean", True)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 4))
    argv = ["run", "--task", "embedding", "--model", str(base), "--train-file", str(tmp_path / "corpus.txt")]
    argv += ["--data-dir", str(write_data_dir(tmp_path / "data")), "--method", "struct", "--target-flops", "0.5"]
    argv += ["--fill-steps", "2", "--max-length", "32", "--eval-max-length", "48", "--max-eval-samples", "6"]
    assert h.main(argv + RUN_FLAGS + ["-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task_type"] == "embedding" and summary["recipe"]["bench_seq_len"] == 16
    rows = {r["model"]: r for r in summary["rows"]}
    assert list(rows) == ["dense fp32", "pruned fp32", "dense int8", "pruned int8"]
    assert rows["pruned int8"]["path"] == f"onnx/pruned/onnx/{INT8_FILE}"
    assert rows["dense fp32"]["dev_fidelity_cosine"] == pytest.approx(1.0, abs=1e-5)  # the dense model itself
    for r in rows.values():
        assert {f"dev_{k}" for k in EMBEDDING_METRICS} <= set(r) and "dev_accuracy" not in r and r["speedup_b1"] > 0
    assert rows["pruned fp32"]["encoder_linear_params"] < rows["dense fp32"]["encoder_linear_params"]
    report = (out / "report.md").read_text()
    assert "dev_retrieval_mrr@10" in report and "Metrics (retrieval" in report
    filled = json.loads((out / "filled" / "compression.json").read_text())
    assert filled["teacher"] == str(base)  # the fill distils from the dense model, not the pruned one
