"""PyTorch compaction: physically remove pruned heads and FFN dims from a loaded Hugging Face model.

transformers 5 dropped `prune_heads`; this is its replacement for every family in structure.SPECS,
including what prune_heads never handled: a different head count per layer, a layer with no head
left, a layer with no FFN dim left.

What matters in the transformers-5 attention code (BertSelfAttention, RobertaSelfAttention,
DistilBertSelfAttention): forward reshapes with `view(*input_shape, -1, attention_head_size)`, so
once Q/K/V are narrower the head count follows by itself; `attention_head_size` and `scaling` must
stay. `num_attention_heads` / `n_heads` and `all_head_size` are only read in __init__, but we update
them so the module describes itself truthfully. A zero-head layer cannot go through that reshape
(-1 is ambiguous for an empty tensor), so its self-attention is replaced by `_NoHeads`, which returns
the empty context; the O projection, now Linear(0, H), then yields its bias — exactly what the
masked model computed. Zero-dim FFNs need nothing special: Linear(H, 0) -> act -> Linear(0, H) = bias.

The result is for inference and export. It cannot be saved with save_pretrained and loaded back as a
vanilla checkpoint (Hugging Face configs have one head count for all layers); the masked checkpoint
plus compression.json stays the portable artifact.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from compress.core import hidden
from compress.core.artifacts import load_pretrained, read_compression_json
from compress.core.errors import ArtifactError
from compress.core.sparsity import fold_dead_structure, kept_structure
from compress.core.structure import ROLES, encoder_layers, geometry, layer_linears, spec_for

HEAD_COUNT_ATTRS = ("num_attention_heads", "n_heads", "num_heads")


class _NoHeads(nn.Module):
    """Stands in for a self-attention module whose heads were all pruned: an empty context
    (…, 0), passed through the module's own output projection when that lives inside it (DistilBERT)."""

    def __init__(self, out_proj: nn.Linear | None = None, out_name: str | None = None):
        super().__init__()
        self.out_name = out_name
        if out_proj is not None:
            self.add_module(out_name, out_proj)

    def forward(self, hidden_states, *args, **kwargs):
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.out_name is not None:
            context = getattr(self, self.out_name)(context)
        return context, None


def _narrow(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """Keep `index` along the output (dim 0) or input (dim 1) features; zero-size results are fine."""
    from transformers.pytorch_utils import prune_linear_layer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
        new = prune_linear_layer(linear, index, dim=dim)
    return new.to(dtype=linear.weight.dtype)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _check_removable(model, kept: list[dict]) -> None:
    """Only structures whose output weights are zero may go; otherwise the json and weights disagree."""
    live = kept_structure(model)
    if len(kept) != len(live):
        raise ArtifactError(f"compression.json describes {len(kept)} layers, the model has {len(live)}")
    for i, (k, actual) in enumerate(zip(kept, live)):
        lost_heads = sorted(set(actual["heads_kept"]) - set(k["heads_kept"]))
        lost_dims = sorted(set(actual["ffn_dims_kept"]) - set(k["ffn_dims_kept"]))
        if lost_heads or lost_dims:
            raise ArtifactError(
                f"layer {i}: compression.json prunes heads {lost_heads} / {len(lost_dims)} FFN dims whose weights "
                "are not zero in the checkpoint; the json does not belong to these weights"
            )


@torch.no_grad()
def compact_model(model: nn.Module, kept: list[dict] | None = None) -> nn.Module:
    """Shrink `model` in place to the heads / FFN dims in `kept` (default: those with non-zero output
    weights after fold_dead_structure). Returns the model, with `model.compress_layers = kept`."""
    spec = spec_for(model.config)
    geo = geometry(model.config)
    d = geo.head_size
    kept_hidden = hidden.kept_dims(model)
    if kept_hidden is not None:
        hidden.slice_hidden(model, kept_hidden)
    fold_dead_structure(model)  # exact; makes V-only / W1-only dead structure removable too
    if kept is None:
        kept = kept_structure(model)
    else:
        _check_removable(model, kept)
    self_path = spec.query.rpartition(".")[0]  # the module holding Q/K/V: "attention.self" / "attention"
    for layer, lin, k in zip(encoder_layers(model), layer_linears(model), kept):
        heads = sorted(int(h) for h in k["heads_kept"])
        if heads != list(range(geo.num_heads)):
            index = torch.tensor([h * d + j for h in heads for j in range(d)], dtype=torch.long)
            for role in ("query", "key", "value"):
                _set(layer, spec.path(role), _narrow(lin[role], index, dim=0))
            _set(layer, spec.attn_out, _narrow(lin["attn_out"], index, dim=1))
            attn = layer.get_submodule(self_path)
            for attr in HEAD_COUNT_ATTRS:
                if hasattr(attn, attr):
                    setattr(attn, attr, len(heads))
            if hasattr(attn, "all_head_size"):
                attn.all_head_size = len(heads) * d
            if not heads:
                inner_out = spec.attn_out.startswith(self_path + ".")
                out_name = spec.attn_out[len(self_path) + 1 :] if inner_out else None
                out = layer.get_submodule(spec.attn_out) if inner_out else None
                _set(layer, self_path, _NoHeads(out, out_name))
        dims = sorted(int(j) for j in k["ffn_dims_kept"])
        if dims != list(range(geo.intermediate_size)):
            index = torch.tensor(dims, dtype=torch.long)
            _set(layer, spec.ffn_in, _narrow(lin["ffn_in"], index, dim=0))
            _set(layer, spec.ffn_out, _narrow(lin["ffn_out"], index, dim=1))
    model.compress_layers = [
        {"heads_kept": sorted(k["heads_kept"]), "ffn_dims_kept": sorted(k["ffn_dims_kept"])} for k in kept
    ]
    return model


def load_compact(checkpoint_dir: str | Path, model_class=None, **from_pretrained_kwargs) -> nn.Module:
    """Load a (masked) checkpoint with its saved architecture and compact it. The kept structure comes
    from compression.json when present (checksums verified), else from the zero weights."""
    import transformers

    checkpoint_dir = Path(checkpoint_dir)
    structure = read_compression_json(checkpoint_dir, verify=True)
    if model_class is None:
        config = transformers.AutoConfig.from_pretrained(str(checkpoint_dir))
        archs = getattr(config, "architectures", None) or []
        model_class = next(
            (getattr(transformers, a) for a in archs if hasattr(transformers, a)), transformers.AutoModel
        )
    model = load_pretrained(model_class, checkpoint_dir, **from_pretrained_kwargs)  # applies a pruned hidden dim
    model.eval()
    return compact_model(model, structure.get("layers") if structure else None)


def linear_params(model: nn.Module) -> int:
    """Weights + biases of the encoder's Q/K/V/O/FFN linears (to report what compaction removed).
    Works on dense and compacted models (a headless layer has no Q/K/V modules any more)."""
    spec = spec_for(model.config)
    total = 0
    for layer in encoder_layers(model):
        for role in ROLES:
            try:
                module = layer.get_submodule(spec.path(role))
            except AttributeError:
                continue
            total += sum(p.numel() for p in module.parameters())
    return total
