"""Matching attention blocks, plain or fused. Nothing here changes the graph.

Plain attention is anchored on each Softmax fed (through Add/Mul/Div/Where/Cast) by MatMul(Q_heads, K_heads^T).
From there Q and K go up through Transpose / scalar Mul|Div to a Reshape (split into heads), then an optional
bias Add and a MatMul with a constant [in, out] weight (or a packed QKV MatMul + Split); the probabilities go
down to MatMul(P, V_heads), then Transpose -> Reshape (merge heads) -> MatMul(W_O) -> optional bias Add -> the
residual Add. Fused attention is a com.microsoft Attention / QAttention node (packed QKV weight) followed by
W_O and the residual (Add or SkipLayerNormalization).
What real exporters put in between is looked through (the graph zoo in tests/zoo/ has one of each): scale factors computed at run time from Shape (torch's
SDPA decomposition), Shape readers of the context (transformers 4.x `context.size()[:-2] + (all_head_size,)`),
SDPA's K transpose done as Reshape/Transpose/Reshape and its Where(IsNaN(P)) guard, and the quantized
patterns of exporters.surgery.quantized.
"""

from __future__ import annotations

import onnx

from compress.core.errors import GraphPatternError
from exporters.graph import Graph, node_attr, node_desc
from exporters.surgery.blocks import AttentionBlock, Projection, bias_add_or_self, is_residual, projection_of
from exporters.surgery.quantized import QDQ, down_qdq, integer_matmul, is_fake_quant, up_qdq, weight_matmul_below

# Fused attention kernels. com.microsoft Attention (packed QKV weight, what `optimum-cli onnxruntime
# optimize` and ORT's transformers optimizer emit) is rewritten; the others are refused by name.
FUSED_ATTENTION = {
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "PackedAttention",
    "PackedMultiHeadAttention",
    "GroupQueryAttention",
}
# Inputs of the rewritten kernels that must be empty (past state, attention bias, ...): index onwards.
_FUSED_EXTRA_INPUTS = {"Attention": 4, "QAttention": 8}
_PASS_SCORES = ("Add", "Mul", "Div", "Sub", "Where", "Cast", *QDQ)  # between QK^T and Softmax
_PASS_PROBS = ("Cast", "Where", "Dropout", "Identity", *QDQ)  # between Softmax and P @ V

# Ops that can turn tensor shapes into a scale factor (torch's SDPA decomposition computes
# 1/sqrt(head_size) at run time from Shape(Q)[-1]: Shape -> Slice -> Cast -> Sqrt -> Div -> Sqrt).
_SHAPE_ARITH = {
    "Shape",
    "Gather",
    "Slice",
    "Cast",
    "Sqrt",
    "Div",
    "Mul",
    "Add",
    "Sub",
    "Unsqueeze",
    "Squeeze",
    "Reciprocal",
    "Identity",
    "Constant",
    "Reshape",
    "Concat",
    *QDQ,
}


def _is_shape_scalar(g: Graph, name: str, depth: int = 0) -> bool:
    """True when `name` is a one-element value computed only from constants and the LAST dim of a 4-D
    tensor's shape (the head size, which surgery keeps; torch's SDPA decomposition reads it from the
    per-head Q). A factor read from any other dim (hidden size, head count) would change when heads
    are cut, so it is not looked through and the block is refused instead."""
    if g.is_const(name):
        return depth > 0 or g.is_scalar_const(name)
    node = g.producer.get(name)
    if node is None or node.op_type not in _SHAPE_ARITH or depth > 12:
        return False
    if node.op_type == "Shape":
        start = node_attr(node, "start", 0)
        return depth > 0 and start in (-1, 3) and node_attr(node, "end", None) is None  # Shape(x, start=-1)
    if node.op_type in ("Slice", "Gather") and _shape_axes(g, node.input[0]) is not None:
        return _reads_last_dim(g, node)
    if depth == 0 and node.op_type in ("Concat", "Reshape"):
        return False  # a whole shape vector is no scale factor
    return all(not i or _is_shape_scalar(g, i, depth + 1) for i in node.input)


def _shape_axes(g: Graph, name: str) -> list[int] | None:
    """For Shape(x) -> [] (all axes, in order); for Gather(Shape(x), const axes) -> those axes (ORT's
    transpose optimizer writes Shape(Transpose(x)) so); else None."""
    node = g.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Shape":
        return None if any(a.name in ("start", "end") for a in node.attribute) else []
    if node.op_type == "Gather" and node_attr(node, "axis", 0) == 0 and _shape_axes(g, node.input[0]) == []:
        idx = g.const(node.input[1])
        return [int(i) for i in idx.reshape(-1)] if idx is not None and idx.ndim == 1 else None
    return None


def _reads_last_dim(g: Graph, node: onnx.NodeProto) -> bool:
    """Slice(dims, [-1], [big]) / Slice(dims, [3], [4]) / Gather(dims, -1 or 3) where dims is a shape
    (see _shape_axes): true when the dim picked is the last axis of a 4-D [B, heads, L, head_size] or
    [B, L, heads, head_size] tensor, i.e. the head size."""
    axes = _shape_axes(g, node.input[0])
    if node.op_type == "Gather":
        idx = g.const(node.input[1])
        if idx is None or idx.size != 1:
            return False
        pick = int(idx.reshape(-1)[0])
    else:
        starts = g.const(node.input[1]) if len(node.input) > 1 else None
        ends = g.const(node.input[2]) if len(node.input) > 2 else None
        slice_axes = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if starts is None or ends is None or (slice_axes is not None and slice_axes.reshape(-1).tolist() != [0]):
            return False
        start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
        if not ((start == -1 and end > 2**30) or (start == 3 and (end == 4 or end > 2**30))):
            return False
        pick = start
    if axes:  # through the Gather: which axis of x that element is
        if not -len(axes) <= pick < len(axes):
            return False
        pick = axes[pick]
    return pick in (-1, 3)


def _skip_scalar_ops(g: Graph, name: str, ops=("Mul", "Div"), also=()) -> tuple[str, onnx.NodeProto | None]:
    """Walk up through scalar Mul/Div (attention scaling), activation fake-quant and `also` ops;
    return (tensor, its producer)."""
    node = g.producer.get(name)
    for _ in range(12):
        if node is None:
            break
        if is_fake_quant(g, node):
            name = node.input[0]
        elif node.op_type in ops:
            dynamic = [i for i in node.input if not (g.is_scalar_const(i) or _is_shape_scalar(g, i))]
            if len(dynamic) != 1 or (node.op_type == "Div" and dynamic[0] != node.input[0]):
                break
            name = dynamic[0]
        elif node.op_type in also:
            name = node.input[0]
        else:
            break
        node = g.producer.get(name)
    return name, node


def _projection_above(g: Graph, name: str, what: str, where: str) -> Projection:
    """The (bias) MatMul that produces `name`, looking through scalar Mul/Div and a QKV Split."""
    name, node = _skip_scalar_ops(g, name)
    split, split_output = None, 0
    if node is not None and node.op_type == "Split":
        split, split_output = node, list(node.output).index(name)
        name, node = _skip_scalar_ops(g, node.input[0])
    add, bias_index = None, 0
    if node is not None and node.op_type == "Add":
        consts = [i for i, x in enumerate(node.input) if g.is_const(x)]
        if len(consts) != 1:
            raise GraphPatternError(
                f"{where}: the {what} projection's Add has no constant bias operand ({node_desc(node)})"
            )
        add, bias_index = node, consts[0]
        node = g.producer.get(up_qdq(g, node.input[1 - bias_index]))
    integer = integer_matmul(g, node)
    if integer is not None:
        node = integer[0]
    if node is None or node.op_type not in ("MatMul", "MatMulInteger"):
        found = node_desc(node) if node is not None else "a graph input"
        raise GraphPatternError(f"{where}: expected the {what} projection MatMul, found {found}")
    w = g.const(node.input[1])
    if w is None or w.ndim != 2:
        raise GraphPatternError(f"{where}: the {what} projection {node_desc(node)} has no constant 2-D weight")
    if add is not None and g.const(add.input[bias_index]).shape != (w.shape[1],):
        raise GraphPatternError(f"{where}: the {what} bias does not match its weight's output width")
    p = projection_of(g, node)
    p.add, p.bias_index, p.split, p.split_output = add, bias_index, split, split_output
    return p


def _compose(perms: list[list[int]]) -> list[int]:
    """Permutation equivalent to applying `perms` in order (each as in ONNX Transpose)."""
    out = list(range(len(perms[0]))) if perms else []
    for p in perms:
        out = [out[j] for j in p]
    return out


# Layout each head tensor must have relative to the [B, L, heads, head_size] Reshape: anything else
# (e.g. heads interleaved differently) would make cutting contiguous column blocks wrong.
Q_PERM, K_PERM, V_PERM, MERGE_PERM = [0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3], [0, 2, 1, 3]


def _flattened_swap(g: Graph, reshape: onnx.NodeProto) -> str | None:
    """torch's SDPA decomposition (dynamo exporter) transposes K as Reshape [B*h, L, d] -> Transpose
    [0, 2, 1] -> Reshape [B, h, d, L]: a swap of the last two axes. Returns the 4-D tensor it starts
    from. Both shapes must be computed at run time (from Shape of the tensors), so they follow the new
    head count; constant ones would bake the old count in."""
    t = g.producer.get(reshape.input[0])
    if t is None or t.op_type != "Transpose" or list(node_attr(t, "perm", [])) != [0, 2, 1]:
        return None
    inner = g.producer.get(t.input[0])
    if inner is None or inner.op_type != "Reshape" or g.is_const(inner.input[1]) or g.is_const(reshape.input[1]):
        return None
    return inner.input[0]


def _head_path(g: Graph, name: str, what: str, where: str, expect: list[int]) -> tuple[Projection, onnx.NodeProto]:
    """From a per-head tensor up to its split Reshape (checking the Transposes on the way) and projection."""
    perms = []
    node = g.producer.get(name)
    for _ in range(8):
        if node is None:
            break
        if node.op_type == "Transpose":
            perms.append(list(next(a.ints for a in node.attribute if a.name == "perm")))
            name = node.input[0]
        elif is_fake_quant(g, node):
            name = node.input[0]
        elif node.op_type == "Reshape" and _flattened_swap(g, node) is not None:
            perms.append([0, 1, 3, 2])
            name = _flattened_swap(g, node)
        elif node.op_type in ("Mul", "Div"):
            name, _ = _skip_scalar_ops(g, name)
            if g.producer.get(name) is node:
                break
        else:
            break
        node = g.producer.get(name)
    if node is None or node.op_type != "Reshape":
        found = node_desc(node) if node is not None else "a graph input"
        raise GraphPatternError(f"{where}: expected a Reshape splitting {what} into heads, found {found}")
    layout = _compose(perms[::-1])
    if layout != expect:
        raise GraphPatternError(
            f"{where}: {what} heads are transposed with {layout}, expected {expect} (layout not recognised)"
        )
    return _projection_above(g, node.input[0], what, where), node


def _scores_matmul(g: Graph, name: str, depth: int = 0) -> onnx.NodeProto | None:
    """MatMul(Q, K^T) feeding the Softmax through mask Add / scale Mul / Where / Cast, else None. ORT's
    saved graphs have com.microsoft FusedMatMul(Q, K, alpha, transB) there (MatMul + scale fused)."""
    node = g.producer.get(name)
    if node is None or depth > 6:
        return None
    plain = node.op_type == "MatMul" or (
        node.op_type == "FusedMatMul"
        and not node_attr(node, "transA", 0)
        and not node_attr(node, "transBatchA", 0)
        and not node_attr(node, "transBatchB", 0)
    )
    if plain and not g.is_const(node.input[0]) and not g.is_const(node.input[1]):
        return node
    if node.op_type in _PASS_SCORES:
        for inp in node.input:
            if inp and not g.is_const(inp):
                found = _scores_matmul(g, inp, depth + 1)
                if found is not None:
                    return found
    return None


def _sole_data_child(g: Graph, name: str) -> onnx.NodeProto | None:
    """The only consumer of `name` that reads its values. Shape consumers are ignored: transformers 4.x
    builds the merge Reshape's target from `context.size()[:-2]` (Shape -> Gather -> Unsqueeze -> Concat);
    surgery replaces that target by a constant, which leaves those Shape nodes dead."""
    kids = [k for k in g.children(name) if k.op_type != "Shape"]
    if len(kids) != 1 or name in g.graph_outputs:
        return None
    return kids[0]


def _follow_down(g: Graph, name: str, passthrough: tuple[str, ...]) -> tuple[str, onnx.NodeProto | None]:
    name = _skip_nan_guard(g, name)
    node = g.sole_child(name)
    while node is not None and node.op_type in passthrough:
        name = _skip_nan_guard(g, node.output[0])
        node = g.sole_child(name)
    return name, node


def _skip_nan_guard(g: Graph, name: str) -> str:
    """torch's SDPA decomposition guards the probabilities with Where(IsNaN(P), 0, P) (fully masked
    rows); per element, so it is looked through like a Cast."""
    kids = g.children(name)
    if len(kids) != 2 or name in g.graph_outputs:
        return name
    isnan = next((k for k in kids if k.op_type == "IsNaN"), None)
    where = next((k for k in kids if k.op_type == "Where"), None)
    if isnan is None or where is None or list(where.input) != [isnan.output[0], where.input[1], name]:
        return name
    if not g.is_scalar_const(where.input[1]) or len(g.children(isnan.output[0])) != 1:
        return name
    return where.output[0]


def _residual_after(g: Graph, proj: Projection, where: str) -> tuple[onnx.NodeProto, str]:
    """The residual Add below a block output, and which of its inputs carries the block output."""
    out = down_qdq(g, proj.output)
    node = g.sole_child(out)
    if not is_residual(g, node, out):
        raise GraphPatternError(f"{where}: expected the block output {proj.output!r} to feed only a residual Add")
    return node, out


def match_attention(g: Graph, softmax: onnx.NodeProto) -> AttentionBlock | None:
    """Match one attention block around `softmax`; None if this Softmax is not attention at all."""
    scores = _scores_matmul(g, softmax.input[0])
    if scores is None:
        return None
    where = f"attention at {node_desc(softmax)}"
    q, q_reshape = _head_path(g, scores.input[0], "Q", where, Q_PERM)
    # FusedMatMul(transB=1) transposes K itself: the graph then holds K in the Q layout
    k_layout = Q_PERM if scores.op_type == "FusedMatMul" and node_attr(scores, "transB", 0) else K_PERM
    k, k_reshape = _head_path(g, scores.input[1], "K", where, k_layout)
    probs, ctx = _follow_down(g, softmax.output[0], _PASS_PROBS)
    if ctx is None or ctx.op_type != "MatMul" or ctx.input[0] != probs:
        raise GraphPatternError(f"{where}: expected the probabilities to feed MatMul(P, V)")
    v, v_reshape = _head_path(g, ctx.input[1], "V", where, V_PERM)
    perms, merge = [], _sole_data_child(g, ctx.output[0])
    while merge is not None and (merge.op_type == "Transpose" or is_fake_quant(g, merge)):
        if merge.op_type == "Transpose":
            perms.append(list(next(a.ints for a in merge.attribute if a.name == "perm")))
        merge = _sole_data_child(g, merge.output[0])
    if merge is None or merge.op_type != "Reshape":
        raise GraphPatternError(f"{where}: expected Transpose -> Reshape merging the heads after MatMul(P, V)")
    if _compose(perms) != MERGE_PERM:
        raise GraphPatternError(
            f"{where}: the context is transposed with {_compose(perms)} before merging, expected {MERGE_PERM}"
        )
    o, residual, residual_in = _output_projection(g, merge.output[0], "the merged heads", where)
    block = AttentionBlock(
        softmax, q, k, v, [q_reshape, k_reshape, v_reshape], merge, o, residual, residual_in=residual_in
    )
    return block


def _output_projection(g: Graph, name: str, what: str, where: str):
    """(O projection, residual node, residual input index) below the attention context `name`."""
    o_mm = weight_matmul_below(g, down_qdq(g, name))
    if o_mm is None:
        raise GraphPatternError(f"{where}: expected {what} to feed the output projection MatMul")
    o = _projection_above(g, bias_add_or_self(g, o_mm), "O", where)
    residual, residual_in = _residual_after(g, o, where)
    return o, residual, residual_in


def match_fused_attention(g: Graph, node: onnx.NodeProto) -> AttentionBlock:
    """A com.microsoft Attention node (packed [H, 3w] QKV weight and [3w] bias, num_heads attribute)
    followed by the output projection and the residual (Add or SkipLayerNormalization)."""
    where = f"fused {node.op_type} at {node_desc(node)}"
    if node.op_type not in _FUSED_EXTRA_INPUTS or node.domain != "com.microsoft":
        raise GraphPatternError(
            f"{where}: only com.microsoft Attention / QAttention are rewritten; shrink the graph before the ORT optimizer fuses it"
        )
    w = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if w is None or w.ndim != 2:
        raise GraphPatternError(f"{where}: the packed QKV weight is not a constant 2-D tensor")
    if len(node.input) < 3 or not node.input[2] or g.const(node.input[2]) is None:
        raise GraphPatternError(f"{where}: the packed QKV bias is missing or not constant")
    if any(node.input[_FUSED_EXTRA_INPUTS[node.op_type] :]) or any(node.output[1:]):
        raise GraphPatternError(f"{where}: past state / attention bias inputs or present outputs are not supported")
    n = int(node_attr(node, "num_heads", 0))
    sizes = list(node_attr(node, "qkv_hidden_sizes", []) or [w.shape[1] // 3] * 3)
    if len(set(sizes)) != 1 or sum(sizes) != w.shape[1] or n <= 0 or sizes[0] % n:
        raise GraphPatternError(f"{where}: Q/K/V widths {sizes} with {n} heads are not a layout surgery can slice")
    o, residual, residual_in = _output_projection(g, node.output[0], "the attention output", where)
    packed = Projection(node)  # `matmul` is the Attention node: weight input 1, bias input 2
    block = AttentionBlock(node, packed, packed, packed, [], node, o, residual, residual_in=residual_in, fused=node)
    block.num_heads, block.head_size = n, sizes[0] // n
    return block
