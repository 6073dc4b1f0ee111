"""What an export looks like, per task: kept free of heavy imports so the CLI parser can use it.

A table, not a registry: one row per task with the Auto class that loads its head, the outputs
exported (in order), which of them have a sequence axis, and where the graph goes in the output.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ExportSpec:
    # transformers Auto class that loads the head; None: the caller passes the loaded model in
    # (export_checkpoint(model=...)), for models that are not one Auto class (an encoder with its pooling)
    auto_class: str | None
    outputs: tuple[str, ...]  # ModelOutput fields exported, in order
    per_token: bool  # outputs have a sequence axis
    architecture_suffixes: tuple[str, ...]  # config.architectures endings that imply this task
    pooled: tuple[str, ...] = ()  # outputs of a per-token export that have no sequence axis
    # "": the output folder holds the graph and its sidecar files. A folder name: the output is a copy
    # of the checkpoint's model folder with the graph (and the sidecars ONNX tools read beside it) in
    # that subfolder, the layout sentence-transformers loads and ships its own ONNX exports in.
    subfolder: str = ""

    def has_sequence_axis(self, output: str) -> bool:
        return self.per_token and output not in self.pooled


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
    # An encoder with sentence-transformers' pooling (and normalisation) inside the graph: the caller
    # loads it (compress.tasks.embedding.SentenceEncoder); the output is a sentence-transformers folder.
    "sentence-embedding": ExportSpec(
        None,
        ("last_hidden_state", "sentence_embedding"),
        True,
        (),
        pooled=("sentence_embedding",),
        subfolder="onnx",
    ),
}

# The files of a sentence-transformers folder besides the transformer's own (config, weights,
# tokenizer), and the weights files a model folder may hold; module folders come from modules.json.
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "README.md",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
