"""Declarative description of the encoder families we support.

One table entry per Hugging Face `model_type`: where the layers are and which Linear modules are
the attention Q/K/V/O projections and the FFN in/out projections. Everything else (pruning, baking,
compaction, ONNX surgery) reads these names, so a new BERT-like family is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from compress.core.errors import UnsupportedModelError

# Role names used everywhere (recipes, compression.json, reports).
ATTN_ROLES = ("query", "key", "value", "attn_out")
FFN_ROLES = ("ffn_in", "ffn_out")
ROLES = ATTN_ROLES + FFN_ROLES


@dataclass(frozen=True)
class EncoderSpec:
    layers: str  # path from the base model (model.base_model) to the ModuleList of layers
    query: str  # paths from one layer to its nn.Linear modules
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str
    # The residual stream (what hidden-dimension pruning cuts): the embedding tables and their LayerNorm
    # (paths from the base model), and the LayerNorms of one layer that write it.
    embedding_tables: tuple[str, ...] = (
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "embeddings.token_type_embeddings",
    )
    embedding_norm: str = "embeddings.LayerNorm"
    layer_norms: tuple[str, ...] = ("attention.output.LayerNorm", "output.LayerNorm")
    num_heads_attr: str = "num_attention_heads"  # config attribute holding the head count
    hidden_attr: str = "hidden_size"
    intermediate_attr: str = "intermediate_size"

    def path(self, role: str) -> str:
        return getattr(self, role)


_BERT_LIKE = EncoderSpec(
    layers="encoder.layer",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_out="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
)

SPECS: dict[str, EncoderSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": EncoderSpec(
        layers="transformer.layer",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        embedding_tables=("embeddings.word_embeddings", "embeddings.position_embeddings"),
        layer_norms=("sa_layer_norm", "output_layer_norm"),
        num_heads_attr="n_heads",
        hidden_attr="dim",
        intermediate_attr="hidden_dim",
    ),
}


def spec_for(config) -> EncoderSpec:
    model_type = getattr(config, "model_type", None)
    if model_type not in SPECS:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported types: {', '.join(sorted(SPECS))}"
        )
    return SPECS[model_type]


@dataclass(frozen=True)
class Geometry:
    num_layers: int
    num_heads: int
    hidden_size: int
    intermediate_size: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


def geometry(config) -> Geometry:
    spec = spec_for(config)
    return Geometry(
        num_layers=config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers,
        num_heads=getattr(config, spec.num_heads_attr),
        hidden_size=getattr(config, spec.hidden_attr),
        intermediate_size=getattr(config, spec.intermediate_attr),
    )


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    spec = spec_for(model.config)
    return model.base_model.get_submodule(spec.layers)


def layer_linears(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """For each encoder layer, {role: nn.Linear}."""
    spec = spec_for(model.config)
    return [{role: layer.get_submodule(spec.path(role)) for role in ROLES} for layer in encoder_layers(model)]


def encoder_linear_names(model: nn.Module) -> dict[str, tuple[int, str]]:
    """Fully-qualified module name -> (layer index, role), for every encoder linear."""
    out = {}
    by_id = {}
    for i, roles in enumerate(layer_linears(model)):
        for role, mod in roles.items():
            by_id[id(mod)] = (i, role)
    for name, mod in model.named_modules():
        if id(mod) in by_id:
            out[name] = by_id[id(mod)]
    return out
