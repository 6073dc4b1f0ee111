"""Extractive question answering (SQuAD v1.1): windows, model, distillation loss and EM/F1.

A context longer than one window is cut into overlapping windows (question first, only the context
truncated, `doc_stride` tokens shared by neighbours). Training labels each window with the answer's
start/end token, or with the CLS token when the answer is not wholly inside it. Evaluation keeps each
window's example id and its context tokens' character offsets, picks the best span over all windows of
a context (n-best start and end logits, score start + end) and scores the text with SQuAD v1.1's
official normalisation, taken from torchmetrics because `evaluate.load("squad")` fetches its code
from the hub.
"""

from __future__ import annotations

import numpy as np

from compress.core.errors import DataError, InvalidConfigError
from compress.tasks.batching import MODEL_INPUTS, Predict, predict_features
from compress.tasks.qa_data import TASKS, load_data, read_qa_file  # noqa: F401  (this module is the QA entry point)
from exporters.spec import TASKS as EXPORTS

onnx_outputs: tuple[str, ...] = EXPORTS["question-answering"].outputs  # ("start_logits", "end_logits")

MAX_LENGTH = 384
DOC_STRIDE = 128


def preprocess_train(examples: list[dict], tokenizer, max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE):
    """A `datasets.Dataset` of windows with start_positions / end_positions (first answer of each example)."""
    cls_id = tokenizer.cls_token_id

    def label(batch, enc):
        starts, ends = [], []
        for i, offsets in enumerate(enc["offset_mapping"]):
            k = enc["overflow_to_sample_mapping"][i]
            answer = batch["answers"][k]
            begin = answer["answer_start"][0]
            span = _answer_tokens(offsets, enc.sequence_ids(i), begin, begin + len(answer["text"][0]))
            cls = enc["input_ids"][i].index(cls_id) if cls_id in enc["input_ids"][i] else 0
            starts.append(span[0] if span else cls)
            ends.append(span[1] if span else cls)
        return {"start_positions": starts, "end_positions": ends}

    return _windows(examples, tokenizer, max_length, doc_stride, label, "train")


def preprocess_eval(examples: list[dict], tokenizer, max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE):
    """A `datasets.Dataset` of windows with example_id and offset_mapping (None outside the context)."""

    def keep(batch, enc):
        offsets = [
            [o if s == 1 else None for o, s in zip(offs, enc.sequence_ids(i))]
            for i, offs in enumerate(enc["offset_mapping"])
        ]
        ids = [batch["id"][k] for k in enc["overflow_to_sample_mapping"]]
        return {"example_id": ids, "offset_mapping": offsets}

    return _windows(examples, tokenizer, max_length, doc_stride, keep, "eval")


def _windows(examples, tokenizer, max_length: int, doc_stride: int, extra, split: str):
    import datasets

    _check_windows(examples, tokenizer, max_length, doc_stride)
    # Leading spaces in a question only waste window room (some SQuAD questions have many).
    ds = datasets.Dataset.from_list(
        [
            {"id": e["id"], "question": e["question"].lstrip(), "context": e["context"], "answers": e["answers"]}
            for e in examples
        ]
    )

    def tokenize(batch):
        enc = tokenizer(
            batch["question"],
            batch["context"],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        out = {c: enc[c] for c in MODEL_INPUTS if c in enc}
        out.update(extra(batch, enc))
        return out

    return ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc=f"windows of squad {split}")


def _check_windows(examples, tokenizer, max_length: int, doc_stride: int) -> None:
    """The fast tokenizer panics (a BaseException, not an error) when a question leaves no more context
    room than the stride; say which question and what to change instead."""
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidConfigError(
            "question answering needs a fast tokenizer (a tokenizer.json) for character offsets; "
            f"{type(tokenizer).__name__} is not one"
        )
    if not 0 <= doc_stride < max_length:
        raise InvalidConfigError(f"--doc-stride {doc_stride} must be >= 0 and below --max-length {max_length}")
    if not examples:
        raise DataError("no question answering examples to tokenize")
    lengths = [
        len(ids) for ids in tokenizer([e["question"].lstrip() for e in examples], add_special_tokens=False)["input_ids"]
    ]
    worst = int(np.argmax(lengths))
    room = max_length - lengths[worst] - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= doc_stride:
        raise DataError(
            f"question {examples[worst]['id']} is {lengths[worst]} tokens, which leaves {room} context tokens per "
            f"window at --max-length {max_length}, not more than --doc-stride {doc_stride}; raise --max-length or "
            "lower --doc-stride"
        )


def _answer_tokens(offsets, sequence_ids, begin: int, end: int) -> tuple[int, int] | None:
    """(first, last) token of the character span [begin, end) in this window's context, or None when the
    span is not wholly inside the window."""
    context = [j for j, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > begin or offsets[context[-1]][1] < end:
        return None
    first = next(j for j in reversed(context) if offsets[j][0] <= begin)
    last = next(j for j in context if offsets[j][1] >= end)
    return first, last


def load_model(model_name: str):
    """AutoModelForQuestionAnswering; a base encoder (or another task's checkpoint) gets a fresh span head."""
    from transformers import AutoModelForQuestionAnswering

    from compress.core.artifacts import load_pretrained
    from compress.core.models import load_config

    config = load_config(model_name)
    kw = {"num_labels": 2} if config.num_labels != 2 else {}  # the span head has exactly start and end
    return load_pretrained(AutoModelForQuestionAnswering, model_name, **kw)


def distill_loss(student_outputs, teacher_outputs, labels, alpha_ce: float, alpha_teacher: float, temperature: float):
    """Block Movement Pruning's SQuAD loss: alpha_teacher * T^2 * KL(teacher || student) on the start and end
    logits (their mean) + alpha_ce * the span cross-entropy (mean of start and end); without a teacher
    the cross-entropy alone. `labels` holds start_positions and end_positions."""
    import torch.nn.functional as F

    # Positions past the window (none from preprocess_train) are ignored, as transformers' own QA loss does.
    width = student_outputs["start_logits"].shape[-1]
    positions = zip(onnx_outputs, (labels["start_positions"], labels["end_positions"]))
    ce = sum(F.cross_entropy(student_outputs[n], p.clamp(0, width), ignore_index=width) for n, p in positions) / 2
    if teacher_outputs is None:
        return ce
    T = temperature
    kd = sum(
        F.kl_div(
            F.log_softmax(student_outputs[n] / T, -1), F.softmax(teacher_outputs[n] / T, -1), reduction="batchmean"
        )
        for n in onnx_outputs
    )
    return alpha_ce * ce + alpha_teacher * kd / 2 * T * T


def evaluate(
    predict: Predict,
    eval_features,
    examples: list[dict],
    n_best: int = 20,
    max_answer_length: int = 30,
    *,
    pad_token_id: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """{"exact_match", "f1"} (0..100) of the best span per question, from preprocess_eval's features."""
    logits = predict_features(predict, eval_features, onnx_outputs, pad_token_id, batch_size)
    answers = decode_answers(
        logits["start_logits"], logits["end_logits"], eval_features, examples, n_best, max_answer_length
    )
    return squad_scores(answers, examples)


def decode_answers(
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    eval_features,
    examples: list[dict],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """{question id: answer text}: per window the n_best starts x n_best ends inside the context with
    start <= end and at most max_answer_length tokens, the highest start + end logit over all windows
    of the question ("" when no window has a valid span)."""
    best: dict[str, tuple[float, int, int, int]] = {}  # id -> (score, feature, start token, end token)
    offsets_of = eval_features["offset_mapping"]
    for f, qid in enumerate(eval_features["example_id"]):
        start, end = np.asarray(start_logits[f], np.float64), np.asarray(end_logits[f], np.float64)
        in_context = np.array([o is not None for o in offsets_of[f]])
        s = np.argsort(-start, kind="stable")[:n_best, None]
        e = np.argsort(-end, kind="stable")[None, :n_best]
        ok = in_context[s] & in_context[e] & (e >= s) & (e - s + 1 <= max_answer_length)
        if not ok.any():
            continue
        scores = np.where(ok, start[s] + end[e], -np.inf)
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        if qid not in best or scores[i, j] > best[qid][0]:
            best[qid] = (float(scores[i, j]), f, int(s[i, 0]), int(e[0, j]))
    answers = {}
    for ex in examples:
        if ex["id"] in best:
            _, f, i, j = best[ex["id"]]
            answers[ex["id"]] = ex["context"][offsets_of[f][i][0] : offsets_of[f][j][1]]
        else:
            answers[ex["id"]] = ""
    return answers


def squad_scores(answers: dict[str, str], examples: list[dict]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 (0..100): answers lower-cased, punctuation and articles dropped,
    whitespace collapsed; the best over each question's gold answers, averaged over the questions."""
    from torchmetrics.functional.text.squad import squad

    preds = [{"id": ex["id"], "prediction_text": answers.get(ex["id"], "")} for ex in examples]
    targets = [{"id": ex["id"], "answers": ex["answers"]} for ex in examples]
    scores = squad(preds, targets)
    return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}
