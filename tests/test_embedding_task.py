"""The embedding task's building blocks: pooling config, SentenceEncoder (vs sentence-transformers and
vs its ONNX graph), corpus, loss and metrics. Tiny random encoders and generated data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from compress.core.errors import DataError, InvalidConfigError
from compress.core.structure import layer_linears
from compress.tasks import embedding_data
from compress.tasks.embedding import (
    PoolingSpec,
    SentenceEncoder,
    distill_loss,
    embed_with_model,
    evaluate,
    load_corpus,
    load_model,
    onnx_outputs,
    preprocess,
    read_pooling,
    save_sentence_transformers_folder,
)
from compress.tasks.embedding_metrics import fidelity_metrics, pair_metrics, retrieval_metrics
from helpers import tiny_config, tiny_tokenizer

TEXTS = ["the movie is good", "a great film", "very boring , not fun", "it was bad and boring . the plot is awful"]
CASES = [("bert", "mean", True), ("roberta", "cls", False), ("distilbert", "max", True), ("bert", "cls", True)]


def tiny_encoder(model_type="bert", mode="mean", normalize=True, seed=0):
    from transformers import AutoModel

    torch.manual_seed(seed)
    encoder = AutoModel.from_config(tiny_config(model_type), attn_implementation="eager")
    return SentenceEncoder(encoder.eval(), PoolingSpec(mode, normalize))


def saved(tmp_path, model_type="bert", mode="mean", normalize=True):
    folder = tmp_path / f"{model_type}-{mode}-{normalize}"
    return save_sentence_transformers_folder(tiny_encoder(model_type, mode, normalize), tiny_tokenizer(), folder)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------------------- pooling config
@pytest.mark.parametrize("mode,normalize", [("mean", True), ("cls", False), ("max", False)])
def test_pooling_read_from_saved_folder(tmp_path, mode, normalize):
    folder = saved(tmp_path, "bert", mode, normalize)
    assert (folder / "2_Normalize").is_dir() == normalize
    spec = read_pooling(folder)
    assert (spec.mode, spec.normalize, spec.max_seq_length) == (mode, normalize, 128)
    assert read_pooling(folder, pooling=mode, normalize=normalize) == spec  # agreeing flags are fine


def test_pooling_current_sentence_transformers_keys(tmp_path):
    folder = saved(tmp_path, "bert", "mean", False)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"}))
    assert read_pooling(folder).mode == "cls"


def test_pooling_from_flags_without_sentence_transformers_files(tmp_path):
    tiny_encoder().encoder.save_pretrained(tmp_path)
    assert read_pooling(tmp_path) == PoolingSpec("mean", False)
    assert read_pooling(tmp_path, pooling="cls", normalize=True) == PoolingSpec("cls", True)


def test_pooling_errors_are_one_line(tmp_path):
    folder = saved(tmp_path, "bert", "mean", True)
    with pytest.raises(InvalidConfigError) as e:
        read_pooling(folder, pooling="weightedmean")
    assert "mean, cls, max" in one_line(e)
    with pytest.raises(InvalidConfigError) as e:
        read_pooling(folder, pooling="cls")  # contradicts 1_Pooling/config.json
    assert "--pooling" in one_line(e)
    with pytest.raises(InvalidConfigError) as e:
        read_pooling(folder, normalize=False)  # contradicts the Normalize module
    assert "--normalize" in one_line(e)

    config = folder / "1_Pooling" / "config.json"
    for unsupported in ({"pooling_mode_mean_sqrt_len_tokens": True}, {"pooling_mode": ["mean", "max"]}):
        config.write_text(json.dumps(unsupported))
        with pytest.raises(InvalidConfigError) as e:
            read_pooling(folder)
        assert "supported pooling modes: mean, cls, max" in one_line(e)

    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InvalidConfigError) as e:
        read_pooling(folder)
    assert "Dense" in one_line(e)


# --------------------------------------------------------------------------------------- model
def test_encoder_is_reachable_for_pruning():
    model = tiny_encoder("distilbert")
    assert model.config is model.encoder.config
    assert len(layer_linears(model)) == 2  # the structure tables find the layers through .base_model


@pytest.mark.parametrize("model_type,mode,normalize", CASES)
def test_embedding_equals_sentence_transformers(tmp_path, model_type, mode, normalize):
    from sentence_transformers import SentenceTransformer

    folder = saved(tmp_path, model_type, mode, normalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, batch_size=3)
    model = load_model(str(folder))
    assert model.pooling == PoolingSpec(mode, normalize, 128)
    ours = embed_with_model(model, tiny_tokenizer(), TEXTS, batch_size=3, max_length=128)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


class _Positional(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.names, tensors)))
        return tuple(out[name] for name in onnx_outputs)


@pytest.mark.parametrize("model_type,mode,normalize", CASES)
def test_onnx_graph_holds_pooling_and_normalisation(tmp_path, model_type, mode, normalize):
    import onnxruntime as ort

    model = tiny_encoder(model_type, mode, normalize)
    batch = tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt")  # rows of different lengths: padding
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model_type == "bert" else [])
    args = tuple(batch[n] for n in names)
    path = tmp_path / "model.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(last_hidden_state={0: "batch", 1: "sequence"}, sentence_embedding={0: "batch"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Positional(model, names).eval(),  # export restores the wrapper's mode onto the model
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=list(onnx_outputs),
            dynamic_axes=axes,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "sentence_embedding"]
    got = dict(zip(onnx_outputs, session.run(None, {n: a.numpy() for n, a in zip(names, args)})))
    with torch.no_grad():
        want = model(*args[:2], *args[2:])
    np.testing.assert_allclose(got["sentence_embedding"], want["sentence_embedding"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["last_hidden_state"], want["last_hidden_state"].numpy(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------- loss
def test_distill_loss_values():
    out = lambda emb, hidden=None: {"sentence_embedding": torch.tensor(emb), "last_hidden_state": hidden}  # noqa: E731
    s, t = out([[2.0, 0.0]]), out([[0.0, 3.0]])  # orthogonal after normalisation: cosine 0
    assert distill_loss(s, t, "cosine").item() == pytest.approx(1.0)
    assert distill_loss(s, t, "mse").item() == pytest.approx(1.0)  # mean of (1-0)^2 and (0-1)^2
    assert distill_loss(s, t, "cosine+mse").item() == pytest.approx(2.0)
    assert distill_loss(s, s, "cosine+mse").item() == pytest.approx(0.0, abs=1e-7)

    # Hidden-state MSE counts attended tokens only: the padded second token differs by 100, the first by 1.
    hs = out([[1.0, 0.0]], torch.tensor([[[1.0, 1.0], [100.0, 100.0]]], requires_grad=True))
    ht = out([[1.0, 0.0]], torch.zeros(1, 2, 2))
    loss = distill_loss(hs, ht, "cosine", hidden_weight=0.5, attention_mask=torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert hs["last_hidden_state"].grad[0, 1].abs().sum() == 0

    with pytest.raises(InvalidConfigError) as e:
        distill_loss(s, t, "kl")
    assert "cosine, mse, cosine+mse" in one_line(e)
    with pytest.raises(InvalidConfigError):
        distill_loss(s, out([[1.0, 0.0, 0.0]]))


# --------------------------------------------------------------------------------------- metrics
def test_retrieval_metrics_known_ranks():
    documents = np.eye(12, dtype=np.float32)
    queries = np.zeros((3, 12), dtype=np.float32)
    queries[0, 0] = 1.0  # gold document 0 is first
    queries[1, [1, 2]] = [0.5, 0.6]  # gold document 1 comes second
    queries[2] = np.linspace(1.0, 0.5, 12)  # gold document 11 comes last (rank 12)
    m = retrieval_metrics(queries, documents, np.array([0, 1, 11]))
    assert m == pytest.approx({"recall@1": 1 / 3, "recall@10": 2 / 3, "mrr@10": (1 + 1 / 2) / 3})


def test_pair_metrics_known_values():
    m = pair_metrics(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    # 3 of the 4 (positive, negative) pairs are ordered right; the best threshold (0.3) has TP 2, FP 1.
    assert m == pytest.approx({"roc_auc": 0.75, "f1": 0.8})
    with pytest.raises(DataError):
        pair_metrics(np.array([0.1, 0.2]), np.array([1, 1]))


def test_fidelity_metrics_known_values():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(20, 8)).astype(np.float32)
    assert fidelity_metrics(student, 3 * student) == pytest.approx({"cosine": 1.0, "spearman": 1.0})
    flipped = fidelity_metrics(student, -student)  # opposite vectors, the same pairwise similarities
    assert flipped == pytest.approx({"cosine": -1.0, "spearman": 1.0})
    with pytest.raises(InvalidConfigError):
        fidelity_metrics(student, student[:, :4])


# --------------------------------------------------------------------------------------- data
def write_data_dir(root):
    """sst2/, mrpc/ and squad/dev-v1.1.json in the GLUE / SQuAD v1.1 layouts, 8 articles (A3, A7 held out)."""
    (root / "sst2").mkdir(parents=True)
    (root / "mrpc").mkdir()
    (root / "squad").mkdir()
    for split in ("train", "dev"):
        sentences = [f"{split} sentence {i}" for i in range(6)] + [f"{split} sentence 0"]  # one duplicate
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t1\n" for s in sentences))
        rows = [f'{i % 2}\t{i}\t{i + 100}\t{split} "first {i}\t{split} second {i}' for i in range(8)]
        header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        (root / "mrpc" / f"{split}.tsv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    articles = [
        {
            "title": f"A{a}",
            "paragraphs": [
                {"context": f"paragraph {a}.{p}", "qas": [{"question": f"question {a}.{p}.{q}"} for q in range(2)]}
                for p in range(2)
            ],
        }
        for a in (5, 1, 7, 0, 3, 2, 6, 4)  # the split sorts by title
    ]
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": articles}))
    return root


def test_default_corpus_holds_train_texts_only(tmp_path):
    root = write_data_dir(tmp_path)
    corpus = load_corpus(root)
    assert corpus == load_corpus(root)  # deterministic
    assert len(corpus) == len(set(corpus))
    assert {"train sentence 0", 'train "first 3', "train second 3", "question 0.1.1", "paragraph 6.0"} <= set(corpus)
    assert not [t for t in corpus if t.startswith("dev") or "3." in t or "7." in t]  # dev files, held-out articles
    assert len(corpus) == 6 + 16 + 6 * (2 + 4)
    assert load_corpus(root, max_samples=5) == corpus[:5]


def test_corpus_from_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  two \none\n")
    (tmp_path / "b.csv").write_text('id,body\n1,"three, with a comma"\n2,two\n')
    (tmp_path / "c.jsonl").write_text('{"body": "four"}\n{"body": null}\n')
    (tmp_path / "d.json").write_text(json.dumps([{"body": "five"}]))
    (tmp_path / "e.tsv").write_text('body\n"six\n')
    files = [tmp_path / n for n in ("a.txt", "b.csv", "c.jsonl", "d.json", "e.tsv")]
    corpus = load_corpus(files=files, text_column="body")
    assert sorted(corpus) == sorted(["one", "two", "three, with a comma", "four", "five", '"six'])


def test_corpus_errors_are_one_line(tmp_path):
    (tmp_path / "b.csv").write_text("id,body\n1,x\n")
    with pytest.raises(DataError) as e:
        load_corpus(files=[tmp_path / "b.csv"], text_column="sentence")
    assert "'sentence'" in one_line(e) and "id, body" in one_line(e)
    with pytest.raises(DataError) as e:
        load_corpus(files=[tmp_path / "b.csv"])  # default column "text"
    assert "--text-column" in one_line(e)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError) as e:
        load_corpus(files=[tmp_path / "blank.txt"])
    assert "empty" in one_line(e)
    with pytest.raises(DataError) as e:
        load_corpus(files=[tmp_path / "x.parquet"])
    assert ".txt" in one_line(e)


def test_preprocess_gives_model_features():
    ds = preprocess(TEXTS, tiny_tokenizer(), max_length=4)
    assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert len(ds) == len(TEXTS) and max(len(r) for r in ds["input_ids"]) == 4


# --------------------------------------------------------------------------------------- evaluate
def bag_of_words(texts):
    """A deterministic toy encoder: each word hashed into one of 64 dimensions."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.replace(".", " ").split():
            out[i, sum(map(ord, w)) % 64] += 1.0
    return out


EMBEDDING_METRICS = {
    "retrieval_recall@1",
    "retrieval_recall@10",
    "retrieval_mrr@10",
    "mrpc_roc_auc",
    "mrpc_f1",
    "fidelity_cosine",
    "fidelity_spearman",
}


def test_evaluate_end_to_end(tmp_path):
    root = write_data_dir(tmp_path)
    seen = []
    embed = lambda texts: seen.append(len(texts)) or bag_of_words(texts)  # noqa: E731
    m = evaluate(embed, root, teacher_embed=bag_of_words)
    assert set(m) == EMBEDDING_METRICS
    assert seen == [8, 4, 16, 7]  # held-out questions, their paragraphs, MRPC dev pairs, SST-2 dev sentences
    assert m["retrieval_recall@10"] == 1.0  # 4 candidates only
    assert m["fidelity_cosine"] == pytest.approx(1.0) and m["fidelity_spearman"] == pytest.approx(1.0)
    assert 0.0 <= m["mrpc_roc_auc"] <= 1.0 and 0.0 < m["mrpc_f1"] <= 1.0

    seen.clear()
    capped = evaluate(embed, root, max_samples=3)
    assert seen == [3, 4, 6] and "fidelity_cosine" not in capped  # questions capped, every paragraph kept


def test_evaluate_with_a_model(tmp_path):
    root = write_data_dir(tmp_path)
    model = tiny_encoder()
    embed = lambda texts: embed_with_model(model, tiny_tokenizer(), texts, batch_size=4, max_length=32)  # noqa: E731
    m = evaluate(embed, root, teacher_embed=embed)
    assert m["fidelity_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert embed([]).shape == (0, 32)
    model.train()
    embed(TEXTS)
    assert model.training  # the caller's mode is kept


def test_spread_keeps_every_part():
    assert embedding_data.spread(10, 3).tolist() == [0, 3, 6]
    assert embedding_data.spread(4, None).tolist() == [0, 1, 2, 3]
