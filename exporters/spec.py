"""What an export looks like, per task: kept free of heavy imports so the CLI parser can use it.

A table, not a registry: one row per task with the Auto class that loads its head, the outputs
exported (in order) and whether they have a sequence axis.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ExportSpec:
    auto_class: str  # transformers Auto class that loads the head
    outputs: tuple[str, ...]  # ModelOutput fields exported, in order
    per_token: bool  # outputs have a sequence axis
    architecture_suffixes: tuple[str, ...]  # config.architectures endings that imply this task


TASKS: dict[str, ExportSpec] = {
    "sequence-classification": ExportSpec(
        "AutoModelForSequenceClassification", ("logits",), False, ("ForSequenceClassification",)
    ),
    "token-classification": ExportSpec(
        "AutoModelForTokenClassification", ("logits",), True, ("ForTokenClassification",)
    ),
    "question-answering": ExportSpec(
        "AutoModelForQuestionAnswering", ("start_logits", "end_logits"), True, ("ForQuestionAnswering",)
    ),
    "feature-extraction": ExportSpec("AutoModel", ("last_hidden_state",), True, ("Model",)),
}
