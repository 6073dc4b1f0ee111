"""The task types, one entry each: how a task's data is read and tokenized, which model learns it, its
distillation loss, its metrics and the ONNX graph it ships as. prune, finetune, eval (of checkpoints and
of ONNX graphs) and run read these entries, so adding a task type is one entry here plus its module
under compress/tasks/.

Every `evaluate` takes a `predict(batch of padded int64 arrays) -> {output name: array}`, which wraps a
PyTorch model or an ONNX Runtime session, so a checkpoint and its shipped graph are scored by the same
code. Sentence classification keeps its own evaluation path (compress.training.data.compute_metrics
and compress.ort.evaluate), which the other entries do not need.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compress.core.config import DataConfig, DistillConfig, TrainConfig
from compress.core.errors import DataError, InvalidConfigError
from compress.training.data import TaskData

Predict = Callable[[dict], dict]


@dataclass(frozen=True)
class TaskType:
    name: str  # one of compress.core.config.TASK_TYPES
    export_task: str  # the row of exporters.spec.TASKS its ONNX graph follows
    outputs: tuple[str, ...]  # model outputs the loss and the metrics read (the first is checked on save)
    label_columns: tuple[str, ...]  # dataset columns the loss takes besides the model inputs
    load_data: Callable[..., TaskData]  # (data, tokenizer, train config, splits, label_names) -> TaskData
    load_student: Callable[..., torch.nn.Module]  # (model name, TaskData, DataConfig)
    load_teacher: Callable[..., torch.nn.Module]  # (teacher name, TaskData, DataConfig)
    loss: Callable[..., torch.Tensor]  # (student outputs, batch, teacher outputs or None, DistillConfig)
    evaluate: Callable[..., dict] | None  # (predict, TaskData, pad id, batch size); None: the classifier path
    collator: Callable[[Any], Any] | None = None  # (tokenizer) -> data collator; None: pad the inputs
    reload: Callable[[str], torch.nn.Module] | None = None  # saved folder -> model, for the save check
    save: Callable[..., None] | None = None  # (model, tokenizer, folder); None: save_pretrained
    teacher_cache: bool = False  # the teacher's logits are computed once over the training set
    default_teacher_is_student: bool = False  # no --teacher: distil from the dense model itself
    tokenizer_kwargs: Callable[[Any], dict] = field(default=lambda config: {})


def task_type(name: str) -> TaskType:
    if name not in TASK_TYPES:
        raise InvalidConfigError(f"unknown task type {name!r}; choose one of {', '.join(TASK_TYPES)}")
    return TASK_TYPES[name]


def task_of(info: dict | None, config=None) -> TaskType:
    """The task type of a saved model: recorded in compression.json, else read from its architecture."""
    name = (info or {}).get("task_type")
    if name:
        return task_type(name)
    arch = " ".join(getattr(config, "architectures", None) or [])
    for suffix, kind in (
        ("ForQuestionAnswering", "question-answering"),
        ("ForTokenClassification", "token-classification"),
    ):
        if suffix in arch:
            return TASK_TYPES[kind]
    return TASK_TYPES["sequence-classification"]


def default_teacher(task: TaskType, student: torch.nn.Module) -> torch.nn.Module | None:
    """The dense model itself, for tasks distilled from it when no teacher is given (embeddings)."""
    return copy.deepcopy(student).eval() if task.default_teacher_is_student else None


# ------------------------------------------------------------------ sequence classification
def _classification_data(data: DataConfig, tokenizer, t: TrainConfig, splits, label_names, template=None) -> TaskData:
    from compress.training.data import load_task_data

    return load_task_data(
        data.task,
        tokenizer,
        **data.source(),
        max_length=t.max_length,
        eval_max_length=t.eval_max_length,
        max_train_samples=t.max_train_samples,
        max_eval_samples=t.max_eval_samples,
        splits=splits,
        template=template,
        label_names=label_names,
    )


def _classification_loss(out, batch: dict, teacher_out, d: DistillConfig) -> torch.Tensor:
    logits = out["logits"]
    loss = F.cross_entropy(logits, batch["labels"])
    if teacher_out is not None:
        T = d.temperature
        kd = (
            F.kl_div(F.log_softmax(logits / T, -1), F.softmax(teacher_out["logits"] / T, -1), reduction="batchmean")
            * T
            * T
        )
        loss = d.alpha_ce * loss + d.alpha_teacher * kd
    return loss


def _load_classifier(name: str, td: TaskData | None = None, data: DataConfig | None = None):
    from compress.core.models import load_classifier

    return load_classifier(name, td.num_labels if td is not None else None)


def _load_classifier_teacher(name: str, td: TaskData | None = None, data: DataConfig | None = None):
    """The teacher as saved (its label count is compared with the student's afterwards)."""
    from compress.core.models import load_classifier

    return load_classifier(name)


def _reload_classifier(path: str):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path)


# ------------------------------------------------------------------ question answering
def _qa_data(data: DataConfig, tokenizer, t: TrainConfig, splits, label_names=None, template=None) -> TaskData:
    from compress.tasks import question_answering as qa

    raw = qa.load_data(
        data.task,
        data_dir=data.data_dir,
        train_file=data.train_file,
        validation_file=data.validation_file,
        splits=tuple(splits),
    )
    train = dev = None
    examples = raw.get("dev")
    if "train" in splits and raw.get("train") is not None:
        rows = raw["train"][: t.max_train_samples] if t.max_train_samples else raw["train"]
        train = qa.preprocess_train(rows, tokenizer, t.max_length, data.doc_stride)
    if "dev" in splits and examples is not None:
        examples = examples[: t.max_eval_samples] if t.max_eval_samples else examples
        dev = qa.preprocess_eval(examples, tokenizer, t.eval_max_length, data.doc_stride)
    return TaskData(
        spec=None, train=train, dev=dev, name=data.task or "qa-files", num_labels_=2, extra={"examples": examples}
    )


def _qa_loss(out, batch: dict, teacher_out, d: DistillConfig) -> torch.Tensor:
    from compress.tasks.question_answering import distill_loss

    return distill_loss(out, teacher_out, batch, d.alpha_ce, d.alpha_teacher, d.temperature)


def _qa_evaluate(predict: Predict, td: TaskData, pad_token_id: int, batch_size: int) -> dict:
    from compress.tasks.question_answering import evaluate

    return evaluate(predict, td.dev, td.extra["examples"], pad_token_id=pad_token_id, batch_size=batch_size)


def _load_qa(name: str, td: TaskData | None = None, data: DataConfig | None = None):
    from compress.tasks.question_answering import load_model

    return load_model(name)


def _reload_qa(path: str):
    from transformers import AutoModelForQuestionAnswering

    return AutoModelForQuestionAnswering.from_pretrained(path)


# ------------------------------------------------------------------ token classification
def _token_data(data: DataConfig, tokenizer, t: TrainConfig, splits, label_names=None, template=None) -> TaskData:
    from compress.tasks import token_classification as tc

    if data.task is not None:
        raise DataError(
            f"--task {data.task} is not a token classification task; give --train-file / --validation-file "
            "(CoNLL columns or jsonl with tokens and tags)"
        )
    rows = tc.load_data(
        data.train_file if "train" in splits else None,
        data.validation_file if "dev" in splits else None,
        tokens_column=data.text_column or "tokens",
        tags_column=data.label_column,
        label_names=label_names,
    )
    train = dev = None
    if rows.train is not None:
        train = tc.preprocess(
            rows.train[: t.max_train_samples] if t.max_train_samples else rows.train, tokenizer, t.max_length
        )
    if rows.dev is not None:
        dev = tc.preprocess(
            rows.dev[: t.max_eval_samples] if t.max_eval_samples else rows.dev, tokenizer, t.eval_max_length
        )
    names = [rows.id2label[i] for i in sorted(rows.id2label)]
    return TaskData(
        spec=None,
        train=train,
        dev=dev,
        label_names=names if label_names is None else None,
        name="token-files",
        num_labels_=len(names),
        extra={"id2label": rows.id2label},
    )


def _token_loss(out, batch: dict, teacher_out, d: DistillConfig) -> torch.Tensor:
    from compress.tasks.token_classification import distill_loss

    return distill_loss(out, teacher_out, batch["labels"], d.alpha_ce, d.alpha_teacher, d.temperature)


def _token_evaluate(predict: Predict, td: TaskData, pad_token_id: int, batch_size: int) -> dict:
    from compress.tasks.token_classification import evaluate

    return evaluate(predict, td.dev, td.extra["id2label"], pad_token_id=pad_token_id, batch_size=batch_size)


def _load_token(name: str, td: TaskData, data: DataConfig | None = None):
    from compress.tasks.token_classification import load_model

    return load_model(name, td.extra["id2label"])


def _token_collator(tokenizer):
    from transformers import DataCollatorForTokenClassification

    return DataCollatorForTokenClassification(tokenizer)


def _reload_token(path: str):
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(path)


def _prefix_space(config) -> dict:
    """Byte-level BPE tokenizers (RoBERTa) read pre-split words right only with add_prefix_space."""
    return {"add_prefix_space": True} if getattr(config, "model_type", "") in ("roberta", "xlm-roberta") else {}


# ------------------------------------------------------------------ sentence embeddings
def _embedding_data(data: DataConfig, tokenizer, t: TrainConfig, splits, label_names=None, template=None) -> TaskData:
    from compress.tasks import embedding

    train = None
    if "train" in splits:
        files = [f for f in (data.train_file or "").split(",") if f]
        corpus = embedding.load_corpus(
            data.data_dir, files=files, text_column=data.text_column, max_samples=t.max_train_samples
        )
        train = embedding.preprocess(corpus, tokenizer, t.max_length)
    extra = {"data_dir": data.data_dir, "max_samples": t.max_eval_samples, "max_length": t.eval_max_length}
    return TaskData(spec=None, train=train, dev=None, name=data.task or "embedding-files", extra=extra)


def _embedding_loss(out, batch: dict, teacher_out, d: DistillConfig) -> torch.Tensor:
    from compress.tasks.embedding import distill_loss

    if teacher_out is None:
        raise InvalidConfigError("embedding distillation needs a teacher (the dense model by default)")
    return distill_loss(
        out, teacher_out, kind=d.embedding_loss, hidden_weight=d.hidden_weight, attention_mask=batch["attention_mask"]
    )


def _embedding_evaluate(predict: Predict, td: TaskData, pad_token_id: int, batch_size: int) -> dict:
    """Retrieval, MRPC pair similarity and (with the teacher in td.extra) fidelity to the teacher."""
    from compress.tasks.embedding import embed_texts, evaluate

    x = td.extra
    tokenizer = x["tokenizer"]

    def embed_with(p):
        return lambda texts: embed_texts(p, tokenizer, texts, batch_size, x["max_length"])

    teacher = x.get("teacher_predict")
    return evaluate(
        embed_with(predict), x["data_dir"], x["max_samples"], teacher_embed=embed_with(teacher) if teacher else None
    )


def _load_embedding(name: str, td: TaskData | None = None, data: DataConfig | None = None):
    from compress.tasks.embedding import load_model

    return load_model(name, data.pooling if data else None, data.normalize if data else None)


def _load_embedding_teacher(name: str, td: TaskData | None = None, data: DataConfig | None = None):
    from compress.tasks.embedding import load_model

    # A sentence-transformers teacher pools its own way (its folder); a plain encoder pools as the student.
    if data is None or (Path(name) / "modules.json").is_file():
        return load_model(name)
    return load_model(name, data.pooling, data.normalize)


def _reload_embedding(path):
    from compress.tasks.embedding import load_model

    return load_model(str(path))


def _save_embedding(model, tokenizer, folder) -> None:
    from compress.tasks.embedding import save_sentence_transformers_folder

    save_sentence_transformers_folder(model, tokenizer, folder)


TASK_TYPES: dict[str, TaskType] = {
    "sequence-classification": TaskType(
        name="sequence-classification",
        export_task="sequence-classification",
        outputs=("logits",),
        label_columns=("labels",),
        load_data=_classification_data,
        load_student=_load_classifier,
        load_teacher=_load_classifier_teacher,
        loss=_classification_loss,
        evaluate=None,
        reload=_reload_classifier,
        teacher_cache=True,
    ),
    "question-answering": TaskType(
        name="question-answering",
        export_task="question-answering",
        outputs=("start_logits", "end_logits"),
        label_columns=("start_positions", "end_positions"),
        load_data=_qa_data,
        load_student=_load_qa,
        load_teacher=_load_qa,
        loss=_qa_loss,
        evaluate=_qa_evaluate,
        reload=_reload_qa,
    ),
    "token-classification": TaskType(
        name="token-classification",
        export_task="token-classification",
        outputs=("logits",),
        label_columns=("labels",),
        load_data=_token_data,
        load_student=_load_token,
        load_teacher=_load_token,
        loss=_token_loss,
        evaluate=_token_evaluate,
        collator=_token_collator,
        reload=_reload_token,
        tokenizer_kwargs=_prefix_space,
    ),
    "embedding": TaskType(
        name="embedding",
        export_task="sentence-embedding",
        outputs=("sentence_embedding", "last_hidden_state"),
        label_columns=(),
        load_data=_embedding_data,
        load_student=_load_embedding,
        load_teacher=_load_embedding_teacher,
        loss=_embedding_loss,
        evaluate=_embedding_evaluate,
        reload=_reload_embedding,
        save=_save_embedding,
        default_teacher_is_student=True,
    ),
}
