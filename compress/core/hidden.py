"""The hidden dimension: one mask over the residual stream, shared by every layer.

A hidden dim is pruned by normalising every residual LayerNorm (the embeddings' and the two of each
layer) over the kept dims only and writing 0 on the others. Then the residual stream is 0 on pruned
dims everywhere, so the embedding-table columns, LayerNorm gamma/beta, the input columns of Q/K/V/W1,
the output rows of O/W2 and the input columns of the heads that read the stream (pooler, QA and token
heads, RoBERTa's classifier) can be cut out exactly: `slice_hidden` gives a model whose plain
nn.LayerNorm(k) computes what the masked one did.

That masked LayerNorm is the only change to the model's computation, so it is the only module
swapped in (`KeptDimsLayerNorm`, holding the original weight and bias Parameters, so state-dict names
and the optimizer are unchanged). A saved checkpoint stays a Hugging Face checkpoint with zeros on the
pruned dims, but plain transformers would normalise over all dims and predict differently: the kept
dims are recorded in compression.json (`hidden`) and every compress loader applies them
(compress.core.artifacts.load_pretrained).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from compress.core.errors import UnsupportedModelError
from compress.core.structure import encoder_layers, geometry, layer_linears, spec_for


class KeptDimsLayerNorm(nn.Module):
    """LayerNorm over the dims where mask() is 1, 0 elsewhere. `mask` is a callable (the pruner's
    scores during training) or a fixed 0/1 tensor (a loaded checkpoint)."""

    def __init__(self, norm: nn.LayerNorm, mask):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.eps = norm.eps
        self.normalized_shape = norm.normalized_shape
        if callable(mask):
            self._get_mask = mask  # a plain callable: not registered as a submodule
        else:
            self.register_buffer("fixed_mask", mask.detach().float().clone(), persistent=False)
            self._get_mask = lambda: self.fixed_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._get_mask().to(x.dtype)
        k = m.sum().clamp_min(1.0)
        mean = (x * m).sum(-1, keepdim=True) / k
        centred = (x - mean) * m
        var = centred.pow(2).sum(-1, keepdim=True) / k
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias * m


def _base_prefix(model) -> str:
    return "" if model.base_model is model else model.base_model_prefix + "."


def norm_paths(model) -> list[str]:
    """Full module paths of the residual LayerNorms, embeddings' first."""
    spec = spec_for(model.config)
    base = _base_prefix(model)
    paths = [base + spec.embedding_norm]
    for i in range(len(encoder_layers(model))):
        paths += [f"{base}{spec.layers}.{i}.{n}" for n in spec.layer_norms]
    return paths


def reader_paths(model) -> list[str]:
    """Linear modules outside the encoder whose input is the residual stream. A BERT sequence
    classifier reads the pooler's output, which keeps its width, so only the pooler is cut there."""
    base = _base_prefix(model)
    names = []
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None:
        names.append(base + "pooler.dense")
    arch = type(model).__name__
    if model.base_model is model:
        return names
    if arch.endswith("ForQuestionAnswering"):
        return names + ["qa_outputs"]
    if arch.endswith("ForTokenClassification"):
        return names + ["classifier"]
    if arch.endswith("ForSequenceClassification"):
        own = [n for n in ("pre_classifier", "classifier.dense") if _has(model, n)]
        if own or pooler is not None:
            return names + own
    raise UnsupportedModelError(
        f"hidden-dimension pruning does not know which modules of {arch} read the encoder output; "
        "it supports sequence classification, question answering, token classification and base encoders"
    )


def _has(model, path: str) -> bool:
    try:
        return isinstance(model.get_submodule(path), nn.Linear)
    except AttributeError:
        return False


def _set(model, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def check_supported(model) -> None:
    """Raise UnsupportedModelError unless the model's residual stream can be masked and cut."""
    for path in norm_paths(model):
        if not isinstance(model.get_submodule(path), (nn.LayerNorm, KeptDimsLayerNorm)):
            raise UnsupportedModelError(f"{path} is not a LayerNorm; hidden-dimension pruning needs one there")
    reader_paths(model)


def attach(model, mask) -> None:
    """Swap every residual LayerNorm for a KeptDimsLayerNorm over `mask` (callable or 0/1 tensor)."""
    check_supported(model)
    for path in norm_paths(model):
        norm = model.get_submodule(path)
        _set(model, path, KeptDimsLayerNorm(norm, mask))


def kept_dims(model) -> list[int] | None:
    """The kept hidden dims of a model with masked LayerNorms, else None."""
    norm = next((m for m in model.modules() if isinstance(m, KeptDimsLayerNorm)), None)
    if norm is None:
        return None
    with torch.no_grad():
        return torch.nonzero(norm._get_mask().detach() > 0.5).flatten().tolist()


def fix(model, kept: list[int]) -> None:
    """Hold the hidden mask at `kept` (after training, or when loading a checkpoint)."""
    size = geometry(model.config).hidden_size
    mask = torch.zeros(size)
    mask[torch.as_tensor(kept, dtype=torch.long)] = 1
    check_supported(model)
    for path in norm_paths(model):
        norm = model.get_submodule(path)
        _set(model, path, KeptDimsLayerNorm(norm, mask))


def record(kept: list[int], size: int) -> dict:
    """compression.json's `hidden` section."""
    return {"size": size, "kept_count": len(kept), "kept": sorted(int(i) for i in kept)}


def apply_record(model, info: dict | None) -> None:
    """Apply compression.json's `hidden` section, when there is one, to a freshly loaded model."""
    section = (info or {}).get("hidden")
    if section and section["kept_count"] < section["size"]:
        fix(model, section["kept"])


def _tables(model) -> list[nn.Embedding]:
    spec = spec_for(model.config)
    base = _base_prefix(model)
    return [model.get_submodule(base + p) for p in spec.embedding_tables if _has_module(model, base + p)]


@torch.no_grad()
def zero_pruned(model, kept: list[int]) -> None:
    """Write exact zeros wherever a pruned dim lives, so the checkpoint shows its structure (and ONNX
    surgery of other tools' exports can find it). The masked model's outputs do not change."""
    size = geometry(model.config).hidden_size
    dead = torch.ones(size, dtype=torch.bool)
    dead[torch.as_tensor(kept, dtype=torch.long)] = False
    for table in _tables(model):
        table.weight[:, dead] = 0
    for path in norm_paths(model):
        norm = model.get_submodule(path)
        norm.weight[dead] = 0
        norm.bias[dead] = 0
    for lin in layer_linears(model):
        for role in ("query", "key", "value", "ffn_in"):
            lin[role].weight[:, dead] = 0
        for role in ("attn_out", "ffn_out"):
            lin[role].weight[dead] = 0
            if lin[role].bias is not None:
                lin[role].bias[dead] = 0
    for path in reader_paths(model):
        model.get_submodule(path).weight[:, dead] = 0


def _narrow(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    from transformers.pytorch_utils import prune_linear_layer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
        return prune_linear_layer(linear, index, dim=dim).to(dtype=linear.weight.dtype)


@torch.no_grad()
def slice_hidden(model, kept: list[int]) -> nn.Module:
    """Cut the pruned hidden dims out of `model` in place (for inference and export). The result
    computes what the masked model computed; like compact_model's result it cannot be saved as a
    plain checkpoint (its config still says the full hidden size). Returns the model."""
    spec = spec_for(model.config)
    index = torch.as_tensor(sorted(kept), dtype=torch.long)
    base = _base_prefix(model)
    for path in spec.embedding_tables:
        if not _has_module(model, base + path):  # DistilBERT has no token-type table
            continue
        table = model.get_submodule(base + path)
        new = nn.Embedding(table.num_embeddings, len(index), padding_idx=table.padding_idx)
        new.weight.copy_(table.weight[:, index])
        _set(model, base + path, new.to(table.weight.dtype))
    for path in norm_paths(model):
        norm = model.get_submodule(path)
        new = nn.LayerNorm(len(index), eps=norm.eps)
        new.weight.copy_(norm.weight[index])
        new.bias.copy_(norm.bias[index])
        _set(model, path, new.to(norm.weight.dtype))
    for layer, lin in zip(encoder_layers(model), layer_linears(model)):
        for role in ("query", "key", "value", "ffn_in"):
            _set(layer, spec.path(role), _narrow(lin[role], index, dim=1))
        for role in ("attn_out", "ffn_out"):
            _set(layer, spec.path(role), _narrow(lin[role], index, dim=0))
    for path in reader_paths(model):
        _set(model, path, _narrow(model.get_submodule(path), index, dim=1))
    model.compress_hidden = index.tolist()
    return model


def _has_module(model, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
