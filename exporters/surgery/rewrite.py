"""Rewriting passes on matched layers. Each pass takes the graph wrapper and the matched layers,
edits them (committed later in one batch by the caller) and returns per layer what it changed.

  heads — W_Q/W_K/W_V columns and biases, W_O rows (ONNX MatMul weights are [in, out]); every Reshape
      on the head path gets a constant shape [0, 0, heads, head_size] / [0, 0, heads*head_size] (this
      also replaces shapes the exporter computed with Shape/Gather/Concat, and lets ORT's fusion read the
      per-layer head count); Split sizes of packed QKV.
  FFN dims — W1 columns + b1, per-dim constants inside the activation, W2 rows.
  A layer left with no head (no FFN dim) loses the whole block: its residual Add receives the output
  bias instead, which is exactly what the empty block computed.
Initializers are never edited in place: exporters share equal tensors between layers (copy on write).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from compress.core.errors import GraphPatternError
from exporters.graph import Graph
from exporters.surgery.match import AttentionBlock, FfnBlock, Layer, Projection, find_layers, split_sizes
from exporters.surgery.validate import finalize


def _replace_const(g: Graph, node: onnx.NodeProto, i: int, array: np.ndarray, hint: str) -> None:
    """Copy-on-write: a new initializer for this use only (the old one may be shared)."""
    old = g.const(node.input[i])
    g.set_input(node, i, g.add_initializer(array.astype(old.dtype, copy=False), hint))


def _slice_projection_out(g: Graph, p: Projection, cols: np.ndarray, hint: str) -> None:
    w = g.const(p.matmul.input[1])
    _replace_const(g, p.matmul, 1, w[:, cols], f"{hint}.weight")
    if p.add is not None:
        _replace_const(g, p.add, p.bias_index, g.const(p.add.input[p.bias_index])[cols], f"{hint}.bias")


def _shape_const(g: Graph, cache: dict, dims: tuple[int, ...]) -> str:
    if dims not in cache:
        cache[dims] = g.add_initializer(np.array(dims, dtype=np.int64), "shrunk_shape_" + "_".join(map(str, dims)))
    return cache[dims]


def _set_reshape(g: Graph, reshape: onnx.NodeProto, shape_name: str) -> None:
    """Constant target shape with 0 = copy the input's dim (batch, sequence): allowzero must be 0."""
    g.set_input(reshape, 1, shape_name)
    for attr in reshape.attribute:
        if attr.name == "allowzero":
            attr.i = 0


def _bypass(g: Graph, residual: onnx.NodeProto, block_out: str, bias: Projection, hint: str) -> None:
    """Drop a whole block: the residual Add now adds the block's output bias (what an empty block computes)."""
    w = g.const(bias.matmul.input[1])
    if bias.add is not None:
        b = g.const(bias.add.input[bias.bias_index])
    else:
        b = np.zeros(w.shape[1], dtype=w.dtype)
    name = g.add_initializer(b.astype(w.dtype, copy=False), hint)
    for i, inp in enumerate(residual.input):
        if inp == block_out:
            g.set_input(residual, i, name)


def _shrink_attention(g: Graph, i: int, a: AttentionBlock, heads: list[int], shapes: dict) -> None:
    d = a.head_size
    if not heads:
        _bypass(g, a.residual, a.o.output, a.o, f"layer{i}.attention.output.bias")
        return
    if heads != list(range(a.num_heads)):
        cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in heads])
        if any(p.split is not None for p in (a.q, a.k, a.v)):
            _shrink_packed_qkv(g, i, a, cols)
        else:
            done: set[int] = set()  # dynamo's CSE can merge identical (e.g. all-zero) Q/K/V into one node
            for name, p in (("query", a.q), ("key", a.k), ("value", a.v)):
                if id(p.matmul) not in done:
                    _slice_projection_out(g, p, cols, f"layer{i}.attention.{name}")
                    done.add(id(p.matmul))
        wo = g.const(a.o.matmul.input[1])
        _replace_const(g, a.o.matmul, 1, wo[cols, :], f"layer{i}.attention.output.weight")
    # Constant head shapes even when nothing was cut: ORT's attention fusion reads the per-layer head
    # count from them (it cannot from the exporter's [B, L, -1, d] computed with Shape/Concat).
    n = len(heads)
    for r in a.split_reshapes:
        _set_reshape(g, r, _shape_const(g, shapes, (0, 0, n, d)))
    _set_reshape(g, a.merge_reshape, _shape_const(g, shapes, (0, 0, n * d)))


def _shrink_packed_qkv(g: Graph, i: int, a: AttentionBlock, cols: np.ndarray) -> None:
    """One MatMul [H, 3*w] + Split into Q, K, V: slice each segment, rewrite the split sizes."""
    if not (a.q.matmul is a.k.matmul is a.v.matmul) or not (a.q.split is a.k.split is a.v.split):
        raise GraphPatternError(f"layer {i}: Q/K/V are partly packed; layout not recognised")
    w = g.const(a.q.matmul.input[1])
    sizes = split_sizes(g, a.q.split, w.shape[1])
    offsets = np.cumsum([0] + sizes[:-1])
    order = [a.q.split_output, a.k.split_output, a.v.split_output]
    if sorted(order) != list(range(len(sizes))) or len(sizes) != 3:
        raise GraphPatternError(f"layer {i}: packed QKV Split does not have exactly the Q, K, V outputs")
    all_cols = np.concatenate([offsets[j] + cols for j in range(3)])
    _slice_projection_out(g, a.q, all_cols, f"layer{i}.attention.qkv")
    new_sizes = np.array([len(cols)] * 3, dtype=np.int64)
    split = a.q.split
    if len(split.input) > 1 and split.input[1]:
        g.set_input(split, 1, g.add_initializer(new_sizes, f"layer{i}.attention.qkv.split"))
    for attr in split.attribute:
        if attr.name == "split":
            del attr.ints[:]
            attr.ints.extend(new_sizes.tolist())


def _shrink_ffn(g: Graph, i: int, f: FfnBlock, dims: list[int]) -> None:
    if not dims:
        _bypass(g, f.residual, f.w2.output, f.w2, f"layer{i}.ffn.output.bias")
        return
    if dims == list(range(f.width)):
        return
    idx = np.asarray(dims, dtype=np.int64)
    _slice_projection_out(g, f.w1, idx, f"layer{i}.ffn.in")
    for node, j in f.per_dim_consts:
        c = g.const(node.input[j])
        _replace_const(g, node, j, c.reshape(-1)[idx].reshape(c.shape[:-1] + (len(idx),)), f"layer{i}.ffn.act.const")
    w2 = g.const(f.w2.matmul.input[1])
    _replace_const(g, f.w2.matmul, 1, w2[idx, :], f"layer{i}.ffn.out.weight")


def layer_params(layer: Layer, hidden: int, attn_width: int, ffn_width: int) -> int:
    """Weights + biases of one layer's Q/K/V/O and FFN projections at the given widths. The output
    biases of a removed block stay (they are added to the residual), so they always count."""
    a, f = layer.attention, layer.ffn
    total = 4 * hidden * attn_width + 2 * hidden * ffn_width
    if attn_width:
        total += sum(attn_width for p in (a.q, a.k, a.v) if p.add is not None)
    if ffn_width and f.w1.add is not None:
        total += ffn_width
    total += hidden * ((a.o.add is not None) + (f.w2.add is not None))
    return total

def remove_heads(g: Graph, layers: list[Layer], heads_kept: list[list[int]]) -> list[dict]:
    """Pass: keep only `heads_kept[i]` (sorted head indices) in layer i; returns what changed per layer."""
    shapes: dict = {}
    changes = []
    for i, (layer, heads) in enumerate(zip(layers, heads_kept)):
        a = layer.attention
        _shrink_attention(g, i, a, heads, shapes)
        changes.append({"heads_before": a.num_heads, "heads_after": len(heads), "heads_kept": heads,
                        "attention_removed": not heads})
    return changes


def remove_ffn_dims(g: Graph, layers: list[Layer], dims_kept: list[list[int]]) -> list[dict]:
    """Pass: keep only `dims_kept[i]` (sorted FFN dims) in layer i; returns what changed per layer."""
    changes = []
    for i, (layer, dims) in enumerate(zip(layers, dims_kept)):
        f = layer.ffn
        _shrink_ffn(g, i, f, dims)
        changes.append({"ffn_before": f.width, "ffn_after": len(dims), "ffn_removed": not dims})
    return changes


def normalize_heads(model: onnx.ModelProto, head_size: int | None = None) -> onnx.ModelProto:
    """Same graph, but every head Reshape gets a constant [0, 0, heads, head_size] shape. Nothing is
    removed; this is what lets ORT's Attention fusion read the head count of a dense export too."""
    out = copy.deepcopy(model)
    g = Graph(out)
    layers, _ = find_layers(g, head_size)
    remove_heads(g, layers, [list(range(layer.attention.num_heads)) for layer in layers])
    g.commit()
    g.prune_dead()
    finalize(out)
    return out
