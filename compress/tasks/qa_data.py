"""Extractive question answering data: SQuAD v1.1 JSON or JSON lines, as one list of examples.

An example is {"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}
(the layout of the Hugging Face `squad` dataset). JSON lines rows have question/context/answers, the
answers either in that layout or as a list of {"text", "answer_start"}; `id` and `title` are optional.

Built-in tasks: `squad-split` is the article split of the local dev file (compress.tasks.squad_split),
the only SQuAD data available offline; `squad` is the real train and dev files in <data dir>/squad/.
Every example needs a gold answer found at its answer_start: training reads the first one, and the
metric compares against all of them, so a wrong offset would silently teach the wrong span.
"""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import DataError
from compress.tasks.files import json_rows, parse_json, read_text
from compress.tasks.squad_split import default_squad_file, read_squad, split_articles

TASKS = ("squad-split", "squad")
SPLITS = ("train", "dev")
TRAIN_FILE = "train-v1.1.json"


def load_data(
    task: str | None = None,
    *,
    data_dir: str | Path | None = None,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, list[dict] | None]:
    """{"train": examples, "dev": examples} for the splits asked (None for the others).

    A file flag replaces the task's own data for its split; without a task both needed files must be given."""
    if task is not None and task not in TASKS:
        raise DataError(f"unknown question answering task {task!r}; built-in: {', '.join(TASKS)} (or pass files)")
    files = {"train": train_file, "dev": validation_file}
    out: dict[str, list[dict] | None] = {s: None for s in SPLITS}
    if task == "squad-split" and not all(files[s] for s in splits):
        path = default_squad_file(data_dir)
        parts = dict(zip(SPLITS, split_articles(path)))
        for split in splits:
            out[split] = examples_from_articles(parts[split], f"{path} ({split} part of the article split)")
    for split in splits:
        if files[split]:
            out[split] = read_qa_file(files[split])
        elif task == "squad":
            dev = default_squad_file(data_dir)
            path = dev.with_name(TRAIN_FILE) if split == "train" else dev
            if not path.is_file():
                raise DataError(
                    f"task squad needs {path}; put SQuAD v1.1's {path.name} there, pass "
                    f"--{'train' if split == 'train' else 'validation'}-file, or use task squad-split (offline)"
                )
            out[split] = examples_from_articles(read_squad(path), str(path))
        elif task is None:
            flag = "--train-file" if split == "train" else "--validation-file"
            raise DataError(f"no {split} data: pass --task ({', '.join(TASKS)}) or {flag} (SQuAD JSON or JSON lines)")
    return out


def read_qa_file(path: str | Path) -> list[dict]:
    """The examples of a SQuAD v1.1 JSON file (data/paragraphs/qas) or of a JSON lines / JSON list file."""
    text = read_text(path, "question answering file")
    doc = parse_json(text)
    if isinstance(doc, dict) and "data" in doc:
        return examples_from_articles(read_squad(path), str(path))
    examples = []
    for where, row in json_rows(doc, text, path):
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object; rows need question, context and answers")
        for key in ("question", "context"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{where} has no string {key!r}; rows need question, context and answers")
        qid = str(row.get("id", where))
        examples.append(
            _example(qid, str(row.get("title", "")), row["context"], row["question"], row.get("answers"), where)
        )
    return _unique(examples, str(path))


def examples_from_articles(articles: list[dict], where: str) -> list[dict]:
    """The examples of SQuAD v1.1 articles (title, paragraphs of context and qas), in file order."""
    examples = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                qid = str(qa.get("id", ""))
                examples.append(
                    _example(
                        qid,
                        article.get("title", ""),
                        paragraph["context"],
                        qa["question"],
                        qa.get("answers"),
                        f"{where} question {qid}",
                    )
                )
    return _unique(examples, where)


def _example(qid: str, title: str, context: str, question: str, answers, where: str) -> dict:
    texts, starts = _answers(answers, where)
    if not texts:
        raise DataError(
            f"{where} (question {qid}) has no answer; extractive QA needs a gold answer span per question "
            "for training and for EM/F1 (SQuAD v2 unanswerable questions are not supported)"
        )
    for text, start in zip(texts, starts):
        found = context[start : start + len(text)]
        if found != text:
            raise DataError(
                f"{where}: the answer of question {qid} is {text!r} but the context at answer_start {start} "
                f"reads {found!r}; fix answer_start (a character offset into the context)"
            )
    return {
        "id": qid,
        "title": title,
        "context": context,
        "question": question,
        "answers": {"text": texts, "answer_start": starts},
    }


def _answers(answers, where: str) -> tuple[list[str], list[int]]:
    """Answer texts and character starts from either layout: {"text": [...], "answer_start": [...]} or
    a list of {"text", "answer_start"}."""
    if answers is None:
        return [], []
    if isinstance(answers, dict):
        texts, starts = answers.get("text", []), answers.get("answer_start", [])
    elif isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        texts = [a.get("text") for a in answers]
        starts = [a.get("answer_start") for a in answers]
    else:
        raise DataError(f"{where}: answers must be {{'text': [...], 'answer_start': [...]}} or a list of those")
    ok = isinstance(texts, list) and isinstance(starts, list) and len(texts) == len(starts)
    if not ok or not all(isinstance(t, str) for t in texts) or not all(_is_offset(s) for s in starts):
        raise DataError(f"{where}: answers need as many answer_start integers as answer texts")
    return texts, [int(s) for s in starts]


def _is_offset(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unique(examples: list[dict], where: str) -> list[dict]:
    """Predictions are keyed by question id, so two questions with one id would share an answer."""
    seen = set()
    for ex in examples:
        if ex["id"] in seen:
            raise DataError(f"{where}: question id {ex['id']!r} occurs twice; ids must be unique")
        seen.add(ex["id"])
    if not examples:
        raise DataError(f"{where} holds no questions")
    return examples
