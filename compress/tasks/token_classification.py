"""Token classification (NER-style BIO tagging): data, word alignment, model, distillation loss, seqeval F1.

Files: JSON lines (or a JSON list) of {"tokens": [...], "tags": [...]} rows (column names are arguments;
the tags column defaults to `tags`, else `ner_tags`), or CoNLL columns (`word ... tag` per line, a blank
line between sentences, -DOCSTART- lines skipped). Tags are strings (B-PER, I-PER, O, ...), or ids when
the label names are known. The label set is the training data's tags, sorted, unless the model already
has a token classification head, whose labels then rule.

A word is labelled at its first sub-token; its other sub-tokens and the special tokens get -100, so the
loss and the metric see one prediction per word. Words cut off by max_length are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.core.errors import DataError, InvalidConfigError
from compress.tasks.batching import MODEL_INPUTS, Predict, predict_features
from compress.tasks.files import json_rows, parse_json, read_text
from exporters.spec import TASKS as EXPORTS

onnx_outputs: tuple[str, ...] = EXPORTS["token-classification"].outputs  # ("logits",)

IGNORE = -100  # the label of positions no loss or metric looks at
JSON_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class TokenData:
    train: list[dict] | None  # rows {"tokens": [str, ...], "tags": [label id, ...]}
    dev: list[dict] | None
    id2label: dict[int, str]


def load_data(
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    *,
    tokens_column: str = "tokens",
    tags_column: str | None = None,
    label_names: list[str] | None = None,
) -> TokenData:
    """Rows of the given files with tags as label ids. `label_names`: the model head's, when it has one;
    otherwise the training file's sorted tags define them (and evaluation alone needs a head's)."""
    if train_file is None and validation_file is None:
        raise DataError("no token classification data: pass --train-file and/or --validation-file")
    raw = {
        split: read_tagged_file(path, tokens_column, tags_column) if path else None
        for split, path in (("train", train_file), ("dev", validation_file))
    }
    names = label_names
    if names is None:
        if raw["train"] is None:
            raise DataError(
                "evaluation alone needs the label names: use a model with a token classification head "
                "(config.json id2label) or also pass --train-file"
            )
        tags = {t for _, row in raw["train"] for t in row["tags"]}
        ids = sorted(t for t in tags if not isinstance(t, str))
        if ids:
            raise DataError(
                f"{train_file} gives tags as ids (e.g. {ids[0]}) but no label names are known; write the tags "
                "as strings (B-PER, I-PER, O, ...) or use a model whose head has them"
            )
        names = sorted(tags)
    source = "the model's labels" if label_names is not None else "the training data's tags"
    rows = {split: _to_ids(r, names, source) if r is not None else None for split, r in raw.items()}
    return TokenData(rows["train"], rows["dev"], dict(enumerate(names)))


def read_tagged_file(path: str | Path, tokens_column: str = "tokens", tags_column: str | None = None) -> list[tuple]:
    """(location, {"tokens", "tags"}) per sentence of a JSON (lines) or CoNLL file; empty sentences dropped."""
    text = read_text(path, "token classification file")
    if Path(path).suffix.lower() in JSON_SUFFIXES:
        sentences = _json_sentences(text, path, tokens_column, tags_column)
    else:
        sentences = _conll_sentences(text, path)
    if not sentences:
        raise DataError(f"token classification file {path} holds no sentences")
    return sentences


def _json_sentences(text: str, path, tokens_column: str, tags_column: str | None) -> list[tuple]:
    out = []
    for where, row in json_rows(parse_json(text), text, path):
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object; rows need {tokens_column!r} and a tags list")
        tags_key = tags_column or ("tags" if "tags" in row or "ner_tags" not in row else "ner_tags")
        tokens, tags = row.get(tokens_column), row.get(tags_key)
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(
                f"{where} needs lists {tokens_column!r} and {tags_key!r}; it has {sorted(row)} (set the column flags)"
            )
        if len(tags) != len(tokens):
            raise DataError(f"{where} has {len(tags)} tags for {len(tokens)} tokens; give every token one tag")
        if tokens:
            out.append((where, {"tokens": [str(t) for t in tokens], "tags": tags}))
    return out


def _conll_sentences(text: str, path) -> list[tuple]:
    out, tokens, tags, first = [], [], [], 0
    for n, line in enumerate([*text.splitlines(), ""], start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                out.append((f"{path}:{first}", {"tokens": tokens, "tags": tags}))
            tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{n} has one column ({line.strip()!r}); CoNLL lines are `word ... tag`")
        if not tokens:
            first = n
        tokens.append(fields[0])
        tags.append(fields[-1])
    return out


def _to_ids(rows: list[tuple], names: list[str], source: str) -> list[dict]:
    index = {name: i for i, name in enumerate(names)}
    out = []
    for where, row in rows:
        ids = []
        for tag in row["tags"]:
            if isinstance(tag, int) and not isinstance(tag, bool):
                if not 0 <= tag < len(names):
                    raise DataError(
                        f"{where}: tag id {tag} is outside 0..{len(names) - 1} ({source}: {', '.join(names)})"
                    )
                ids.append(tag)
            elif str(tag) in index:
                ids.append(index[str(tag)])
            else:
                raise DataError(f"{where}: unknown tag {tag!r}; the known tags ({source}) are {', '.join(names)}")
        out.append({"tokens": row["tokens"], "tags": ids})
    return out


def preprocess(rows: list[dict], tokenizer, max_length: int = 128):
    """A `datasets.Dataset` of input_ids, attention_mask (token_type_ids when the tokenizer gives them) and
    labels: the word's tag id at its first sub-token, -100 elsewhere."""
    import datasets

    _check_word_split(tokenizer, rows)

    def tokenize(batch):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            words = enc.word_ids(i)
            labels.append(
                [IGNORE if w is None or w == prev else tags[w] for prev, w in zip([None, *words[:-1]], words)]
            )
        return {**{c: enc[c] for c in MODEL_INPUTS if c in enc}, "labels": labels}

    ds = datasets.Dataset.from_list(rows)
    return ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc="tokenizing tagged words")


def _check_word_split(tokenizer, rows: list[dict]) -> None:
    """Word ids need a fast tokenizer; and a byte-level BPE tokenizer (RoBERTa) loaded without
    add_prefix_space=True reads every given word as the middle of a word, unlike the text it was trained on."""
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidConfigError(
            f"token classification needs a fast tokenizer (a tokenizer.json) for word ids; {type(tokenizer).__name__} is not one"
        )
    words = next((r["tokens"][:2] for r in rows if len(r["tokens"]) >= 2), None)
    if words is None:
        return
    split = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    text = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    if split != text:
        raise InvalidConfigError(
            f"the tokenizer splits the words {words} differently from the text {' '.join(words)!r}; a byte-level "
            "BPE tokenizer must be loaded with add_prefix_space=True for pre-split words"
        )


def head_labels(config) -> list[str] | None:
    """The label names of a checkpoint that already is a token classifier, else None (a fresh head)."""
    if not any(a.endswith("ForTokenClassification") for a in (getattr(config, "architectures", None) or [])):
        return None
    return [str(config.id2label[k]) for k in sorted(config.id2label, key=int)]


def load_model(model_name: str, id2label: dict[int, str]):
    """AutoModelForTokenClassification with these labels; a token classifier must already have them."""
    from transformers import AutoModelForTokenClassification

    from compress.core.artifacts import load_pretrained
    from compress.core.models import load_config

    names = [id2label[i] for i in sorted(id2label)]
    have = head_labels(load_config(model_name))
    if have is not None and have != names:
        raise InvalidConfigError(
            f"{model_name} is a token classifier with labels {have} but the data has {names}; "
            "use a matching model or a base encoder"
        )
    return load_pretrained(
        AutoModelForTokenClassification,
        model_name,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def distill_loss(student_outputs, teacher_outputs, labels, alpha_ce: float, alpha_teacher: float, temperature: float):
    """alpha_ce * CE + alpha_teacher * T^2 * KL(teacher || student) per labelled token (labels != -100),
    averaged over those tokens; without a teacher the cross-entropy alone."""
    import torch.nn.functional as F

    logits = student_outputs["logits"]
    ce = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), ignore_index=IGNORE)
    if teacher_outputs is None:
        return ce
    T = temperature
    keep = labels != IGNORE
    student, teacher = logits[keep] / T, teacher_outputs["logits"][keep] / T
    kd = F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1), reduction="sum") / keep.sum().clamp(min=1)
    return alpha_ce * ce + alpha_teacher * kd * T * T


def evaluate(
    predict: Predict, features, id2label: dict[int, str], *, pad_token_id: int = 0, batch_size: int = 64
) -> dict:
    """Entity-level precision / recall / F1 (seqeval, conlleval rules), micro over all entities and under
    `per_type` for each entity type, plus word accuracy."""
    from seqeval.metrics import accuracy_score, classification_report

    names = {int(k): v for k, v in id2label.items()}
    logits = predict_features(predict, features, onnx_outputs, pad_token_id, batch_size)["logits"]
    gold, pred = [], []
    for scores, labels in zip(logits, features["labels"]):
        labels = np.asarray(labels)
        keep = labels != IGNORE
        gold.append([names[int(i)] for i in labels[keep]])
        pred.append([names[int(i)] for i in scores.argmax(-1)[keep]])
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    overall = report["micro avg"]
    per_type = {
        kind: {
            "precision": float(r["precision"]),
            "recall": float(r["recall"]),
            "f1": float(r["f1-score"]),
            "support": int(r["support"]),
        }
        for kind, r in report.items()
        if not kind.endswith(" avg")
    }
    return {
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
        "f1": float(overall["f1-score"]),
        "accuracy": float(accuracy_score(gold, pred)),
        "per_type": per_type,
    }
