"""Token classification task: JSON lines and CoNLL files, label sets and errors, first-sub-token
alignment, seqeval entity F1, distillation loss and the model head, on tiny in-process models."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from task_helpers import FAMILIES, base_checkpoint, sentence, tokenizer

from compress.core.errors import DataError, InvalidConfigError
from compress.tasks import token_classification as tc
from compress.tasks.batching import padded_batches, torch_predict

TAGS = ["O", "B-PER", "I-PER", "B-LOC"]


def tagged_rows(n: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens = sentence(rng, rng.randint(3, 8))
        tags = ["O"] * len(tokens)
        i = rng.randrange(len(tokens) - 1)
        tags[i : i + 2] = ["B-PER", "I-PER"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_jsonl(path, rows, tags_key: str = "tags"):
    path.write_text("\n".join(json.dumps({"tokens": r["tokens"], tags_key: r["tags"]}) for r in rows) + "\n")
    return path


def test_jsonl_and_conll_give_the_same_rows(tmp_path):
    rows = tagged_rows(4) + [{"tokens": ["the", "plot"], "tags": ["B-LOC", "O"]}]
    conll = tmp_path / "train.conll"
    lines = ["-DOCSTART- -X- -X- O", ""]
    for r in rows:
        lines += [f"{w} NN I-NP {t}" for w, t in zip(r["tokens"], r["tags"])] + [""]
    conll.write_text("\n".join(lines[:-1]))  # no blank line after the last sentence
    data = tc.load_data(
        write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "dev.jsonl", rows[:2], "ner_tags")
    )
    assert data.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}  # the training tags, sorted
    assert data.train == tc.load_data(conll).train
    assert [data.id2label[i] for i in data.train[0]["tags"]] == rows[0]["tags"]
    assert data.dev == data.train[:2]
    # Ids are accepted once the names are known (a model head's).
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"tokens": ["it"], "tags": [2]}))
    assert tc.load_data(validation_file=ids, label_names=TAGS).dev == [{"tokens": ["it"], "tags": [2]}]


def test_bad_files_name_the_row_and_tag(tmp_path):
    rows = tagged_rows(3)
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, rows[:1] + [{"tokens": ["the", "movie"], "tags": ["O"]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2 has 1 tags for 2 tokens"):
        tc.load_data(bad)
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"tokens": ["it", "is"], "tags": ["B-ORG", "O"]}])
    with pytest.raises(DataError) as err:
        tc.load_data(write_jsonl(tmp_path / "train.jsonl", rows), dev)
    assert "dev.jsonl:1: unknown tag 'B-ORG'; the known tags (the training data's tags) are B-PER, I-PER, O" in str(
        err.value
    )
    with pytest.raises(DataError, match="needs the label names"):
        tc.load_data(validation_file=dev)
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"tokens": ["it"], "tags": [2]}))
    with pytest.raises(DataError, match="tags as ids"):
        tc.load_data(ids)
    one = tmp_path / "one.conll"
    one.write_text("the O\nmovie\n")
    with pytest.raises(DataError, match="one.conll:2 has one column"):
        tc.load_data(one)


def test_first_sub_token_carries_the_label():
    tok = tokenizer("bert")
    rows = [{"tokens": ["the", "films", "were", "boring"], "tags": [1, 2, 3, 0]}]  # films = film ##s; were = [UNK]
    feats = tc.preprocess(rows, tok, max_length=16)
    pieces = tok.convert_ids_to_tokens(feats[0]["input_ids"])
    assert pieces == ["[CLS]", "the", "film", "##s", "[UNK]", "boring", "[SEP]"]
    assert feats[0]["labels"] == [-100, 1, 2, -100, 3, 0, -100]
    assert tc.preprocess(rows, tok, max_length=4)[0]["labels"] == [-100, 1, 2, -100]  # cut words are not scored


def test_roberta_words_need_a_prefix_space():
    rows = [{"tokens": ["it", "is"], "tags": [1, 0]}]
    feats = tc.preprocess(rows, tokenizer("roberta", add_prefix_space=True), max_length=16)
    # <s> Ġ i t Ġ i s </s>: the space token starts each word.
    assert feats[0]["labels"] == [-100, 1, -100, -100, 0, -100, -100, -100]
    with pytest.raises(InvalidConfigError, match="add_prefix_space=True"):
        tc.preprocess(rows, tokenizer("roberta"), max_length=16)


def test_seqeval_entity_scores_on_a_known_case():
    import datasets

    id2label = dict(enumerate(TAGS))
    gold = [[1, 2, 0, 3], [0, 3, 0]]  # PER, LOC | LOC
    pred = [[1, 2, 0, 0], [0, 3, 1]]  # PER right, LOC missed | LOC right, a spurious PER
    labels = [[-100, *g, -100] for g in gold]
    feats = datasets.Dataset.from_dict({"input_ids": [[5] * len(x) for x in labels], "labels": labels})
    rows = iter(pred)

    def predict(batch):
        logits = np.zeros((*batch["input_ids"].shape, len(TAGS)), np.float32)
        for i in range(len(logits)):
            for j, p in enumerate(next(rows)):
                logits[i, j + 1, p] = 1.0
        return {"logits": logits}

    metrics = tc.evaluate(predict, feats, id2label, batch_size=1)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3) and metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert metrics["per_type"]["LOC"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


def test_distill_loss_ignores_unlabelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [-100, 0, 3, 3, -100]])
    teacher = torch.randn(2, 5, 4)
    loss = tc.distill_loss({"logits": logits}, {"logits": teacher}, labels, 0.1, 0.9, 2.0)
    noisy = teacher.clone()
    noisy[labels == -100] = 100.0  # what the teacher says where nothing is labelled does not count
    assert torch.allclose(loss, tc.distill_loss({"logits": logits}, {"logits": noisy}, labels, 0.1, 0.9, 2.0))
    ce = tc.distill_loss({"logits": logits}, None, labels, 0.1, 0.9, 2.0)
    assert torch.allclose(
        tc.distill_loss({"logits": logits}, {"logits": logits.detach()}, labels, 0.1, 0.9, 2.0), 0.1 * ce
    )
    loss.backward()
    assert logits.grad[labels == -100].abs().sum() == 0 and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_model_loss_and_evaluation(tmp_path, family):
    kw = {"add_prefix_space": True} if family == "roberta" else {}
    path = base_checkpoint(family, tmp_path / family, **kw)
    data = tc.load_data(write_jsonl(tmp_path / "train.jsonl", tagged_rows()))
    model = tc.load_model(str(path), data.id2label)
    assert model.config.id2label == data.id2label and model.base_model is not model
    tok = tokenizer(family, **kw)
    feats = tc.preprocess(data.train, tok, max_length=64)
    _, batch = next(padded_batches(feats, tok.pad_token_id, batch_size=len(feats)))
    width = batch["input_ids"].shape[1]
    labels = torch.tensor([row + [-100] * (width - len(row)) for row in feats["labels"]])
    inputs = {k: torch.from_numpy(v) for k, v in batch.items() if k != "token_type_ids" or family == "bert"}
    out = model(**inputs, labels=labels)
    assert torch.allclose(tc.distill_loss(out, None, labels, 0.1, 0.9, 2.0), out.loss)  # transformers' own CE
    metrics = tc.evaluate(torch_predict(model, tc.onnx_outputs), feats, data.id2label, pad_token_id=tok.pad_token_id)
    assert 0 <= metrics["f1"] <= 1 and 0 <= metrics["accuracy"] <= 1
    model.save_pretrained(tmp_path / "tagger")  # a token classifier keeps its labels
    assert tc.head_labels(tc.load_model(str(tmp_path / "tagger"), data.id2label).config) == list(data.id2label.values())
    with pytest.raises(InvalidConfigError, match="token classifier with labels"):
        tc.load_model(str(tmp_path / "tagger"), {0: "O", 1: "B-X"})
