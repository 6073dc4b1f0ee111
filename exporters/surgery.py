"""ONNX graph surgery: physically remove pruned attention heads and FFN dims from an encoder graph.

Why in ONNX and not only in PyTorch: a masked checkpoint exports dense-shaped matrices, and ONNX
Runtime gains nothing from zeros. Cutting the graph keeps the export path standard (any exporter,
any HF version) while the shapes ORT sees get genuinely smaller.

How the encoder is found (no node names are trusted, they differ between exporters):
  attention — anchored on each Softmax fed (through Add/Mul/Div/Where/Cast) by MatMul(Q_heads, K_heads^T).
      From there: Q and K go up through Transpose / scalar Mul|Div to a Reshape (split into heads), then
      an optional bias Add and a MatMul with a constant [in, out] weight (or a packed QKV MatMul + Split);
      the probabilities go down to MatMul(P, V_heads), then Transpose -> Reshape (merge heads) ->
      MatMul(W_O) -> optional bias Add -> the residual Add.
  FFN — anchored on a MatMul with constant weight W1 [H, F] whose output (after an optional bias Add)
      flows only through element-wise ops (the activation; any GELU/ReLU/tanh-GELU decomposition) into
      exactly one MatMul with constant weight W2 [F, H], then an optional bias Add and the residual Add.
      Element-wise-only is what makes dropping a dim exact, so that is what we check, not a GELU shape.

What is rewritten per layer:
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from compress.errors import ArtifactError, GraphPatternError, InvalidConfigError, ValidationError

from .graph import Graph, op_counts, param_count

# Ops that act on each feature independently (given scalar or per-feature constant operands).
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Neg", "Abs", "Erf", "Tanh", "Sigmoid", "Relu",
    "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "HardSwish", "Mish", "Clip", "Gelu", "FastGelu",
    "BiasGelu", "QuickGelu", "Cast", "Identity", "Dropout",
}
# Fused attention kernels. com.microsoft Attention (packed QKV weight, what `optimum-cli onnxruntime
# optimize` and ORT's transformers optimizer emit) is rewritten; the others are refused by name.
FUSED_ATTENTION = {"Attention", "QAttention", "MultiHeadAttention", "PackedAttention", "PackedMultiHeadAttention", "GroupQueryAttention"}
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
def _where(node: onnx.NodeProto) -> str:
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


def _weight(g: Graph, p: Projection) -> np.ndarray:
    """The float [in, out] weight a projection multiplies by (int8 ones dequantized)."""
    w = g.const(p.matmul.input[1])
    if p.matmul.op_type != "MatMulInteger":
        return w
    zp = g.const(p.matmul.input[3]) if len(p.matmul.input) > 3 and p.matmul.input[3] else np.zeros((), np.int8)
    scale = g.const(p.int_scale.input[p.int_scale_index]) if p.int_scale is not None else np.ones((), np.float32)
    return (w.astype(np.float32) - zp.astype(np.float32).reshape(-1)[None, :] if zp.size > 1 else w.astype(np.float32) - float(zp)) * scale.reshape(-1)


# Ops that can turn tensor shapes into a scale factor (torch's SDPA decomposition computes
# 1/sqrt(head_size) at run time from Shape(Q)[-1]: Shape -> Slice -> Cast -> Sqrt -> Div -> Sqrt).
_SHAPE_ARITH = {"Shape", "Gather", "Slice", "Cast", "Sqrt", "Div", "Mul", "Add", "Sub", "Unsqueeze", "Squeeze",
                "Reciprocal", "Identity", "Constant", "Reshape", "Concat", *QDQ}


def _is_shape_scalar(g: Graph, name: str, depth: int = 0) -> bool:
    """True when `name` is a one-element value computed only from tensor shapes and constants. Such a
    factor does not depend on data, and the one exporters emit reads the head size, which surgery keeps."""
    if g.is_const(name):
        return depth > 0 or g.is_scalar_const(name)
    node = g.producer.get(name)
    if node is None or node.op_type not in _SHAPE_ARITH or depth > 12:
        return False
    if node.op_type == "Shape":
        return True
    if depth == 0 and node.op_type in ("Shape", "Concat", "Reshape"):
        return False  # a whole shape vector is no scale factor
    return all(not i or _is_shape_scalar(g, i, depth + 1) for i in node.input)


def _is_fake_quant(g: Graph, node: onnx.NodeProto | None) -> bool:
    """A QuantizeLinear / DequantizeLinear on an activation with per-tensor scale and zero point."""
    return (node is not None and node.op_type in QDQ and not g.is_const(node.input[0])
            and all(not i or g.is_scalar_const(i) for i in node.input[1:]))


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


def _fake_quant_chain(g: Graph, name: str) -> list[onnx.NodeProto]:
    """The fake-quant nodes between a residual Add's input `name` and the block output above it."""
    chain = []
    node = g.producer.get(name)
    while _is_fake_quant(g, node):
        chain.append(node)
        node = g.producer.get(node.input[0])
    return chain[::-1]


def _apply_fake_quant(g: Graph, chain: list[onnx.NodeProto], x: np.ndarray) -> np.ndarray:
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
            raise GraphPatternError(f"{where}: the {what} projection's Add has no constant bias operand ({_where(node)})")
        add, bias_index = node, consts[0]
        node = g.producer.get(_up_qdq(g, node.input[1 - bias_index]))
    integer = _integer_matmul(g, node)
    if integer is not None:
        node = integer[0]
    if node is None or node.op_type not in ("MatMul", "MatMulInteger"):
        found = _where(node) if node is not None else "a graph input"
        raise GraphPatternError(f"{where}: expected the {what} projection MatMul, found {found}")
    w = g.const(node.input[1])
    if w is None or w.ndim != 2:
        raise GraphPatternError(f"{where}: the {what} projection {_where(node)} has no constant 2-D weight")
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
    if t is None or t.op_type != "Transpose" or list(_attr(t, "perm", [])) != [0, 2, 1]:
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
        found = _where(node) if node is not None else "a graph input"
        raise GraphPatternError(f"{where}: expected a Reshape splitting {what} into heads, found {found}")
    layout = _compose(perms[::-1])
    if layout != expect:
        raise GraphPatternError(f"{where}: {what} heads are transposed with {layout}, expected {expect} (layout not recognised)")
    return _projection_above(g, node.input[0], what, where), node


def _scores_matmul(g: Graph, name: str, depth: int = 0) -> onnx.NodeProto | None:
    """MatMul(Q, K^T) feeding the Softmax through mask Add / scale Mul / Where / Cast, else None."""
    node = g.producer.get(name)
    if node is None or depth > 6:
        return None
    if node.op_type == "MatMul" and not g.is_const(node.input[0]) and not g.is_const(node.input[1]):
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
    where = f"attention at {_where(softmax)}"
    q, q_reshape = _head_path(g, scores.input[0], "Q", where, Q_PERM)
    k, k_reshape = _head_path(g, scores.input[1], "K", where, K_PERM)
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
        raise GraphPatternError(f"{where}: the context is transposed with {_compose(perms)} before merging, expected {MERGE_PERM}")
    merged = _down_qdq(g, merge.output[0])
    o_mm = _weight_matmul_below(g, merged)
    if o_mm is None:
        raise GraphPatternError(f"{where}: expected the merged heads to feed the output projection MatMul")
    o = _projection_above(g, _bias_add_or_self(g, o_mm), "O", where)
    residual, residual_in = _residual_after(g, o, where)
    block = AttentionBlock(softmax, q, k, v, [q_reshape, k_reshape, v_reshape], merge, o, residual, residual_in=residual_in)
    return block


def _attr(node: onnx.NodeProto, name: str, default=None):
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else onnx.helper.get_attribute_value(a)


def match_fused_attention(g: Graph, node: onnx.NodeProto) -> AttentionBlock:
    """A com.microsoft Attention node (packed [H, 3w] QKV weight and [3w] bias, num_heads attribute)
    followed by the output projection and the residual (Add or SkipLayerNormalization)."""
    where = f"fused {node.op_type} at {_where(node)}"
    if node.op_type not in _FUSED_EXTRA_INPUTS or node.domain != "com.microsoft":
        raise GraphPatternError(f"{where}: only com.microsoft Attention / QAttention are rewritten; shrink the graph before the ORT optimizer fuses it")
    w = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if w is None or w.ndim != 2:
        raise GraphPatternError(f"{where}: the packed QKV weight is not a constant 2-D tensor")
    if len(node.input) < 3 or not node.input[2] or g.const(node.input[2]) is None:
        raise GraphPatternError(f"{where}: the packed QKV bias is missing or not constant")
    if any(node.input[_FUSED_EXTRA_INPUTS[node.op_type]:]) or any(node.output[1:]):
        raise GraphPatternError(f"{where}: past state / attention bias inputs or present outputs are not supported")
    n = int(_attr(node, "num_heads", 0))
    sizes = list(_attr(node, "qkv_hidden_sizes", []) or [w.shape[1] // 3] * 3)
    if len(set(sizes)) != 1 or sum(sizes) != w.shape[1] or n <= 0 or sizes[0] % n:
        raise GraphPatternError(f"{where}: Q/K/V widths {sizes} with {n} heads are not a layout surgery can slice")
    out = _down_qdq(g, node.output[0])
    o_mm = _weight_matmul_below(g, out)
    if o_mm is None:
        raise GraphPatternError(f"{where}: expected the attention output to feed the output projection MatMul")
    o = _projection_above(g, _bias_add_or_self(g, o_mm), "O", where)
    residual, residual_in = _residual_after(g, o, where)
    packed = Projection(node)  # `matmul` is the Attention node: weight input 1, bias input 2
    block = AttentionBlock(node, packed, packed, packed, [], node, o, residual, residual_in=residual_in, fused=node)
    block.num_heads, block.head_size = n, sizes[0] // n
    return block


def _weight_matmul_below(g: Graph, x: str) -> onnx.NodeProto | None:
    """The MatMul reading `x` as its input, or the MatMulInteger reading x's DynamicQuantizeLinear."""
    node = g.sole_child(x)
    if node is not None and node.op_type == "DynamicQuantizeLinear":
        kids = g.children(node.output[0])
        node = kids[0] if len(kids) == 1 and kids[0].op_type == "MatMulInteger" and kids[0].input[0] == node.output[0] else None
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
    qlinear = sorted({n.op_type for n in g.graph.node if n.op_type.startswith("QLinear") or n.op_type in ("QGemm", "MatMulIntegerToFloat")})
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
            raise GraphPatternError(f"fused Attention nodes imply head sizes {sorted(fused_sizes)}" + (f", not {head_size}" if head_size else ""))
        head_size = fused_sizes.pop()
    if fused_sizes - {head_size}:
        raise GraphPatternError(f"fused Attention nodes imply head sizes {sorted(fused_sizes)}, the head reshapes {head_size}")
    for i, a in enumerate(attention):
        if a.fused is not None:
            if g.const(a.o.matmul.input[1]).shape[0] != a.num_heads * head_size:
                raise GraphPatternError(f"layer {i}: output projection rows differ from the attention width {a.num_heads * head_size}")
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
    sizes = _split_sizes(g, p.split, w.shape[1])
    return sizes[p.split_output]


def _split_sizes(g: Graph, split: onnx.NodeProto, total: int) -> list[int]:
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    if axis not in (-1, 2):
        raise GraphPatternError(f"{_where(split)} does not split the last axis; packed QKV layout not recognised")
    if len(split.input) > 1 and split.input[1]:
        sizes = g.const(split.input[1])
        if sizes is None:
            raise GraphPatternError(f"{_where(split)} has split sizes computed at run time")
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
def detect_kept(g: Graph, layers: list[Layer]) -> list[dict]:
    """Per layer: heads whose W_O rows are not all zero, FFN dims whose W2 row is not all zero."""
    kept = []
    for layer in layers:
        a, f = layer.attention, layer.ffn
        wo = _weight(g, a.o)
        d = a.head_size
        heads = [h for h in range(a.num_heads) if np.any(wo[h * d : (h + 1) * d])]
        w2 = _weight(g, f.w2)
        dims = np.flatnonzero(np.any(w2 != 0, axis=1)).tolist()
        kept.append({"heads_kept": heads, "ffn_dims_kept": dims})
    return kept


# ---------------------------------------------------------------------- dead by input, bias folded
QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QAttention", "QLinearMatMul"}


def _output_bias_slot(proj: Projection, residual: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """Where a constant can be added to a block's output: its bias Add, or SkipLayerNorm's bias input."""
    if proj.add is not None:
        return proj.add, proj.bias_index
    if residual.op_type == "SkipLayerNormalization" and len(residual.input) > 4 and residual.input[4]:
        return residual, 4
    return None


def _v_columns(g: Graph, a: AttentionBlock) -> tuple[np.ndarray, np.ndarray | None]:
    """V's weight columns [H, heads*d] and bias (None without one), wherever V is packed."""
    if a.fused is not None:
        width = a.num_heads * a.head_size
        return g.const(a.fused.input[1])[:, 2 * width:], g.const(a.fused.input[2])[2 * width:]
    p = a.v
    w = _weight(g, p)
    b = g.const(p.add.input[p.bias_index]) if p.add is not None else None
    if p.split is not None:  # the bias Add sits before the Split: both cover Q, K and V
        sizes = _split_sizes(g, p.split, w.shape[1])
        start = sum(sizes[: p.split_output])
        cut = slice(start, start + sizes[p.split_output])
        w, b = w[:, cut], (b[cut] if b is not None else None)
    return w, b


def _activation_of(g: Graph, f: FfnBlock, x: np.ndarray) -> np.ndarray:
    """The FFN activation region evaluated by ONNX Runtime on a constant [F] input (what a dim whose
    W1 column is zero feeds W2: its bias through GELU / BiasGelu / any decomposition)."""
    pos = g.index()
    nodes = sorted(f.activation, key=lambda n: pos[id(n)])
    made = {o for n in nodes for o in n.output}
    src, dst = f.w1.output, f.w2.matmul.input[0]
    consts = {i for n in nodes for i in n.input if i and i != src and i not in made}
    inits = [onnx.numpy_helper.from_array(np.asarray(g.const(c)), c) for c in sorted(consts)]
    graph = onnx.helper.make_graph(
        [copy.deepcopy(n) for n in nodes], "ffn_activation",
        [onnx.helper.make_tensor_value_info(src, onnx.TensorProto.FLOAT, [1, len(x)])],
        [onnx.helper.make_tensor_value_info(dst, onnx.TensorProto.FLOAT, None)], inits)
    model = onnx.helper.make_model(graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version)
    return run(model, {src: x[None, :].astype(np.float32)})[dst].reshape(-1)


def fold_input_dead(g: Graph, layers: list[Layer], kept: list[dict]) -> list[dict]:
    """Heads whose V columns and FFN dims whose W1 column are all zero, though their output weights are
    not: each adds a constant to the block output (P @ (1 b_v) = b_v, since softmax rows sum to 1, then
    through W_O; act(b1_j) W2[j]). That constant is folded into the output bias and the structure is
    dropped from `kept` (edited in place). Quantized graphs are left alone: the activation quantization
    between those constants and the output projection would make the fold inexact, so the structure
    stays (exact, just not smaller). Returns per layer what was folded."""
    folded = [{"heads": [], "ffn_dims": []} for _ in layers]
    if any(n.op_type in QUANTIZED for n in g.graph.node):
        return folded
    for i, (layer, k) in enumerate(zip(layers, kept)):
        a, f = layer.attention, layer.ffn
        d = a.head_size
        slot = _output_bias_slot(a.o, a.residual)
        wv, bv = _v_columns(g, a)
        heads = [h for h in k["heads_kept"] if not np.any(wv[:, h * d:(h + 1) * d])]
        if heads and (slot is not None or bv is None or not np.any(bv)):
            wo = _weight(g, a.o)
            if bv is not None and slot is not None:
                delta = sum(bv[h * d:(h + 1) * d].astype(np.float64) @ wo[h * d:(h + 1) * d].astype(np.float64) for h in heads)
                node, j = slot
                _replace_const(g, node, j, g.const(node.input[j]) + delta, f"layer{i}.attention.output.bias_folded")
            k["heads_kept"] = [h for h in k["heads_kept"] if h not in heads]
            folded[i]["heads"] = heads
        slot = _output_bias_slot(f.w2, f.residual)
        w1 = _weight(g, f.w1)
        dims = [j for j in k["ffn_dims_kept"] if not np.any(w1[:, j])]
        if dims:
            b1 = g.const(f.w1.add.input[f.w1.bias_index]) if f.w1.add is not None else np.zeros(f.width, np.float32)
            act = _activation_of(g, f, b1)
            w2 = _weight(g, f.w2)
            delta = act[dims].astype(np.float64) @ w2[dims].astype(np.float64)
            if slot is None and np.any(delta):
                continue  # nowhere to fold a nonzero constant: keep the dims
            if slot is not None:
                node, j = slot
                _replace_const(g, node, j, g.const(node.input[j]) + delta, f"layer{i}.ffn.output.bias_folded")
            k["ffn_dims_kept"] = [j for j in k["ffn_dims_kept"] if j not in set(dims)]
            folded[i]["ffn_dims"] = dims
    return folded


def _check_kept(g: Graph, layers: list[Layer], kept: list[dict]) -> None:
    """kept (from compression.json) must index this graph and only drop structures that are zero;
    anything else means the graph and the json don't belong together."""
    if len(kept) != len(layers):
        raise ArtifactError(f"compression.json describes {len(kept)} layers but the graph has {len(layers)}")
    for i, (layer, k) in enumerate(zip(layers, kept)):
        a, f = layer.attention, layer.ffn
        heads, dims = list(k["heads_kept"]), list(k["ffn_dims_kept"])
        if any(not 0 <= h < a.num_heads for h in heads) or len(set(heads)) != len(heads):
            raise ArtifactError(f"layer {i}: heads_kept {heads} do not index the graph's {a.num_heads} heads")
        if any(not 0 <= j < f.width for j in dims) or len(set(dims)) != len(dims):
            raise ArtifactError(f"layer {i}: ffn_dims_kept do not index the graph's {f.width} FFN dims")
        live = detect_kept(g, [layer])[0]
        lost_heads = sorted(set(live["heads_kept"]) - set(heads))
        lost_dims = sorted(set(live["ffn_dims_kept"]) - set(dims))
        if lost_heads or lost_dims:
            what = f"heads {lost_heads}" if lost_heads else f"{len(lost_dims)} FFN dims (e.g. {lost_dims[:5]})"
            raise ArtifactError(
                f"layer {i}: compression.json marks {what} as pruned but their output weights in the graph are "
                "not zero; the ONNX file does not come from this checkpoint (re-export it)"
            )


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
    dq = g.dequantized(name) if g._resolve(name) is None else None
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
            inputs.append(g.add_initializer(v[index], f"{hint}.{what}") if v.size > 1 and dq_axis == axis else dq.input[j])
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
    w = _weight(g, bias)
    if bias.add is not None:
        b = g.const(bias.add.input[bias.bias_index])
    else:
        b = np.zeros(w.shape[1], dtype=w.dtype)
    b = _apply_fake_quant(g, _fake_quant_chain(g, block_out), b.astype(np.float32))
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
        raise GraphPatternError(f"{_where(sln)}: removing the whole block before a {sln.op_type} is not supported")
    if any(o for o in sln.output[1:3]):
        raise GraphPatternError(f"{_where(sln)}: its mean / inv_std_var outputs are used; cannot replace it")
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        raise GraphPatternError(f"{_where(sln)}: removing a whole block here needs LayerNormalization (opset >= 17), the graph has opset {opset}")
    skip = sln.input[1] if sln.input[0] == block_out else sln.input[0]
    total = bias.astype(np.float32)
    if len(sln.input) > 4 and sln.input[4]:
        total = total + g.const(sln.input[4]).astype(np.float32)
    summed = sln.output[3] if len(sln.output) > 3 and sln.output[3] else g.unique_name(hint + ".sum")
    g.add_node(onnx.helper.make_node("Add", [skip, g.add_initializer(total, hint)], [summed], name=g.unique_name(hint + ".add")))
    gamma = sln.input[2]
    beta = sln.input[3] if len(sln.input) > 3 and sln.input[3] else g.add_initializer(np.zeros_like(g.const(gamma)), hint + ".beta")
    g.add_node(onnx.helper.make_node("LayerNormalization", [summed, gamma, beta], [sln.output[0]], name=g.unique_name(hint + ".ln"),
                                     axis=-1, epsilon=float(_attr(sln, "epsilon", 1e-12))))
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
    sizes = _split_sizes(g, a.q.split, w.shape[1])
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


# Ops whose count before / after shrink shows that fusions and quantization survived the surgery.
REPORTED_OPS = ("Attention", "QAttention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "FusedMatMul", "MatMulInteger",
                "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


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
        return "int8 QDQ" if g.producer.get(src) is not None and g.producer[src].op_type == "DequantizeLinear" else "fp32"

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


def _layer_params(layer: Layer, hidden: int, attn_width: int, ffn_width: int) -> int:
    """Weights + biases of one layer's Q/K/V/O and FFN projections at the given widths. The output
    biases of a removed block stay (they are added to the residual), so they always count."""
    a, f = layer.attention, layer.ffn
    total = 4 * hidden * attn_width + 2 * hidden * ffn_width
    if attn_width:
        total += 3 * attn_width if a.fused is not None else sum(attn_width for p in (a.q, a.k, a.v) if p.add is not None)
    if ffn_width and f.w1.add is not None:
        total += ffn_width
    total += hidden * ((a.o.add is not None) + (f.w2.add is not None))
    return total


# --------------------------------------------------------------------------------------- entry point
def shrink(
    model: onnx.ModelProto,
    kept: list[dict] | None = None,
    num_heads: int | None = None,
    head_size: int | None = None,
    *,
    sample_inputs: list[dict[str, np.ndarray]] | None = None,
    atol: float = 1e-4,
) -> tuple[onnx.ModelProto, dict]:
    """Remove the heads / FFN dims not listed in `kept` (or, when kept is None, those whose output
    weights are all zero) and return (new model, report). The input model is not modified.

    kept: per layer {"heads_kept": [...], "ffn_dims_kept": [...]} indexing the graph's current heads/dims
    (compression.json's `layers` for a dense export). num_heads: the dense head count the indices refer
    to, checked against the graph. head_size: read from the graph when None.
    With sample_inputs, ORT outputs of the result are compared to the input model's (atol) and a
    ValidationError is raised on mismatch.
    """
    out = copy.deepcopy(model)
    g = Graph(out)
    layers, head_size = find_layers(g, head_size)
    if kept is not None and num_heads is not None:
        for i, layer in enumerate(layers):
            if layer.attention.num_heads != num_heads:
                raise ArtifactError(
                    f"layer {i} of the graph has {layer.attention.num_heads} heads but the structure describes "
                    f"{num_heads}: the graph was already shrunk or comes from another model"
                )
    source = "compression.json" if kept is not None else "zero weights"
    params_before, nodes_before, fused_before = param_count(out), len(out.graph.node), fused_op_counts(out)
    folded = [{"heads": [], "ffn_dims": []} for _ in layers]
    if kept is None:
        kept = detect_kept(g, layers)
        folded = fold_input_dead(g, layers, kept)
    else:
        _check_kept(g, layers, kept)

    shapes: dict = {}
    for i, (layer, k) in enumerate(zip(layers, kept)):
        heads = sorted(int(h) for h in k["heads_kept"])
        dims = sorted(int(j) for j in k["ffn_dims_kept"])
        a, f = layer.attention, layer.ffn
        hidden = g.const(a.o.matmul.input[1]).shape[1]
        layer.report = {
            "layer": i,
            "heads_before": a.num_heads,
            "heads_after": len(heads),
            "heads_kept": heads,
            "ffn_before": f.width,
            "ffn_after": len(dims),
            "attention_removed": not heads,
            "ffn_removed": not dims,
            "params_before": _layer_params(layer, hidden, a.num_heads * head_size, f.width),
            "params_after": _layer_params(layer, hidden, len(heads) * head_size, len(dims)),
            "heads_removed": sorted(set(range(a.num_heads)) - set(heads)),
            "found": describe_layer(g, layer),
            "bias_folded": folded[i],
        }
        _shrink_attention(g, i, a, heads, shapes)
        _shrink_ffn(g, i, f, dims)
    g.commit()
    g.prune_dead()
    finalize(out)
    report = {
        "source": source,
        "head_size": head_size,
        "layers": [layer.report for layer in layers],
        "params_before": params_before,
        "params_after": param_count(out),
        "nodes_before": nodes_before,
        "nodes_after": len(out.graph.node),
        "fused_ops_before": fused_before,
        "fused_ops_after": fused_op_counts(out),
        "op_counts": op_counts(out),
    }
    if sample_inputs:
        report["max_abs_diff"] = assert_close(model, out, sample_inputs, atol, what="shrunk graph")
    return out, report


def normalize_heads(model: onnx.ModelProto, head_size: int | None = None) -> onnx.ModelProto:
    """Same graph, but every head Reshape gets a constant [0, 0, heads, head_size] shape. Nothing is
    removed; this is what lets ORT's Attention fusion read the head count of a dense export too."""
    out = copy.deepcopy(model)
    g = Graph(out)
    layers, _ = find_layers(g, head_size)
    shapes: dict = {}
    for i, layer in enumerate(layers):
        _shrink_attention(g, i, layer.attention, list(range(layer.attention.num_heads)), shapes)
    g.commit()
    g.prune_dead()
    finalize(out)
    return out


def finalize(model: onnx.ModelProto) -> None:
    """Drop shape annotations (stale after surgery) and check the model.

    They are not re-inferred on purpose: with value_info present, ORT's own runtime optimizer fuses
    the FFN output Add + residual + LayerNorm into SkipLayerNormalization, which the fresh exports it
    would be compared with don't get — and that kernel is several times slower than Add + LayerNorm
    on our CPU (ORT 1.31). A shrunk graph should differ from its source only in size. (Stale
    value_info also breaks quantize_dynamic; see DESIGN.md.)"""
    del model.graph.value_info[:]
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ValidationError(f"the rewritten graph fails onnx.checker: {e}") from None


# --------------------------------------------------------------------------------------- comparing
def session(model: onnx.ModelProto, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types; the message is what matters
        raise ValidationError(f"ONNX Runtime cannot load the graph: {str(e).splitlines()[0]}") from None


def run(model_or_session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(model_or_session) if isinstance(model_or_session, onnx.ModelProto) else model_or_session
    names = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def assert_close(reference: onnx.ModelProto, candidate: onnx.ModelProto, sample_inputs, atol: float, what: str) -> float:
    """Max |candidate - reference| over every output and sample batch; ValidationError above atol."""
    ref_s, cand_s = session(reference), session(candidate)
    worst = 0.0
    for feeds in sample_inputs:
        ref, cand = run(ref_s, feeds), run(cand_s, feeds)
        for name, r in ref.items():
            if name not in cand or cand[name].shape != r.shape:
                raise ValidationError(f"{what}: output {name!r} is missing or has shape "
                                      f"{getattr(cand.get(name), 'shape', None)} instead of {r.shape}")
            worst = max(worst, float(np.max(np.abs(cand[name].astype(np.float64) - r))) if r.size else 0.0)
    if not worst <= atol:
        raise ValidationError(f"{what} differs from its source by {worst:.3g} (max abs) > atol {atol:g}")
    return worst


# --------------------------------------------------------------------------------------- files
def shrink_file(
    src: str | Path,
    dst: str | Path,
    kept: list[dict] | None = None,
    num_heads: int | None = None,
    head_size: int | None = None,
    *,
    optimize: bool = False,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> dict:
    """shrink() on files: checked against `src` on tokenized sentences (tokenizer files next to src)
    or random ids, optionally ORT-fused, then written atomically to `dst`. Returns the report."""
    from compress.artifacts import atomic_file

    from .samples import load_tokenizer, sample_inputs, vocab_size_from_graph

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ArtifactError(f"{src} does not exist")
    if dst.exists() and not overwrite:
        raise InvalidConfigError(f"{dst} exists; pass --overwrite or pick another path")
    if dst.resolve() == src.resolve():
        raise InvalidConfigError("the output must differ from the input (the input is the reference for validation)")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf DecodeError and friends
        raise ArtifactError(f"{src} is not a readable ONNX model ({type(e).__name__})") from None
    batches = sample_inputs([i.name for i in model.graph.input], load_tokenizer(src.parent), vocab_size_from_graph(model))
    new, report = shrink(model, kept, num_heads, head_size, sample_inputs=batches, atol=atol)
    if optimize:
        from .optimize import optimize as ort_optimize

        new, report["optimize"] = ort_optimize(new, batches, atol)
    with atomic_file(dst) as tmp:
        onnx.save(new, str(tmp))
    return report
