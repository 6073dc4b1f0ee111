"""Matching: find each encoder layer's attention and FFN blocks in an ONNX graph, and which heads /
FFN dims are dead (all-zero output weights). Nothing here changes the graph.

No node names are trusted, they differ between exporters:
  attention — anchored on each Softmax fed (through Add/Mul/Div/Where/Cast) by MatMul(Q_heads, K_heads^T).
      From there: Q and K go up through Transpose / scalar Mul|Div to a Reshape (split into heads), then
      an optional bias Add and a MatMul with a constant [in, out] weight (or a packed QKV MatMul + Split);
      the probabilities go down to MatMul(P, V_heads), then Transpose -> Reshape (merge heads) ->
      MatMul(W_O) -> optional bias Add -> the residual Add.
  FFN — anchored on a MatMul with constant weight W1 [H, F] whose output (after an optional bias Add)
      flows only through element-wise ops (the activation; any GELU/ReLU/tanh-GELU decomposition) into
      exactly one MatMul with constant weight W2 [F, H], then an optional bias Add and the residual Add.
      Element-wise-only is what makes dropping a dim exact, so that is what we check, not a GELU shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from compress.core.errors import GraphPatternError
from compress.core.record import LayerKeep
from exporters.graph import Graph

# Ops that act on each feature independently (given scalar or per-feature constant operands).
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Neg", "Abs", "Erf", "Tanh", "Sigmoid", "Relu",
    "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "HardSwish", "Mish", "Clip", "Gelu", "FastGelu",
    "BiasGelu", "QuickGelu", "Cast", "Identity", "Dropout",
}
# Fused attention kernels carry num_heads and a packed layout we do not rewrite: shrink first.
FUSED_ATTENTION = {"Attention", "MultiHeadAttention", "PackedAttention", "PackedMultiHeadAttention", "GroupQueryAttention"}
_PASS_SCORES = ("Add", "Mul", "Div", "Sub", "Where", "Cast")  # between QK^T and Softmax
_PASS_PROBS = ("Cast", "Where", "Dropout", "Identity")  # between Softmax and P @ V


# --------------------------------------------------------------------------------------- matched pieces
@dataclass
class Projection:
    """y = x @ W (+ b), possibly one slice of a packed QKV projection followed by Split."""

    matmul: onnx.NodeProto
    add: onnx.NodeProto | None = None
    bias_index: int = 0  # which input of `add` is the constant bias
    split: onnx.NodeProto | None = None  # packed QKV: the Split node, and which of its outputs is ours
    split_output: int = 0

    @property
    def output(self) -> str:
        node = self.add or self.matmul
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


@dataclass
class FfnBlock:
    w1: Projection
    activation: list[onnx.NodeProto]
    per_dim_consts: list[tuple[onnx.NodeProto, int]]  # (node, input index) of [F]-shaped constants
    w2: Projection
    residual: onnx.NodeProto
    width: int = 0


@dataclass
class Layer:
    attention: AttentionBlock
    ffn: FfnBlock
    report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------- matching
def _where(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _skip_scalar_ops(g: Graph, name: str, ops=("Mul", "Div"), also=()) -> tuple[str, onnx.NodeProto | None]:
    """Walk up through scalar Mul/Div (attention scaling) and `also` ops; return (tensor, its producer)."""
    node = g.producer.get(name)
    for _ in range(8):
        if node is None:
            break
        if node.op_type in ops:
            dynamic = [i for i in node.input if not g.is_scalar_const(i)]
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
        node = g.producer.get(node.input[1 - bias_index])
    if node is None or node.op_type != "MatMul":
        found = _where(node) if node is not None else "a graph input"
        raise GraphPatternError(f"{where}: expected the {what} projection MatMul, found {found}")
    w = g.const(node.input[1])
    if w is None or w.ndim != 2:
        raise GraphPatternError(f"{where}: the {what} projection {_where(node)} has no constant 2-D weight")
    if add is not None and g.const(add.input[bias_index]).shape != (w.shape[1],):
        raise GraphPatternError(f"{where}: the {what} bias does not match its weight's output width")
    return Projection(node, add, bias_index, split, split_output)


def _compose(perms: list[list[int]]) -> list[int]:
    """Permutation equivalent to applying `perms` in order (each as in ONNX Transpose)."""
    out = list(range(len(perms[0]))) if perms else []
    for p in perms:
        out = [out[j] for j in p]
    return out


# Layout each head tensor must have relative to the [B, L, heads, head_size] Reshape: anything else
# (e.g. heads interleaved differently) would make cutting contiguous column blocks wrong.
Q_PERM, K_PERM, V_PERM, MERGE_PERM = [0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3], [0, 2, 1, 3]


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


def _follow_down(g: Graph, name: str, passthrough: tuple[str, ...]) -> tuple[str, onnx.NodeProto | None]:
    node = g.sole_child(name)
    while node is not None and node.op_type in passthrough:
        name = node.output[0]
        node = g.sole_child(name)
    return name, node


def _residual_after(g: Graph, proj: Projection, where: str) -> onnx.NodeProto:
    node = g.sole_child(proj.output)
    if node is None or node.op_type != "Add" or any(g.is_const(i) for i in node.input):
        raise GraphPatternError(f"{where}: expected the block output {proj.output!r} to feed only a residual Add")
    return node


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
    perms, merge = [], g.sole_child(ctx.output[0])
    while merge is not None and merge.op_type == "Transpose":
        perms.append(list(next(a.ints for a in merge.attribute if a.name == "perm")))
        merge = g.sole_child(merge.output[0])
    if merge is None or merge.op_type != "Reshape":
        raise GraphPatternError(f"{where}: expected Transpose -> Reshape merging the heads after MatMul(P, V)")
    if _compose(perms) != MERGE_PERM:
        raise GraphPatternError(f"{where}: the context is transposed with {_compose(perms)} before merging, expected {MERGE_PERM}")
    o_mm = g.sole_child(merge.output[0], "MatMul")
    if o_mm is None or o_mm.input[0] != merge.output[0]:
        raise GraphPatternError(f"{where}: expected the merged heads to feed the output projection MatMul")
    o = _projection_above(g, _bias_add_or_self(g, o_mm), "O", where)
    block = AttentionBlock(softmax, q, k, v, [q_reshape, k_reshape, v_reshape], merge, o, _residual_after(g, o, where))
    return block


def _bias_add_or_self(g: Graph, mm: onnx.NodeProto) -> str:
    """Output of the MatMul's bias Add when there is one (a constant [out] operand), else of the MatMul."""
    add = g.sole_child(mm.output[0], "Add")
    w = g.const(mm.input[1])
    if add is not None and w is not None and w.ndim == 2:
        consts = [g.const(i) for i in add.input]
        if sum(c is not None for c in consts) == 1 and any(c is not None and c.shape == (w.shape[1],) for c in consts):
            return add.output[0]
    return mm.output[0]


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
    w1_proj = Projection(mm1)
    if src != mm1.output[0]:
        add = g.producer[src]
        w1_proj.add, w1_proj.bias_index = add, [g.is_const(i) for i in add.input].index(True)
    w2_out = _bias_add_or_self(g, stops[0])
    w2_proj = Projection(stops[0])
    if w2_out != stops[0].output[0]:
        add = g.producer[w2_out]
        w2_proj.add, w2_proj.bias_index = add, [g.is_const(i) for i in add.input].index(True)
    residual = g.sole_child(w2_out)
    if residual is None or residual.op_type != "Add" or any(g.is_const(i) for i in residual.input):
        return None  # e.g. a classifier head MatMul -> ReLU -> MatMul: no residual, not an encoder FFN
    return FfnBlock(w1_proj, region_nodes, per_dim, w2_proj, residual, width)


def find_layers(g: Graph, head_size: int | None) -> tuple[list[Layer], int]:
    """All encoder layers in graph order, and the head size used. Raises GraphPatternError naming what
    is missing rather than returning a partial match."""
    fused = [n for n in g.graph.node if n.op_type in FUSED_ATTENTION]
    if fused:
        raise GraphPatternError(
            f"the graph already contains fused {fused[0].op_type} nodes; shrink the graph exported by "
            "`compress export` before running the ORT optimizer (--optimize does this in the right order)"
        )
    attention = [b for b in (match_attention(g, s) for s in g.nodes("Softmax")) if b is not None]
    ffns = [b for b in (match_ffn(g, m) for m in g.nodes("MatMul")) if b is not None]
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
    head_size = _head_size(g, attention, head_size)
    for i, a in enumerate(attention):
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



# --------------------------------------------------------------------------------------- dead structure
def detect_kept(g: Graph, layers: list[Layer]) -> list[LayerKeep]:
    """Per layer: heads whose W_O rows are not all zero, FFN dims whose W2 row is not all zero."""
    kept = []
    for layer in layers:
        a, f = layer.attention, layer.ffn
        wo = g.const(a.o.matmul.input[1])
        d = a.head_size
        heads = [h for h in range(a.num_heads) if np.any(wo[h * d : (h + 1) * d])]
        w2 = g.const(f.w2.matmul.input[1])
        dims = np.flatnonzero(np.any(w2 != 0, axis=1)).tolist()
        kept.append(LayerKeep(heads, dims))
    return kept
