"""Sentence embeddings: a transformers encoder plus pooling (and L2 normalisation), compressed as the
retrieval encoder it is (all-MiniLM-L6-v2 by default).

The model is SentenceEncoder: the encoder (reachable as `model.base_model`, so the pruning masks find
it) with the pooling of its sentence-transformers folder inside forward(), so the exported ONNX graph
outputs `sentence_embedding` (pooled, normalised) next to `last_hidden_state`. A checkpoint is written
back as a sentence-transformers folder, so `SentenceTransformer(path)` loads the pruned model.
Data lives in embedding_data, metrics in embedding_metrics.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from compress.core.artifacts import load_pretrained, write_json
from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.models import load_config, max_positions
from compress.core.structure import geometry
from compress.tasks.batching import Predict, padded_batches, torch_predict
from compress.tasks.embedding_data import load_corpus, preprocess
from compress.tasks.embedding_metrics import evaluate

__all__ = [
    "DISTILL_KINDS",
    "POOLING_MODES",
    "PoolingSpec",
    "SentenceEncoder",
    "distill_loss",
    "embed_texts",
    "embed_with_model",
    "evaluate",
    "load_corpus",
    "load_model",
    "onnx_outputs",
    "preprocess",
    "read_pooling",
    "save_sentence_transformers_folder",
]

POOLING_MODES = ("mean", "cls", "max")  # what SentenceEncoder (and so the ONNX graph) computes
DISTILL_KINDS = ("cosine", "mse", "cosine+mse")
onnx_outputs = ("last_hidden_state", "sentence_embedding")

# sentence-transformers' Pooling config: the current `pooling_mode` key, or one bool key per mode.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_MODULE_TYPES = ("Transformer", "Pooling", "Normalize")  # the sentence-transformers modules we compute


@dataclass(frozen=True)
class PoolingSpec:
    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None  # sentence_bert_config.json: how many tokens the model reads


# --------------------------------------------------------------------------------------- pooling config
def _model_file(model_dir, name: str) -> Path | None:
    """A file of a local model folder, or of a hub model that is cached or downloadable."""
    local = Path(model_dir).expanduser()
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            str(model_dir),
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):  # not a hub name either: load_model's config check says so
        return None
    return Path(found) if found else None


def _read_json(model_dir, name: str):
    path = _model_file(model_dir, name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); restore it from the model it came from") from e


def _check_mode(mode: str, where: str) -> None:
    if mode not in POOLING_MODES:
        raise InvalidConfigError(
            f"{where}: {mode!r} pooling is not one the exported graph computes; supported pooling modes: "
            + ", ".join(POOLING_MODES)
        )


def _pooling_mode(config: dict, where: str) -> str:
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    _check_mode("+".join(map(str, modes)), where)
    return modes[0]


def read_pooling(model_dir, pooling: str | None = None, normalize: bool | None = None) -> PoolingSpec:
    """How a model pools: from its sentence-transformers files (modules.json, the Pooling module's
    config.json, a Normalize module, sentence_bert_config.json) when it has them, else from the flags
    (default: mean pooling, no normalisation). A flag that contradicts the files is an error, not a
    silent override."""
    if pooling is not None:
        _check_mode(pooling, "--pooling")
    modules = _read_json(model_dir, "modules.json")
    if modules is None:
        return PoolingSpec(mode=pooling or "mean", normalize=bool(normalize))
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    for kind in kinds:
        if kind not in _MODULE_TYPES:
            raise InvalidConfigError(
                f"{model_dir}/modules.json has a {kind} module, which the exported graph cannot compute; "
                f"supported modules: {', '.join(_MODULE_TYPES)}"
            )
    mode = None
    for module, kind in zip(modules, kinds):
        if kind == "Pooling":
            name = f"{module['path']}/config.json" if module.get("path") else "config.json"
            mode = _pooling_mode(_read_json(model_dir, name) or {}, f"{model_dir}/{name}")
    normalized = "Normalize" in kinds
    mode = mode or pooling or "mean"
    for flag, given, found in (("--pooling", pooling, mode), ("--normalize", normalize, normalized)):
        if given is not None and given != found:
            raise InvalidConfigError(
                f"{model_dir} is a sentence-transformers model with {flag.lstrip('-')} {found} "
                f"(modules.json) but {flag} {given} was given; drop {flag} to use the model's own"
            )
    st_config = _read_json(model_dir, "sentence_bert_config.json") or {}
    return PoolingSpec(mode=mode, normalize=normalized, max_seq_length=st_config.get("max_seq_length"))


# --------------------------------------------------------------------------------------- model
@dataclass
class SentenceEmbeddingOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    sentence_embedding: torch.Tensor | None = None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, hidden) from (batch, sequence, hidden) over the attended tokens, as sentence-transformers
    pools, with ops that export to ONNX."""
    mask = attention_mask.unsqueeze(-1)
    if mode == "mean":
        mask = mask.to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if mode == "cls":
        # The first attended token: position 0 unless the tokenizer pads on the left. The ArgMax runs
        # on floats because ONNX Runtime has no int64 ArgMax kernel.
        first = attention_mask.to(hidden.dtype).argmax(dim=1)
        return hidden.gather(1, first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    raise InvalidConfigError(f"unknown pooling mode {mode!r}; supported: {', '.join(POOLING_MODES)}")


class SentenceEncoder(nn.Module):
    """An encoder (`AutoModel`) and its pooling: forward gives `last_hidden_state` and `sentence_embedding`."""

    def __init__(self, encoder: nn.Module, pooling: PoolingSpec):
        super().__init__()
        _check_mode(pooling.mode, "the pooling")
        self.encoder = encoder
        self.pooling = pooling
        self._takes_token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters
        self.train(encoder.training)

    # The structure tables and the Pruner look at .config and .base_model, like any HF model.
    @property
    def config(self):
        return self.encoder.config

    @property
    def base_model(self):
        return self.encoder.base_model

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, return_dict=None):
        """`return_dict` is accepted because callers pass it to every HF model; the output is always a
        ModelOutput (indexable by name, like a dict)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None and self._takes_token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        embedding = pool(hidden, attention_mask, self.pooling.mode)
        if self.pooling.normalize:
            embedding = F.normalize(embedding, p=2, dim=-1)
        return SentenceEmbeddingOutput(last_hidden_state=hidden, sentence_embedding=embedding)


def load_model(
    model_name: str, pooling: str | None = None, normalize: bool | None = None, attn_implementation: str | None = None
) -> SentenceEncoder:
    """The encoder of a (sentence-transformers or plain transformers) model folder with its pooling
    (read_pooling). `attn_implementation="eager"` for ONNX export."""
    from transformers import AutoModel

    spec = read_pooling(model_name, pooling, normalize)
    load_config(model_name)  # a missing folder or an unsupported model type: one line before the weights
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return SentenceEncoder(load_pretrained(AutoModel, model_name, **kw), spec)


# --------------------------------------------------------------------------------------- loss
def distill_loss(
    student_out,
    teacher_out,
    kind: str = "cosine",
    hidden_weight: float = 0.0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Embedding distillation on the L2-normalised sentence embeddings: 1 - cosine and/or MSE (mean over
    the dimensions, as sentence-transformers' MSELoss), plus `hidden_weight` x the MSE of the
    last_hidden_state over the attended tokens (`attention_mask` is needed for it)."""
    parts = kind.split("+")
    if kind not in DISTILL_KINDS:
        raise InvalidConfigError(
            f"unknown embedding distillation loss {kind!r}; choose one of {', '.join(DISTILL_KINDS)}"
        )
    s = F.normalize(student_out["sentence_embedding"].float(), p=2, dim=-1)
    t = F.normalize(teacher_out["sentence_embedding"].detach().float(), p=2, dim=-1)
    if s.shape != t.shape:
        raise InvalidConfigError(
            f"student embeddings are {s.shape[-1]}-dimensional, the teacher's {t.shape[-1]}; "
            "embedding distillation needs a teacher with the student's hidden size"
        )
    loss = s.new_zeros(())
    if "cosine" in parts:
        loss = loss + (1.0 - (s * t).sum(dim=-1)).mean()
    if "mse" in parts:
        loss = loss + F.mse_loss(s, t)
    if hidden_weight:
        if attention_mask is None:
            raise ValueError("distill_loss with hidden_weight needs the batch's attention_mask")
        hs = student_out["last_hidden_state"].float()
        ht = teacher_out["last_hidden_state"].detach().float()
        mask = attention_mask.unsqueeze(-1).to(hs.dtype)
        per_token = ((hs - ht) ** 2).mean(dim=-1, keepdim=True)
        loss = loss + hidden_weight * (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    return loss


# --------------------------------------------------------------------------------------- embedding texts
def embed_texts(predict: Predict, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 256):
    """(N, D) float32 `sentence_embedding` of each text through `predict` (padded int64 arrays in, named
    outputs out: a PyTorch model or an ONNX Runtime session). Rows are batched longest first, so a batch
    carries little padding, and returned in the order of `texts`."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    features = preprocess(texts, tokenizer, max_length)
    order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
    chunks = []
    for _, batch in padded_batches(features.select(order), tokenizer.pad_token_id or 0, batch_size):
        out = predict(batch)
        if "sentence_embedding" not in out:
            raise ArtifactError(
                f"the model gives outputs {sorted(out)}, not 'sentence_embedding'; is it an embedding model?"
            )
        chunks.append(np.asarray(out["sentence_embedding"], dtype=np.float32))
    embeddings = np.concatenate(chunks)
    result = np.empty_like(embeddings)
    result[order] = embeddings
    return result


def embed_with_model(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 256):
    """embed_texts through a PyTorch SentenceEncoder, put in eval mode for the call."""
    was_training = model.training
    model.eval()
    try:
        out = embed_texts(torch_predict(model, ("sentence_embedding",)), tokenizer, texts, batch_size, max_length)
    finally:
        model.train(was_training)
    return out if len(texts) else np.zeros((0, geometry(model.config).hidden_size), dtype=np.float32)


# --------------------------------------------------------------------------------------- saving
def save_sentence_transformers_folder(model, tokenizer, output, pooling: PoolingSpec | None = None) -> Path:
    """Write `output` as a folder `SentenceTransformer(output)` loads: the encoder's config.json and
    model.safetensors, the tokenizer files, modules.json, sentence_bert_config.json, 1_Pooling/config.json
    and 2_Normalize/ when normalising. `model` is a SentenceEncoder (its pooling is the default) or a bare
    encoder with `pooling` given. Files are written into `output` (made if missing); atomicity is the
    caller's (compress.core.artifacts.atomic_dir). The sentence-transformers 2.x file layout is written,
    which every later version reads too."""
    encoder = model.encoder if isinstance(model, SentenceEncoder) else model
    pooling = pooling or getattr(model, "pooling", None)
    if pooling is None:
        raise ValueError("save_sentence_transformers_folder needs the pooling of a bare encoder")
    _check_mode(pooling.mode, "the pooling")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(output)
    tokenizer.save_pretrained(output)

    config = encoder.config
    # Without a recorded length: what the position table and the tokenizer allow (transformers gives
    # tokenizers without a limit a model_max_length of ~1e30).
    limits = [n for n in (max_positions(config), getattr(tokenizer, "model_max_length", None)) if n and n < 1e6]
    max_seq_length = pooling.max_seq_length or (min(limits) if limits else None)
    write_json(output / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")] + (
        [("Normalize", "2_Normalize")] if pooling.normalize else []
    )
    write_json(
        output / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (kind, path) in enumerate(modules)
        ],
    )
    (output / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {"word_embedding_dimension": geometry(config).hidden_size}
    pooling_config.update({key: mode == pooling.mode for key, mode in _LEGACY_POOLING_KEYS.items()})
    write_json(output / "1_Pooling" / "config.json", pooling_config)
    if pooling.normalize:
        (output / "2_Normalize").mkdir(exist_ok=True)  # Normalize has no parameters: an empty folder
    return output
