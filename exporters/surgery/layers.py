"""Finding the encoder layers of an ONNX graph: every attention block (exporters.surgery.attention) and
FFN block (exporters.surgery.ffn), paired in graph order, the head size read from the graph and checked,
and which heads / FFN dims are dead (all-zero output weights). Nothing here changes the graph.

No node names are trusted: they differ between exporters.
"""

from __future__ import annotations

import numpy as np
import onnx

from compress.core.errors import GraphPatternError
from compress.core.record import LayerKeep
from exporters.graph import Graph, node_desc
from exporters.surgery.attention import FUSED_ATTENTION, match_attention, match_fused_attention
from exporters.surgery.blocks import AttentionBlock, Layer, Projection, projection_weight
from exporters.surgery.ffn import match_ffn


def find_layers(g: Graph, head_size: int | None) -> tuple[list[Layer], int]:
    """All encoder layers in graph order, and the head size used. Raises GraphPatternError naming what
    is missing rather than returning a partial match."""
    qlinear = sorted(
        {
            n.op_type
            for n in g.graph.node
            if n.op_type.startswith("QLinear") or n.op_type in ("QGemm", "MatMulIntegerToFloat")
        }
    )
    if qlinear:
        raise GraphPatternError(
            f"static QOperator int8 ops ({', '.join(qlinear)}) are not rewritten: shrink the fp32 graph, then quantize "
            "(dynamic, or static in QDQ format, both of which shrink)"
        )
    fused = [match_fused_attention(g, n) for n in g.graph.node if n.op_type in FUSED_ATTENTION]
    attention = fused + [b for b in (match_attention(g, s) for s in g.nodes("Softmax")) if b is not None]
    ffns = [b for b in (match_ffn(g, m) for m in g.nodes("MatMul") + g.nodes("MatMulInteger")) if b is not None]
    if not attention:
        raise GraphPatternError("no attention block found (no Softmax fed by MatMul(Q, K^T) from per-head Reshapes)")
    if not ffns:
        raise GraphPatternError("no FFN block found (no MatMul -> element-wise activation -> MatMul -> residual Add)")
    if len(attention) != len(ffns):
        raise GraphPatternError(
            f"found {len(attention)} attention blocks but {len(ffns)} FFN blocks; layers whose attention or "
            "FFN was already removed cannot be matched (shrink the original export instead)"
        )
    pos = g.index()
    attention.sort(key=lambda b: pos[id(b.softmax)])
    ffns.sort(key=lambda b: pos[id(b.w1.matmul)])
    for i, (a, f) in enumerate(zip(attention, ffns)):
        nxt = attention[i + 1] if i + 1 < len(attention) else None
        if not pos[id(a.softmax)] < pos[id(f.w1.matmul)] or (nxt and not pos[id(f.w1.matmul)] < pos[id(nxt.softmax)]):
            raise GraphPatternError(
                f"layer {i}: attention and FFN blocks are not interleaved as in an encoder (a graph whose blocks "
                "were already removed by an earlier shrink cannot be matched; shrink the original export)"
            )
    unfused = [a for a in attention if a.fused is None]
    fused_sizes = {a.head_size for a in fused}
    if unfused or not fused:
        head_size = _head_size(g, unfused, head_size)
    else:
        if len(fused_sizes) != 1 or (head_size is not None and fused_sizes != {head_size}):
            raise GraphPatternError(
                f"fused Attention nodes imply head sizes {sorted(fused_sizes)}"
                + (f", not {head_size}" if head_size else "")
            )
        head_size = fused_sizes.pop()
    if fused_sizes - {head_size}:
        raise GraphPatternError(
            f"fused Attention nodes imply head sizes {sorted(fused_sizes)}, the head reshapes {head_size}"
        )
    for i, a in enumerate(attention):
        if a.fused is not None:
            if g.const(a.o.matmul.input[1]).shape[0] != a.num_heads * head_size:
                raise GraphPatternError(
                    f"layer {i}: output projection rows differ from the attention width {a.num_heads * head_size}"
                )
            continue
        width = _proj_width(g, a.q)
        if width % head_size:
            raise GraphPatternError(f"layer {i}: Q width {width} is not a multiple of head size {head_size}")
        a.num_heads, a.head_size = width // head_size, head_size
        for name, p in (("K", a.k), ("V", a.v)):
            if _proj_width(g, p) != width:
                raise GraphPatternError(f"layer {i}: {name} width {_proj_width(g, p)} differs from Q width {width}")
        if g.const(a.o.matmul.input[1]).shape[0] != width:
            raise GraphPatternError(f"layer {i}: output projection rows differ from the Q width {width}")
    return [Layer(a, f) for a, f in zip(attention, ffns)], head_size


def _proj_width(g: Graph, p: Projection) -> int:
    w = g.const(p.matmul.input[1])
    if p.split is None:
        return w.shape[1]
    sizes = split_sizes(g, p.split, w.shape[1])
    return sizes[p.split_output]


def split_sizes(g: Graph, split: onnx.NodeProto, total: int) -> list[int]:
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    if axis not in (-1, 2):
        raise GraphPatternError(f"{node_desc(split)} does not split the last axis; packed QKV layout not recognised")
    if len(split.input) > 1 and split.input[1]:
        sizes = g.const(split.input[1])
        if sizes is None:
            raise GraphPatternError(f"{node_desc(split)} has split sizes computed at run time")
        return [int(s) for s in sizes]
    attr = next((a for a in split.attribute if a.name == "split"), None)
    if attr is not None:
        return list(attr.ints)
    n = len(split.output)
    return [total // n] * n


def _head_size(g: Graph, blocks: list[AttentionBlock], given: int | None) -> int:
    """Head size from the split Reshapes' shape constants (last element), checked against `given`."""
    found = set()
    for b in blocks:
        for r in b.split_reshapes:
            last = _last_shape_element(g, r.input[1])
            if last is not None and last > 0:
                found.add(last)
    if given is not None:
        if found and found != {given}:
            raise GraphPatternError(f"head size {given} was given but the graph's head reshapes use {sorted(found)}")
        return given
    if len(found) != 1:
        raise GraphPatternError(
            "could not read the head size from the graph's head reshapes; pass it (config.json next to the "
            "ONNX file, compression.json, or --head-size)"
        )
    return found.pop()


def _last_shape_element(g: Graph, name: str) -> int | None:
    v = g.const(name)
    if v is not None:
        return int(v.reshape(-1)[-1]) if v.size else None
    node = g.producer.get(name)
    if node is not None and node.op_type == "Concat":
        v = g.const(node.input[-1])
        if v is not None and v.size:
            return int(v.reshape(-1)[-1])
    return None


def detect_kept(g: Graph, layers: list[Layer]) -> list[LayerKeep]:
    """Per layer: heads whose W_O rows are not all zero, FFN dims whose W2 row is not all zero."""
    kept = []
    for layer in layers:
        a, f = layer.attention, layer.ffn
        wo = projection_weight(g, a.o)
        d = a.head_size
        heads = [h for h in range(a.num_heads) if np.any(wo[h * d : (h + 1) * d])]
        w2 = projection_weight(g, f.w2)
        dims = np.flatnonzero(np.any(w2 != 0, axis=1)).tolist()
        kept.append(LayerKeep(heads, dims))
    return kept
