"""Dead structure that dynamic int8 still sees.

In ORT's dynamic int8 the input of W_O (the merged heads) and of W2 (the FFN activation) is quantized at run
time by DynamicQuantizeLinear, whose scale comes from the min and max of the whole tensor (and 0). A dead
head or FFN dim whose output weights are zero adds nothing to the product, but its input column still
takes part in that range unless it is exactly 0: a head's context is its V bias when its V columns are
zero, a dim's activation is act(b1_j) when its W1 column is zero. Cutting such a column moves the scale, so
every live value is rounded differently (outputs moved by up to 6e-2 on the zoo's dynamic int8 graphs,
benchmarks/results/fuzz_surgery.md). Those heads / dims stay while the layer keeps any other: the graph
stays exact, just less small. Columns that are exactly 0 go (0 is always in the range), and so does a
whole block (its output projection, and with it the quantization, is gone). Exports of this project fold
dead structure and zero its biases (compress.core.sparsity), so none of theirs is kept; this concerns
masked checkpoints and graphs quantized elsewhere. Static QDQ scales are constants: nothing to keep there.
"""

from __future__ import annotations

import numpy as np

from compress.core.record import LayerKeep
from exporters.graph import Graph
from exporters.surgery.blocks import Layer, Projection, projection_weight
from exporters.surgery.rewrite import activation_of, v_columns


def dynamic_input(g: Graph, p: Projection) -> str | None:
    """The float tensor a MatMulInteger projection quantizes at run time (DynamicQuantizeLinear), else None."""
    if p.matmul.op_type != "MatMulInteger":
        return None
    dql = g.producer.get(p.matmul.input[0])
    return dql.input[0] if dql is not None and dql.op_type == "DynamicQuantizeLinear" else None


def _value_columns(g: Graph, layer: Layer) -> tuple[np.ndarray, np.ndarray | None]:
    """V's float weight columns and bias; fused (Q)Attention packs them after Q and K."""
    a = layer.attention
    w, b = v_columns(g, a)
    if a.fused is not None and a.fused.op_type == "QAttention":  # int8 values: 0 is the zero point
        zp_name = a.fused.input[7] if len(a.fused.input) > 7 and a.fused.input[7] else None
        zp = g.const(zp_name).astype(np.int32).reshape(-1) if zp_name else np.zeros(1, np.int32)
        width = a.num_heads * a.head_size
        zp = zp[2 * width :] if zp.size > 1 else zp
        w = w.astype(np.int32) - zp[None, :]
    return w, b


def keep_for_dynamic_range(g: Graph, layers: list[Layer], kept: list[LayerKeep]) -> tuple[list[LayerKeep], list[dict]]:
    """kept plus the dead heads / dims whose run-time-quantized input column is not exactly 0, in layers
    that keep some heads / dims. Returns (kept structure, per layer what was added back)."""
    out, held = [], []
    for layer, keep in zip(layers, kept):
        a, f = layer.attention, layer.ffn
        heads, dims = list(keep.heads), list(keep.ffn_dims)
        extra_heads, extra_dims = [], []
        if heads and dynamic_input(g, a.o) is not None:
            w, b = _value_columns(g, layer)
            d = a.head_size
            extra_heads = [
                h
                for h in range(a.num_heads)
                if h not in heads
                and (np.any(w[:, h * d : (h + 1) * d]) or (b is not None and np.any(b[h * d : (h + 1) * d])))
            ]
        src = dynamic_input(g, f.w2) if dims else None
        if src is not None:
            live = set(dims)
            w1 = projection_weight(g, f.w1)
            b1 = g.const(f.w1.add.input[f.w1.bias_index]) if f.w1.add is not None else np.zeros(f.width, np.float32)
            act = activation_of(g, f, np.asarray(b1, np.float32), dst=src)  # what a zero W1 column feeds W2
            extra_dims = [j for j in range(f.width) if j not in live and (np.any(w1[:, j]) or act[j] != 0)]
        out.append(LayerKeep(sorted(heads + extra_heads), sorted(dims + extra_dims)))
        held.append({"heads": extra_heads, "ffn_dims": extra_dims})
    return out, held
