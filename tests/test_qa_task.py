"""Extractive QA task: data files and errors, windows and span labels, n-best decoding, SQuAD EM/F1,
distillation loss and the model head, on tiny in-process models and generated data."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from task_helpers import FAMILIES, base_checkpoint, sentence, tokenizer

from compress.core.errors import DataError
from compress.tasks import question_answering as qa
from compress.tasks.batching import padded_batches, torch_predict


def make_examples(n: int = 10, words: int = 40, seed: int = 0) -> list[dict]:
    """Contexts of `words` words, each question's answer a 1-3 word span at a random place."""
    rng = random.Random(seed)
    examples = []
    for k in range(n):
        context_words = sentence(rng, words)
        i = rng.randrange(words - 3)
        span = context_words[i : i + rng.randint(1, 3)]
        start = len(" ".join(context_words[:i])) + (1 if i else 0)
        examples.append(
            {
                "id": f"q{k}",
                "title": f"t{k % 3}",
                "context": " ".join(context_words),
                "question": " ".join(sentence(rng, 4)),
                "answers": {"text": [" ".join(span)], "answer_start": [start]},
            }
        )
    return examples


def oracle(eval_features, examples, shift_end: int = 0):
    """A fake `predict` whose logits point at each window's gold span (`shift_end` tokens further on the end)."""
    gold = {ex["id"]: ex["answers"] for ex in examples}
    targets = []
    for qid, offsets in zip(eval_features["example_id"], eval_features["offset_mapping"]):
        begin = gold[qid]["answer_start"][0]
        end = begin + len(gold[qid]["text"][0])
        starts = [j for j, o in enumerate(offsets) if o is not None and o[0] <= begin < o[1]]
        ends = [j for j, o in enumerate(offsets) if o is not None and o[0] < end <= o[1]]
        last = ends[0] + shift_end if ends else len(offsets)
        targets.append((starts[0], last) if starts and last < len(offsets) and offsets[last] else None)
    row = iter(targets)

    def predict(batch):
        shape = batch["input_ids"].shape
        start, end = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for i in range(shape[0]):
            target = next(row)
            if target is not None:
                start[i, target[0]] = end[i, target[1]] = 10.0
        return {"start_logits": start, "end_logits": end}

    return predict


@pytest.mark.parametrize("family", FAMILIES)
def test_windows_label_the_answer_tokens(family):
    tok = tokenizer(family)
    examples = make_examples()
    max_length, stride = (64, 16) if family == "roberta" else (24, 8)  # RoBERTa's tokens are characters
    feats = qa.preprocess_train(examples, tok, max_length, stride)
    assert len(feats) > 2 * len(examples)  # long contexts give several overlapping windows
    assert set(feats.column_names) >= {"input_ids", "attention_mask", "start_positions", "end_positions"}
    found = set()
    for f in feats:
        assert len(f["input_ids"]) <= max_length
        s, e = f["start_positions"], f["end_positions"]
        if s == e == f["input_ids"].index(tok.cls_token_id):
            continue
        text = tok.decode(f["input_ids"][s : e + 1]).strip()
        found.add(text)
    answers = {ex["answers"]["text"][0] for ex in examples}
    assert found == answers  # every answer is labelled in some window, and only answers are
    # A window without its answer points at CLS.
    assert any(f["start_positions"] == f["end_positions"] == 0 for f in feats)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_eval_windows_keep_context_offsets(family):
    tok = tokenizer(family)
    examples = make_examples(4)
    feats = qa.preprocess_eval(examples, tok, 64 if family == "roberta" else 24, 8)
    by_id = {ex["id"]: ex for ex in examples}
    assert {"example_id", "offset_mapping"} <= set(feats.column_names)
    covered: dict[str, set] = {}
    for f in feats:
        enc_types = f.get("token_type_ids")
        offsets = f["offset_mapping"]
        context = by_id[f["example_id"]]["context"]
        assert offsets[0] is None and offsets[-1] is None  # CLS/SEP (and the question) have no offsets
        if enc_types is not None:  # BERT: exactly the second segment has offsets
            assert [o is not None for o in offsets][:-1] == [t == 1 for t in enc_types][:-1]
        for o in offsets:
            if o is not None:
                assert 0 <= o[0] <= o[1] <= len(context)
                covered.setdefault(f["example_id"], set()).update(range(o[0], o[1]))
    for ex in examples:  # the windows together cover every non-space character of the context
        assert covered[ex["id"]] >= {i for i, c in enumerate(ex["context"]) if c != " "}


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_gold_logits_score_100_and_a_longer_span_does_not(family):
    tok = tokenizer(family)
    examples = make_examples(8)
    feats = qa.preprocess_eval(examples, tok, 64 if family == "roberta" else 24, 8)
    assert qa.evaluate(oracle(feats, examples), feats, examples, batch_size=5) == {"exact_match": 100.0, "f1": 100.0}
    # One token more at the end (a character for RoBERTa, a word for BERT): no exact match, partial F1.
    off = qa.evaluate(oracle(feats, examples, shift_end=1 if family == "bert" else 2), feats, examples)
    assert off["exact_match"] < 100.0 and 0.0 < off["f1"] < 100.0


def test_decoding_rules():
    """Spans must lie in the context, start <= end, at most max_answer_length tokens; best over windows."""
    import datasets

    context = "it is good fun"
    offsets = [None, (0, 2), (3, 5), (6, 10), (11, 14), None]
    feats = datasets.Dataset.from_dict({"example_id": ["a", "a"], "offset_mapping": [offsets, offsets]})
    ex = [{"id": "a", "context": context, "answers": {"text": ["good"], "answer_start": [6]}}]
    start = [np.array([9, 0, 0, 5, 1, 9.0]), np.array([0, 0, 0, 7, 0, 0.0])]  # 9s are outside the context
    end = [np.array([0, 0, 0, 1, 8, 9.0]), np.array([0, 0, 0, 7, 0, 0.0])]
    assert qa.decode_answers(start, end, feats, ex) == {"a": "good"}  # window 2's 7 + 7 beats window 1's 5 + 8
    assert qa.decode_answers(start[:1] * 2, end[:1] * 2, feats, ex) == {"a": "good fun"}
    assert qa.decode_answers(start[:1] * 2, end[:1] * 2, feats, ex, max_answer_length=1) == {"a": "fun"}  # 1 + 8
    backwards = [np.array([0, 0, 0, 0, 9, 0.0])] * 2, [np.array([0, 0, 9, 0, 0, 0.0])] * 2
    assert qa.decode_answers(*backwards, feats, ex, n_best=1) == {"a": ""}  # only end < start: no span


@pytest.mark.parametrize(
    "prediction, gold, em, f1",
    [
        ("The Cat.", ["cat"], 100.0, 100.0),  # case, article, punctuation
        ("  a  big   dog ", ["big dog"], 100.0, 100.0),  # whitespace
        ("the cat sat", ["a cat"], 0.0, 200 / 3),  # 1 of 2 predicted tokens, 1 of 1 gold
        ("dog", ["cat", "dog", "bird"], 100.0, 100.0),  # the best gold answer counts
        ("", ["cat"], 0.0, 0.0),
    ],
)
def test_squad_v11_normalisation(prediction, gold, em, f1):
    ex = [{"id": "x", "answers": {"text": gold, "answer_start": [0] * len(gold)}}]
    scores = qa.squad_scores({"x": prediction}, ex)
    assert scores["exact_match"] == pytest.approx(em)
    assert scores["f1"] == pytest.approx(f1, abs=1e-4)


def write_squad(path: Path, examples: list[dict]) -> Path:
    paragraphs = [
        {
            "context": ex["context"],
            "qas": [
                {
                    "id": ex["id"],
                    "question": ex["question"],
                    "answers": [{"text": t, "answer_start": s} for t, s in zip(*ex["answers"].values())],
                }
            ],
        }
        for ex in examples
    ]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t0", "paragraphs": paragraphs}]}))
    return path


def test_file_formats_give_the_same_examples(tmp_path):
    examples = [{**ex, "title": "t0"} for ex in make_examples(3)]
    squad = qa.read_qa_file(write_squad(tmp_path / "dev.json", examples))
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text("\n".join(json.dumps(ex) for ex in examples))
    listed = tmp_path / "listed.jsonl"  # answers as a list of {text, answer_start}
    listed.write_text(
        "\n".join(
            json.dumps({**ex, "answers": [{"text": t, "answer_start": s} for t, s in zip(*ex["answers"].values())]})
            for ex in examples
        )
    )
    assert squad == qa.read_qa_file(jsonl) == qa.read_qa_file(listed) == examples


def test_bad_files_name_the_question(tmp_path):
    ex = make_examples(1)[0]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({**ex, "answers": {"text": [], "answer_start": []}}))
    with pytest.raises(DataError, match="q0.* no answer"):
        qa.read_qa_file(path)
    wrong = {**ex, "answers": {"text": ex["answers"]["text"], "answer_start": [ex["answers"]["answer_start"][0] + 1]}}
    squad = write_squad(tmp_path / "train.json", [wrong])
    with pytest.raises(DataError) as err:
        qa.read_qa_file(squad)
    message = str(err.value)
    found = ex["context"][wrong["answers"]["answer_start"][0] :][: len(ex["answers"]["text"][0])]
    assert "q0" in message and repr(ex["answers"]["text"][0]) in message and repr(found) in message
    assert "\n" not in message
    long_question = {**ex, "question": " ".join(["movie"] * 30)}
    with pytest.raises(DataError, match="question q0 is 30 tokens"):
        qa.preprocess_train([long_question], tokenizer("bert"), 40, 8)


def test_builtin_squad_reads_the_data_folder(tmp_path):
    (tmp_path / "squad").mkdir()
    examples = make_examples(4)
    write_squad(tmp_path / "squad" / "dev-v1.1.json", examples[:2])
    with pytest.raises(DataError, match="train-v1.1.json.*squad-split"):
        qa.load_data("squad", data_dir=tmp_path)
    write_squad(tmp_path / "squad" / "train-v1.1.json", examples[2:])
    data = qa.load_data("squad", data_dir=tmp_path)
    assert [e["id"] for e in data["train"]] == ["q2", "q3"] and [e["id"] for e in data["dev"]] == ["q0", "q1"]
    own = write_squad(tmp_path / "own.json", examples[1:2])
    assert [e["id"] for e in qa.load_data("squad", data_dir=tmp_path, validation_file=own)["dev"]] == ["q1"]


DEV = Path(os.environ.get("COMPRESS_DATA_DIR", "/nonexistent")) / "squad" / "dev-v1.1.json"


@pytest.mark.skipif(not DEV.is_file(), reason="needs $COMPRESS_DATA_DIR/squad/dev-v1.1.json")
def test_squad_split_holds_out_whole_articles():
    data = qa.load_data("squad-split")
    titles = {split: {e["title"] for e in data[split]} for split in ("train", "dev")}
    assert len(titles["train"]) == 36 and len(titles["dev"]) == 12 and not titles["train"] & titles["dev"]
    assert len(data["train"]) + len(data["dev"]) == 10570


@pytest.mark.parametrize("family", FAMILIES)
def test_model_loss_and_evaluation(tmp_path, family):
    path = base_checkpoint(family, tmp_path / family)
    model = qa.load_model(str(path))
    assert type(model).__name__.endswith("ForQuestionAnswering") and model.base_model is not model
    tok = tokenizer(family)
    examples = make_examples(4)
    max_length = 64 if family == "roberta" else 24
    feats = qa.preprocess_train(examples, tok, max_length, 8).select(range(6))
    _, batch = next(padded_batches(feats, tok.pad_token_id, batch_size=6))
    labels = {k: torch.tensor(feats[k]) for k in ("start_positions", "end_positions")}
    model.train()
    inputs = {k: torch.from_numpy(v) for k, v in batch.items() if k != "token_type_ids" or family == "bert"}
    out = model(**inputs, **labels)
    ce = qa.distill_loss(out, None, labels, 0.1, 0.9, 2.0)
    assert torch.allclose(ce, out.loss)  # the cross-entropy is transformers' own span loss
    teacher = {k: out[k].detach() for k in qa.onnx_outputs}
    assert torch.allclose(qa.distill_loss(out, teacher, labels, 0.1, 0.9, 2.0), 0.1 * ce, atol=1e-6)
    other = {k: torch.randn_like(v) for k, v in teacher.items()}
    loss = qa.distill_loss(out, other, labels, 0.1, 0.9, 2.0)
    assert loss > 0.1 * ce
    loss.backward()
    assert model.qa_outputs.weight.grad.abs().sum() > 0
    eval_feats = qa.preprocess_eval(examples, tok, max_length, 8)
    metrics = qa.evaluate(torch_predict(model, qa.onnx_outputs), eval_feats, examples, pad_token_id=tok.pad_token_id)
    assert set(metrics) == {"exact_match", "f1"} and 0 <= metrics["exact_match"] <= metrics["f1"] <= 100


def test_speed_target_deploys_at_the_task_length():
    """A speed target with no --deploy-shape is met at the length the task's graphs run at: SQuAD's
    384-token windows for question answering, 128 for sentence classification."""
    from compress.core.config import DataConfig, PruneConfig
    from compress.training.driver import _deploy_shape
    from compress.training.tasks import task_type

    for kind, shape in (("question-answering", "32x384"), ("sequence-classification", "32x128")):
        cfg, record = _deploy_shape(PruneConfig(target_speedup=2.0), task_type(kind), DataConfig(), "unused", None)
        assert cfg.deploy_shape == shape and record is None
    given = PruneConfig(target_speedup=2.0, deploy_shape="8x256")
    assert (
        _deploy_shape(given, task_type("question-answering"), DataConfig(), "unused", None)[0].deploy_shape == "8x256"
    )
