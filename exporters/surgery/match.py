"""Matching: find each encoder layer's attention and FFN blocks in an ONNX graph, and which heads /
FFN dims are dead (all-zero output weights). Nothing here changes the graph.

No node names are trusted, they differ between exporters:
  attention — anchored on each Softmax fed (through Add/Mul/Div/Where/Cast) by MatMul(Q_heads, K_heads^T).
      From there: Q and K go up through Transpose / scalar Mul|Div to a Reshape (split into heads), then
      an optional bias Add and a MatMul with a constant [in, out] weight (or a packed QKV MatMul + Split);
      the probabilities go down to MatMul(P, V_heads), then Transpose -> Reshape (merge heads) ->
      MatMul(W_O) -> optional bias Add -> the residual Add. Or a fused com.microsoft Attention /
      QAttention node (packed QKV weight) followed by W_O and the residual (Add or SkipLayerNormalization).
  FFN — anchored on a MatMul with constant weight W1 [H, F] whose output (after an optional bias Add)
      flows only through element-wise ops (the activation; any GELU/ReLU/tanh-GELU decomposition, or
      BiasGelu / FastGelu) into exactly one MatMul with constant weight W2 [F, H], then an optional bias
      Add and the residual Add (or SkipLayerNormalization). Element-wise-only is what makes dropping a
      dim exact, so that is what we check, not a GELU shape.
What real exporters put in between is looked through (the graph zoo in tests/zoo/ has one of each):
  scale factors computed at run time from Shape (torch's SDPA decomposition), Shape readers of the
  context (transformers 4.x `context.size()[:-2] + (all_head_size,)`), SDPA's K transpose done as
  Reshape/Transpose/Reshape and its Where(IsNaN(P)) guard, activation fake-quant of QDQ graphs, and
  ORT's dynamic int8 MatMulInteger -> Cast -> Mul(scale) projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from compress.core.errors import GraphPatternError
from compress.core.record import LayerKeep
from exporters.graph import Graph, op_counts

# Ops that act on each feature independently (given scalar or per-feature constant operands).
ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Exp",
    "Neg",
    "Abs",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Softplus",
    "HardSigmoid",
    "HardSwish",
    "Mish",
    "Clip",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "Cast",
    "Identity",
    "Dropout",
}
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
# Residual + LayerNorm fused by ORT; the block output is input 0 or 1, a folded output bias input 4.
SKIP_LN = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
# Activation fake-quantization of QDQ graphs (QuantizeLinear -> DequantizeLinear, per-tensor): looked
# through while matching; it acts on each element alone, so cutting heads/dims does not change it.
QDQ = ("QuantizeLinear", "DequantizeLinear")
ELEMENTWISE |= set(QDQ)
_PASS_SCORES = ("Add", "Mul", "Div", "Sub", "Where", "Cast", *QDQ)  # between QK^T and Softmax
_PASS_PROBS = ("Cast", "Where", "Dropout", "Identity", *QDQ)  # between Softmax and P @ V


# --------------------------------------------------------------------------------------- matched pieces
@dataclass
class Projection:
    """y = x @ W (+ b), possibly one slice of a packed QKV projection followed by Split."""

    matmul: onnx.NodeProto
    add: onnx.NodeProto | None = None
    bias_index: int = 0  # which input of `add` is the constant bias
    split: onnx.NodeProto | None = None  # packed QKV: the Split node, and which of its outputs is ours
    split_output: int = 0
    # ORT dynamic int8 (QOperator): `matmul` is MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast -> `int_out`
    # = Mul(., `int_scale`), where int_scale = Mul(x_scale, W_scale) with W_scale at input int_scale_index.
    int_out: onnx.NodeProto | None = None
    int_scale: onnx.NodeProto | None = None
    int_scale_index: int = 0

    @property
    def output(self) -> str:
        node = self.add or self.int_out or self.matmul
        return node.output[0]


@dataclass
class AttentionBlock:
    softmax: onnx.NodeProto
    q: Projection
    k: Projection
    v: Projection
    split_reshapes: list[onnx.NodeProto]
    merge_reshape: onnx.NodeProto
    o: Projection
    residual: onnx.NodeProto
    num_heads: int = 0
    head_size: int = 0
    residual_in: str = ""  # the residual Add's input carrying the block output (after any fake-quant)
    fused: onnx.NodeProto | None = None  # com.microsoft Attention holding Q/K/V (packed weight input 1, bias 2)


@dataclass
class FfnBlock:
    w1: Projection
    activation: list[onnx.NodeProto]
    per_dim_consts: list[tuple[onnx.NodeProto, int]]  # (node, input index) of [F]-shaped constants
    w2: Projection
    residual: onnx.NodeProto
    width: int = 0
    residual_in: str = ""


@dataclass
class Layer:
    attention: AttentionBlock
    ffn: FfnBlock
    report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------- matching
def node_desc(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _integer_matmul(g: Graph, node: onnx.NodeProto | None):
    """For the output Mul of ORT's dynamic int8 MatMul — Mul(Cast(MatMulInteger(x_q, W_q, x_zp, W_zp)),
    Mul(x_scale, W_scale)) — return (MatMulInteger, scale Mul, index of W_scale in it); else None."""
    if node is None or node.op_type != "Mul":
        return None
    for i in (0, 1):
        cast, sm = g.producer.get(node.input[i]), g.producer.get(node.input[1 - i])
        if cast is None or cast.op_type != "Cast" or sm is None or sm.op_type != "Mul":
            continue
        mmi = g.producer.get(cast.input[0])
        consts = [j for j, x in enumerate(sm.input) if g.is_const(x)]
        if mmi is not None and mmi.op_type == "MatMulInteger" and g.is_const(mmi.input[1]) and len(consts) == 1:
            return mmi, sm, consts[0]
    return None


def _matmul_out(g: Graph, mm: onnx.NodeProto) -> str:
    """The float result of a weight MatMul: its output, or for MatMulInteger the rescaling Mul's."""
    if mm.op_type != "MatMulInteger":
        return mm.output[0]
    cast = g.sole_child(mm.output[0], "Cast")
    mul = g.sole_child(cast.output[0], "Mul") if cast is not None else None
    found = _integer_matmul(g, mul)
    return mul.output[0] if found is not None and found[0] is mm else mm.output[0]


def _projection(g: Graph, mm: onnx.NodeProto) -> Projection:
    """A Projection for a weight MatMul / MatMulInteger (bias filled in by the caller)."""
    p = Projection(mm)
    out = _matmul_out(g, mm)
    if out != mm.output[0]:
        p.int_out = g.producer[out]
        _, p.int_scale, p.int_scale_index = _integer_matmul(g, p.int_out)
    return p


def projection_weight(g: Graph, p: Projection) -> np.ndarray:
    """The float [in, out] weight a projection multiplies by (int8 ones dequantized)."""
    w = g.const(p.matmul.input[1])
    if p.matmul.op_type != "MatMulInteger":
        return w
    zp = g.const(p.matmul.input[3]) if len(p.matmul.input) > 3 and p.matmul.input[3] else np.zeros((), np.int8)
    scale = g.const(p.int_scale.input[p.int_scale_index]) if p.int_scale is not None else np.ones((), np.float32)
    return (
        w.astype(np.float32) - zp.astype(np.float32).reshape(-1)[None, :]
        if zp.size > 1
        else w.astype(np.float32) - float(zp)
    ) * scale.reshape(-1)


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


def _is_fake_quant(g: Graph, node: onnx.NodeProto | None) -> bool:
    """A QuantizeLinear / DequantizeLinear on an activation with per-tensor scale and zero point."""
    return (
        node is not None
        and node.op_type in QDQ
        and not g.is_const(node.input[0])
        and all(not i or g.is_scalar_const(i) for i in node.input[1:])
    )


def _up_qdq(g: Graph, name: str) -> str:
    """The tensor above any activation fake-quant (Q -> DQ) pairs that produce `name`."""
    for _ in range(8):
        node = g.producer.get(name)
        if not _is_fake_quant(g, node):
            break
        name = node.input[0]
    return name


def _down_qdq(g: Graph, name: str) -> str:
    """The tensor below any activation fake-quant pairs that are the sole readers of `name`."""
    for _ in range(8):
        node = g.sole_child(name)
        if not _is_fake_quant(g, node):
            break
        name = node.output[0]
    return name


def fake_quant_chain(g: Graph, name: str) -> list[onnx.NodeProto]:
    """The fake-quant nodes between a residual Add's input `name` and the block output above it."""
    chain = []
    node = g.producer.get(name)
    while _is_fake_quant(g, node):
        chain.append(node)
        node = g.producer.get(node.input[0])
    return chain[::-1]


def apply_fake_quant(g: Graph, chain: list[onnx.NodeProto], x: np.ndarray) -> np.ndarray:
    """What the fake-quant chain computes on constant x (round half to even, saturate, as ONNX does)."""
    for node in chain:
        scale = float(g.const(node.input[1]).reshape(-1)[0])
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if node.op_type == "QuantizeLinear":
            info = np.iinfo(zp.dtype)
            x = np.clip(np.round(x / scale) + float(zp.reshape(-1)[0]), info.min, info.max)
        else:
            x = ((x - float(zp.reshape(-1)[0])) * scale).astype(np.float32)
    return x


def _skip_scalar_ops(g: Graph, name: str, ops=("Mul", "Div"), also=()) -> tuple[str, onnx.NodeProto | None]:
    """Walk up through scalar Mul/Div (attention scaling), activation fake-quant and `also` ops;
    return (tensor, its producer)."""
    node = g.producer.get(name)
    for _ in range(12):
        if node is None:
            break
        if _is_fake_quant(g, node):
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
        node = g.producer.get(_up_qdq(g, node.input[1 - bias_index]))
    integer = _integer_matmul(g, node)
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
    p = _projection(g, node)
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
        elif _is_fake_quant(g, node):
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
    out = _down_qdq(g, proj.output)
    node = g.sole_child(out)
    if not _is_residual(g, node, out):
        raise GraphPatternError(f"{where}: expected the block output {proj.output!r} to feed only a residual Add")
    return node, out


def _is_residual(g: Graph, node: onnx.NodeProto | None, block_out: str) -> bool:
    """A residual Add of two computed tensors, or ORT's SkipLayerNormalization reading the block output
    as its input or skip."""
    if node is None:
        return False
    if node.op_type == "Add":
        return not any(g.is_const(i) for i in node.input)
    return node.op_type in SKIP_LN and block_out in node.input[:2]


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
    while merge is not None and (merge.op_type == "Transpose" or _is_fake_quant(g, merge)):
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
    o_mm = _weight_matmul_below(g, _down_qdq(g, name))
    if o_mm is None:
        raise GraphPatternError(f"{where}: expected {what} to feed the output projection MatMul")
    o = _projection_above(g, _bias_add_or_self(g, o_mm), "O", where)
    residual, residual_in = _residual_after(g, o, where)
    return o, residual, residual_in


def node_attr(node: onnx.NodeProto, name: str, default=None):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else onnx.helper.get_attribute_value(a)


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


def _weight_matmul_below(g: Graph, x: str) -> onnx.NodeProto | None:
    """The MatMul reading `x` as its input, or the MatMulInteger reading x's DynamicQuantizeLinear."""
    node = g.sole_child(x)
    if node is not None and node.op_type == "DynamicQuantizeLinear":
        kids = g.children(node.output[0])
        node = (
            kids[0]
            if len(kids) == 1 and kids[0].op_type == "MatMulInteger" and kids[0].input[0] == node.output[0]
            else None
        )
        return node
    return node if node is not None and node.op_type == "MatMul" and node.input[0] == x else None


def _bias_add_or_self(g: Graph, mm: onnx.NodeProto) -> str:
    """Output of the MatMul's bias Add when there is one (a constant [out] operand), else of the MatMul."""
    add = g.sole_child(_down_qdq(g, _matmul_out(g, mm)), "Add")
    w = g.const(mm.input[1])
    if add is not None and w is not None and w.ndim == 2:
        consts = [g.const(i) for i in add.input]
        if sum(c is not None for c in consts) == 1 and any(c is not None and c.shape == (w.shape[1],) for c in consts):
            return add.output[0]
    return _matmul_out(g, mm)


def match_ffn(g: Graph, mm1: onnx.NodeProto) -> FfnBlock | None:
    """Match x -> MatMul(W1) [+b1] -> element-wise activation -> MatMul(W2) [+b2] -> residual Add.
    Returns None when `mm1` does not start such a block (most MatMuls don't)."""
    w1 = g.const(mm1.input[1])
    if w1 is None or w1.ndim != 2 or g.is_const(mm1.input[0]):
        return None
    width = w1.shape[1]
    src = _bias_add_or_self(g, mm1)
    region_tensors, region_nodes, per_dim, stops = {src}, [], [], []
    frontier = [src]
    while frontier:
        tensor = frontier.pop()
        if tensor in g.graph_outputs:
            return None
        for node in g.children(tensor):
            if any(node is n for n in region_nodes) or any(node is s for s in stops):
                continue
            if node.op_type == "DynamicQuantizeLinear":  # ORT dynamic int8: quantizes W2's input
                node = _weight_matmul_below(g, tensor)
                if node is None:
                    return None
                w2 = g.const(node.input[1])
                if w2 is None or w2.ndim != 2 or w2.shape[0] != width:
                    return None
                stops.append(node)
                continue
            if node.op_type == "MatMul" and node.input[0] in region_tensors and node.input[1] not in region_tensors:
                w2 = g.const(node.input[1])
                if w2 is None or w2.ndim != 2 or w2.shape[0] != width:
                    return None
                stops.append(node)
                continue
            if node.op_type not in ELEMENTWISE:
                return None
            region_nodes.append(node)
            for out in node.output:
                if out and out not in region_tensors:
                    region_tensors.add(out)
                    frontier.append(out)
    # Every other operand of the activation must be a constant (scalar, or one value per FFN dim, which
    # is then sliced with the dims); an operand from elsewhere would mix dims and make cutting unsafe.
    for node in region_nodes:
        for i, inp in enumerate(node.input):
            if not inp or inp in region_tensors:
                continue
            c = g.const(inp)
            if c is None:
                return None
            if c.size != 1:
                if c.shape[-1:] != (width,) or c.size != width:
                    return None
                per_dim.append((node, i))
    if len(stops) != 1 or not region_nodes:
        return None
    w1_proj = _projection(g, mm1)
    if src != _matmul_out(g, mm1):
        add = g.producer[src]
        w1_proj.add, w1_proj.bias_index = add, [g.is_const(i) for i in add.input].index(True)
    w2_out = _bias_add_or_self(g, stops[0])
    w2_proj = _projection(g, stops[0])
    if w2_out != _matmul_out(g, stops[0]):
        add = g.producer[w2_out]
        w2_proj.add, w2_proj.bias_index = add, [g.is_const(i) for i in add.input].index(True)
    residual_in = _down_qdq(g, w2_out)
    residual = g.sole_child(residual_in)
    if not _is_residual(g, residual, residual_in):
        return None  # e.g. a classifier head MatMul -> ReLU -> MatMul: no residual, not an encoder FFN
    return FfnBlock(w1_proj, region_nodes, per_dim, w2_proj, residual, width, residual_in=residual_in)


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


# --------------------------------------------------------------------------------------- kept structure
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


# Ops whose count before / after shrink shows that fusions and quantization survived the surgery.
REPORTED_OPS = (
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "FusedMatMul",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
)


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = op_counts(model)
    return {k: counts[k] for k in REPORTED_OPS if counts.get(k)}


def describe_layer(g: Graph, layer: Layer) -> dict:
    """What the matcher found in one layer, in words (for `compress shrink --report`)."""
    a, f = layer.attention, layer.ffn

    def weights(p: Projection) -> str:
        if p.matmul.op_type == "MatMulInteger":
            return "int8 dynamic (MatMulInteger)"
        src = p.matmul.input[1]
        return (
            "int8 QDQ" if g.producer.get(src) is not None and g.producer[src].op_type == "DequantizeLinear" else "fp32"
        )

    if a.fused is not None:
        attention = f"fused {a.fused.op_type} ({a.fused.domain or 'ai.onnx'}, packed QKV)"
    elif a.q.split is not None:
        attention = "MatMul + Softmax, packed QKV + Split"
    else:
        attention = "MatMul + Softmax, separate Q/K/V"
    act = sorted({n.op_type for n in f.activation} - set(QDQ))
    return {
        "attention": attention,
        "attention_weights": weights(a.o),
        "ffn_activation": "+".join(act),
        "ffn_weights": weights(f.w2),
        "residual": a.residual.op_type,
    }
