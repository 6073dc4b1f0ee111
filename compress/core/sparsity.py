"""Read the pruned structure out of dense-shaped weights: kept heads / FFN dims, sparsity, params.

Works on any supported model whose masks have been baked in as zeros (compress.pruning.masks.bake),
so it is also the fallback when a checkpoint has no compression.json.
"""

from __future__ import annotations

import torch

from compress.core.hidden import kept_dims
from compress.core.structure import Geometry, geometry, layer_linears


@torch.no_grad()
def fold_dead_structure(model) -> None:
    """Make every removable head/FFN dim canonical: its output-side weights are exactly zero.

    A head whose V rows are all zero outputs the constant b_v (softmax rows sum to 1), so its
    contribution is W_O[:, head] @ b_v[head]: fold it into b_O and zero the head entirely. Likewise an
    FFN dim whose W1 row is zero outputs act(b1[i]) everywhere: fold W2[:, i] * act(b1[i]) into b2.
    Exact (up to float rounding), and it lets block methods that only zero V or W1 still remove
    the structure at export time.
    """
    geo = geometry(model.config)
    d = geo.head_size
    act = _ffn_activation(model)
    for lin in layer_linears(model):
        q, k, v, o = lin["query"], lin["key"], lin["value"], lin["attn_out"]
        for h in range(geo.num_heads):
            sl = slice(h * d, (h + 1) * d)
            if not v.weight[sl].any():
                if v.bias is not None and o.bias is not None:
                    o.bias += o.weight[:, sl] @ v.bias[sl]
                o.weight[:, sl] = 0
            if not o.weight[:, sl].any():
                for m in (q, k, v):
                    m.weight[sl] = 0
                    if m.bias is not None:
                        m.bias[sl] = 0
        w1, w2 = lin["ffn_in"], lin["ffn_out"]
        dead_in = ~w1.weight.any(dim=1)
        if dead_in.any() and act is not None:
            b1 = w1.bias if w1.bias is not None else torch.zeros(w1.out_features)
            if w2.bias is not None:
                w2.bias += w2.weight[:, dead_in] @ act(b1[dead_in])
            w2.weight[:, dead_in] = 0
        dead = ~w2.weight.any(dim=0)
        w1.weight[dead] = 0
        if w1.bias is not None:
            w1.bias[dead] = 0


def _ffn_activation(model):
    from transformers.activations import get_activation

    cfg = model.config
    name = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation", None)
    try:
        return get_activation(name) if isinstance(name, str) else None
    except KeyError:
        return None


@torch.no_grad()
def kept_structure(model) -> list[dict]:
    """Per layer: indices of heads whose W_O columns are non-zero and FFN dims whose W2 column is."""
    geo = geometry(model.config)
    d = geo.head_size
    out = []
    for lin in layer_linears(model):
        ow = lin["attn_out"].weight
        heads = [h for h in range(geo.num_heads) if ow[:, h * d : (h + 1) * d].any()]
        dims = torch.nonzero(lin["ffn_out"].weight.any(dim=0)).flatten().tolist()
        out.append({"heads_kept": heads, "ffn_dims_kept": dims})
    return out


@torch.no_grad()
def sparsity_report(model) -> dict:
    """Per-matrix fraction of zeros, overall encoder-linear sparsity and parameter counts."""
    geo = geometry(model.config)
    per_matrix = {}
    total = nonzero = 0
    for i, lin in enumerate(layer_linears(model)):
        for role, m in lin.items():
            n = m.weight.numel()
            nz = int(torch.count_nonzero(m.weight))
            per_matrix[f"layer.{i}.{role}"] = round(1 - nz / n, 6)
            total += n
            nonzero += nz
    kept = kept_structure(model)
    return {
        "sparsity": {"per_matrix": per_matrix, "encoder_linear": round(1 - nonzero / max(total, 1), 6)},
        "params": {
            "encoder_linear_dense": total,
            "encoder_linear_nonzero": nonzero,
            "encoder_linear_after_removal": params_after_removal(geo, kept, _hidden_width(model)),
        },
        "layers": kept,
    }


def _hidden_width(model) -> int | None:
    kept = kept_dims(model)
    return None if kept is None else len(kept)


def params_after_removal(geo: Geometry, kept: list[dict], hidden_kept: int | None = None) -> int:
    """Weights left in the encoder linears once dead heads and FFN dims (and pruned hidden dims, when
    `hidden_kept` says how many stay) are physically removed."""
    h, d = hidden_kept or geo.hidden_size, geo.head_size
    return sum(4 * h * d * len(k["heads_kept"]) + 2 * h * len(k["ffn_dims_kept"]) for k in kept)


def flops_per_token(geo: Geometry, kept: list[dict] | None, seq_len: int) -> int:
    """Multiply-accumulates per token of the encoder layers (the FLOP model used by benchmarks).

    Linear: 4*H*d per head (Q,K,V,O) + 2*H per FFN dim; attention: 2*L*d per head (QK^T and AV).
    LayerNorm, softmax, GELU and embeddings are ignored (a few % at these sizes).
    """
    if kept is None:
        kept = [{"heads_kept": range(geo.num_heads), "ffn_dims_kept": range(geo.intermediate_size)}] * geo.num_layers
    h, d = geo.hidden_size, geo.head_size
    total = 0
    for k in kept:
        nh, nf = len(k["heads_kept"]), len(k["ffn_dims_kept"])
        total += nh * (4 * h * d + 2 * seq_len * d) + nf * 2 * h
    return total
