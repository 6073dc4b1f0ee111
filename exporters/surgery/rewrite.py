"""Rewriting passes on matched layers. Each pass takes the graph wrapper and the matched layers,
edits them (committed later in one batch by the caller) and returns per layer what it changed.

  heads — W_Q/W_K/W_V columns and biases, W_O rows (ONNX MatMul weights are [in, out]); every Reshape
      on the head path gets a constant shape [0, 0, heads, head_size] / [0, 0, heads*head_size] (this
      also replaces shapes the exporter computed with Shape/Gather/Concat, and lets ORT's fusion read the
      per-layer head count); Split sizes of packed QKV; for fused (Q)Attention the packed QKV weight,
      bias (and int8 scale / zero point) per head in each segment, and num_heads.
  FFN dims — W1 columns + b1, per-dim constants inside the activation (BiasGelu's bias too), W2 rows.
  int8 weights are sliced in their int8 values, with per-channel scales / zero points along the cut
  axis (per-tensor ones stay): QDQ behind a new DequantizeLinear, MatMulInteger in place.
  A layer left with no head (no FFN dim) loses the whole block: its residual Add receives the output
  bias instead (through the same fake-quant in QDQ graphs), which is exactly what the empty block
  computed; a SkipLayerNormalization residual becomes Add + LayerNormalization.
  Heads / dims dead on the input side only (zero V / W1 columns) are removed with their constant
  contribution folded into the output bias (fold_input_dead).
Initializers are never edited in place: exporters share equal tensors between layers (copy on write).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from compress.core.errors import GraphPatternError
from compress.core.record import LayerKeep
from exporters.graph import Graph, node_attr, node_desc
from exporters.sessions import run
from exporters.surgery.blocks import SKIP_LN, AttentionBlock, FfnBlock, Layer, Projection, projection_weight
from exporters.surgery.layers import find_layers, split_sizes
from exporters.surgery.quantized import apply_fake_quant, fake_quant_chain
from exporters.surgery.validate import finalize

# ---------------------------------------------------------------------- dead by input, bias folded
QUANTIZED = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QAttention",
    "QLinearMatMul",
}


def _output_bias_slot(proj: Projection, residual: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """Where a constant can be added to a block's output: its bias Add, or SkipLayerNorm's bias input."""
    if proj.add is not None:
        return proj.add, proj.bias_index
    if residual.op_type == "SkipLayerNormalization" and len(residual.input) > 4 and residual.input[4]:
        return residual, 4
    return None


def v_columns(g: Graph, a: AttentionBlock) -> tuple[np.ndarray, np.ndarray | None]:
    """V's weight columns [H, heads*d] and bias (None without one), wherever V is packed."""
    if a.fused is not None:
        width = a.num_heads * a.head_size
        return g.const(a.fused.input[1])[:, 2 * width :], g.const(a.fused.input[2])[2 * width :]
    p = a.v
    w = projection_weight(g, p)
    b = g.const(p.add.input[p.bias_index]) if p.add is not None else None
    if p.split is not None:  # the bias Add sits before the Split: both cover Q, K and V
        sizes = split_sizes(g, p.split, w.shape[1])
        start = sum(sizes[: p.split_output])
        cut = slice(start, start + sizes[p.split_output])
        w, b = w[:, cut], (b[cut] if b is not None else None)
    return w, b


def activation_of(g: Graph, f: FfnBlock, x: np.ndarray, dst: str | None = None) -> np.ndarray:
    """The FFN activation region evaluated by ONNX Runtime on a constant [F] input (what a dim whose
    W1 column is zero feeds W2: its bias through GELU / BiasGelu / any decomposition). dst: the region's
    output to read, when it is not W2's input (dynamic int8 quantizes it first)."""
    pos = g.index()
    nodes = sorted(f.activation, key=lambda n: pos[id(n)])
    made = {o for n in nodes for o in n.output}
    src, dst = f.w1.output, dst or f.w2.matmul.input[0]
    consts = {i for n in nodes for i in n.input if i and i != src and i not in made}
    inits = [onnx.numpy_helper.from_array(np.asarray(g.const(c)), c) for c in sorted(consts)]
    graph = onnx.helper.make_graph(
        [copy.deepcopy(n) for n in nodes],
        "ffn_activation",
        [onnx.helper.make_tensor_value_info(src, onnx.TensorProto.FLOAT, [1, len(x)])],
        [onnx.helper.make_tensor_value_info(dst, onnx.TensorProto.FLOAT, None)],
        inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version)
    return run(model, {src: x[None, :].astype(np.float32)})[dst].reshape(-1)


def fold_input_dead(g: Graph, layers: list[Layer], kept: list[LayerKeep]) -> tuple[list[LayerKeep], list[dict]]:
    """Heads whose V columns and FFN dims whose W1 column are all zero, though their output weights are
    not: each adds a constant to the block output (P @ (1 b_v) = b_v, since softmax rows sum to 1, then
    through W_O; act(b1_j) W2[j]). That constant is folded into the output bias and the structure is
    dropped from the kept structure returned. Quantized graphs are left alone: the activation quantization
    between those constants and the output projection would make the fold inexact, so the structure
    stays (exact, just not smaller). Returns (kept structure, per layer what was folded)."""
    folded = [{"heads": [], "ffn_dims": []} for _ in layers]
    if any(n.op_type in QUANTIZED for n in g.graph.node):
        return kept, folded
    new_kept = []
    for i, (layer, keep) in enumerate(zip(layers, kept)):
        k = {"heads_kept": list(keep.heads), "ffn_dims_kept": list(keep.ffn_dims)}
        a, f = layer.attention, layer.ffn
        d = a.head_size
        slot = _output_bias_slot(a.o, a.residual)
        wv, bv = v_columns(g, a)
        heads = [h for h in k["heads_kept"] if not np.any(wv[:, h * d : (h + 1) * d])]
        if heads and (slot is not None or bv is None or not np.any(bv)):
            wo = projection_weight(g, a.o)
            if bv is not None and slot is not None:
                delta = sum(
                    bv[h * d : (h + 1) * d].astype(np.float64) @ wo[h * d : (h + 1) * d].astype(np.float64)
                    for h in heads
                )
                node, j = slot
                _replace_const(g, node, j, g.const(node.input[j]) + delta, f"layer{i}.attention.output.bias_folded")
            k["heads_kept"] = [h for h in k["heads_kept"] if h not in heads]
            folded[i]["heads"] = heads
        slot = _output_bias_slot(f.w2, f.residual)
        w1 = projection_weight(g, f.w1)
        dims = [j for j in k["ffn_dims_kept"] if not np.any(w1[:, j])]
        if dims:
            b1 = g.const(f.w1.add.input[f.w1.bias_index]) if f.w1.add is not None else np.zeros(f.width, np.float32)
            act = activation_of(g, f, b1)
            w2 = projection_weight(g, f.w2)
            delta = act[dims].astype(np.float64) @ w2[dims].astype(np.float64)
            if slot is not None or not np.any(delta):  # else nowhere to fold a nonzero constant: keep the dims
                if slot is not None:
                    node, j = slot
                    _replace_const(g, node, j, g.const(node.input[j]) + delta, f"layer{i}.ffn.output.bias_folded")
                k["ffn_dims_kept"] = [j for j in k["ffn_dims_kept"] if j not in set(dims)]
                folded[i]["ffn_dims"] = dims
        new_kept.append(LayerKeep(k["heads_kept"], k["ffn_dims_kept"]))
    return new_kept, folded


# --------------------------------------------------------------------------------------- rewriting
def _replace_const(g: Graph, node: onnx.NodeProto, i: int, array: np.ndarray, hint: str) -> None:
    """Copy-on-write: a new initializer for this use only (the old one may be shared)."""
    old = g.const(node.input[i])
    g.set_input(node, i, g.add_initializer(array.astype(old.dtype, copy=False), hint))


def _slice_const(g: Graph, node: onnx.NodeProto, i: int, index: np.ndarray, axis: int, hint: str) -> None:
    """Keep `index` along `axis` of the constant read by input i of `node`. A QDQ weight
    (DequantizeLinear of int8) is sliced in its int8 values, with its scale and zero point when they
    are per channel along that axis (per-tensor ones stay); a new DequantizeLinear reads the slices."""
    name = node.input[i]
    dq = g.dequantized(name) if not g.is_stored(name) else None
    if dq is None:
        _replace_const(g, node, i, np.take(g.const(name), index, axis=axis), hint)
        return
    q = g.const(dq.input[0])
    axis %= q.ndim
    dq_axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
    inputs = [g.add_initializer(np.take(q, index, axis=axis), hint + ".int8")]
    for j, what in ((1, "scale"), (2, "zero_point")):
        if j < len(dq.input) and dq.input[j]:
            v = g.const(dq.input[j])
            inputs.append(
                g.add_initializer(v[index], f"{hint}.{what}") if v.size > 1 and dq_axis == axis else dq.input[j]
            )
    out = g.unique_name(hint + ".dequantized")
    new = onnx.helper.make_node("DequantizeLinear", inputs, [out], name=out)
    new.attribute.extend(copy.deepcopy(a) for a in dq.attribute)
    g.add_node(new)
    g.set_input(node, i, out)


def _slice_projection_out(g: Graph, p: Projection, cols: np.ndarray, hint: str) -> None:
    _slice_const(g, p.matmul, 1, cols, 1, f"{hint}.weight")
    if p.matmul.op_type == "MatMulInteger":  # per-channel (per output column) zero point and scale
        if len(p.matmul.input) > 3 and p.matmul.input[3] and g.const(p.matmul.input[3]).size > 1:
            _slice_const(g, p.matmul, 3, cols, 0, f"{hint}.weight_zero_point")
        if p.int_scale is not None and g.const(p.int_scale.input[p.int_scale_index]).size > 1:
            _slice_const(g, p.int_scale, p.int_scale_index, cols, 0, f"{hint}.weight_scale")
    if p.add is not None:
        _slice_const(g, p.add, p.bias_index, cols, 0, f"{hint}.bias")


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
    """Drop a whole block: the residual Add now adds the block's output bias (what an empty block computes),
    passed through the fake-quant the block output went through in a QDQ graph, so it stays exact."""
    w = projection_weight(g, bias)
    if bias.add is not None:
        b = g.const(bias.add.input[bias.bias_index])
    else:
        b = np.zeros(w.shape[1], dtype=w.dtype)
    b = apply_fake_quant(g, fake_quant_chain(g, block_out), b.astype(np.float32))
    if residual.op_type in SKIP_LN:
        _bypass_skip_layernorm(g, residual, block_out, b.astype(w.dtype, copy=False), hint)
        return
    name = g.add_initializer(b.astype(w.dtype, copy=False), hint)
    for i, inp in enumerate(residual.input):
        if inp == block_out:
            g.set_input(residual, i, name)


def _bypass_skip_layernorm(g: Graph, sln: onnx.NodeProto, block_out: str, bias: np.ndarray, hint: str) -> None:
    """SkipLayerNormalization(block, skip, gamma, beta, bias) with an empty block is
    LayerNormalization(skip + bias + block bias): standard nodes replace it (its input and skip must
    have equal shapes, so a constant cannot simply take the block's place)."""
    if sln.op_type != "SkipLayerNormalization":
        raise GraphPatternError(f"{node_desc(sln)}: removing the whole block before a {sln.op_type} is not supported")
    if any(o for o in sln.output[1:3]):
        raise GraphPatternError(f"{node_desc(sln)}: its mean / inv_std_var outputs are used; cannot replace it")
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        raise GraphPatternError(
            f"{node_desc(sln)}: removing a whole block here needs LayerNormalization (opset >= 17), the graph has opset {opset}"
        )
    skip = sln.input[1] if sln.input[0] == block_out else sln.input[0]
    total = bias.astype(np.float32)
    if len(sln.input) > 4 and sln.input[4]:
        total = total + g.const(sln.input[4]).astype(np.float32)
    summed = sln.output[3] if len(sln.output) > 3 and sln.output[3] else g.unique_name(hint + ".sum")
    g.add_node(
        onnx.helper.make_node(
            "Add", [skip, g.add_initializer(total, hint)], [summed], name=g.unique_name(hint + ".add")
        )
    )
    gamma = sln.input[2]
    beta = (
        sln.input[3]
        if len(sln.input) > 3 and sln.input[3]
        else g.add_initializer(np.zeros_like(g.const(gamma)), hint + ".beta")
    )
    g.add_node(
        onnx.helper.make_node(
            "LayerNormalization",
            [summed, gamma, beta],
            [sln.output[0]],
            name=g.unique_name(hint + ".ln"),
            axis=-1,
            epsilon=float(node_attr(sln, "epsilon", 1e-12)),
        )
    )
    g.remove_nodes([sln])


def _shrink_attention(g: Graph, i: int, a: AttentionBlock, heads: list[int], shapes: dict) -> None:
    d = a.head_size
    if not heads:
        _bypass(g, a.residual, a.residual_in or a.o.output, a.o, f"layer{i}.attention.output.bias")
        return
    if a.fused is not None:
        _shrink_fused_attention(g, i, a, heads)
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
        _slice_const(g, a.o.matmul, 1, cols, 0, f"layer{i}.attention.output.weight")
    # Constant head shapes even when nothing was cut: ORT's attention fusion reads the per-layer head
    # count from them (it cannot from the exporter's [B, L, -1, d] computed with Shape/Concat).
    n = len(heads)
    for r in a.split_reshapes:
        _set_reshape(g, r, _shape_const(g, shapes, (0, 0, n, d)))
    _set_reshape(g, a.merge_reshape, _shape_const(g, shapes, (0, 0, n * d)))


def _shrink_fused_attention(g: Graph, i: int, a: AttentionBlock, heads: list[int]) -> None:
    """com.microsoft Attention: slice the packed QKV weight columns and bias per head in each of the
    Q, K, V segments, set num_heads (and qkv_hidden_sizes), slice W_O rows."""
    if heads == list(range(a.num_heads)):
        return
    d, node = a.head_size, a.fused
    cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in heads])
    width = a.num_heads * d
    all_cols = np.concatenate([cols + s * width for s in range(3)])
    _slice_const(g, node, 1, all_cols, 1, f"layer{i}.attention.qkv.weight")
    _slice_const(g, node, 2, all_cols, 0, f"layer{i}.attention.qkv.bias")
    if node.op_type == "QAttention":  # int8 packed weight: per-column scale / zero point go with it
        for j, what in ((4, "weight_scale"), (7, "weight_zero_point")):
            if j < len(node.input) and node.input[j] and g.const(node.input[j]).size > 1:
                _slice_const(g, node, j, all_cols, 0, f"layer{i}.attention.qkv.{what}")
    for attr in node.attribute:
        if attr.name == "num_heads":
            attr.i = len(heads)
        elif attr.name == "qkv_hidden_sizes":
            del attr.ints[:]
            attr.ints.extend([len(cols)] * 3)
    _slice_const(g, a.o.matmul, 1, cols, 0, f"layer{i}.attention.output.weight")


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
        _bypass(g, f.residual, f.residual_in or f.w2.output, f.w2, f"layer{i}.ffn.output.bias")
        return
    if dims == list(range(f.width)):
        return
    idx = np.asarray(dims, dtype=np.int64)
    _slice_projection_out(g, f.w1, idx, f"layer{i}.ffn.in")
    for node, j in f.per_dim_consts:
        c = g.const(node.input[j])
        _replace_const(g, node, j, c.reshape(-1)[idx].reshape(c.shape[:-1] + (len(idx),)), f"layer{i}.ffn.act.const")
    _slice_const(g, f.w2.matmul, 1, idx, 0, f"layer{i}.ffn.out.weight")


def layer_params(layer: Layer, hidden: int, attn_width: int, ffn_width: int) -> int:
    """Weights + biases of one layer's Q/K/V/O and FFN projections at the given widths. The output
    biases of a removed block stay (they are added to the residual), so they always count."""
    a, f = layer.attention, layer.ffn
    total = 4 * hidden * attn_width + 2 * hidden * ffn_width
    if attn_width:
        total += (
            3 * attn_width if a.fused is not None else sum(attn_width for p in (a.q, a.k, a.v) if p.add is not None)
        )
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
        changes.append(
            {
                "heads_before": a.num_heads,
                "heads_after": len(heads),
                "heads_kept": heads,
                "attention_removed": not heads,
            }
        )
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
