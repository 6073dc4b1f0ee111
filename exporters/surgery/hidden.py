"""Cutting pruned hidden dims (the residual stream's width) out of an encoder graph.

A hidden-pruned checkpoint (compress.core.hidden) is a plain one with exact zeros on the pruned dims, but
its residual LayerNorms normalise over the kept dims only. A graph exported from it normalises over all
dims, so it computes something else; cutting the dims out turns every LayerNorm (op, fused or decomposed
into ReduceMean / Sub / Pow / Sqrt / Div) into one over the kept dims: exactly the masked model. So the
result is checked against that model, never against the uncut graph (see tests/test_hidden_surgery.py).

How the stream is found: not by layer patterns but by following the hidden axis. It starts at the
embedding lookups (Gather of a constant [V, H] table, or EmbedLayerNormalization) and goes forward through
every node reading it, each of which must be one this module knows how to narrow:
  element-wise ops (their [H] constants, e.g. a decomposed LayerNorm's gamma / beta, sliced; per-token
  statistics such as a ReduceMean over the hidden axis broadcast and stay), LayerNormalization /
  SkipLayerNormalization (gamma, beta, bias), per-tensor fake-quant and DynamicQuantizeLinear (0 is always
  in their range, so the cut zeros do not move a scale), reductions / Gather / Slice / Squeeze over other
  axes (pooling, the CLS token), Reshape with a constant shape ending in H, Shape feeding Expand (mean
  pooling's mask); readers (MatMul / Gemm / MatMulInteger / fused (Q)Attention with a constant weight)
  lose the weight rows of the pruned dims and end the stream there.
A residual Add or SkipLayerNormalization input that is not stream yet is a block writing into it: walked
up through its bias Add and fake-quant to the MatMul / Gemm / int8 MatMulInteger whose weight columns
(with per-channel int8 scales / zero points) and bias are cut. Anything else on the path is refused with a
GraphPatternError naming the node: never a silently wrong graph. Nothing is changed until the whole plan
is known, so a refusal leaves no half-cut graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx

from compress.core.errors import ArtifactError, GraphPatternError
from exporters.graph import Graph, node_attr, node_desc
from exporters.surgery.quantized import integer_matmul
from exporters.surgery.rewrite import _slice_const
from exporters.surgery.validate import finalize

ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Abs",
    "Cast",
    "Identity",
    "Dropout",
    "Tanh",
    "Relu",
    "Erf",
    "Sigmoid",
    "Clip",
    "Max",
    "Min",
    "Where",
}
FAKE_QUANT = ("QuantizeLinear", "DequantizeLinear")
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")
READERS = ("MatMul", "Gemm", "FusedGemm", "MatMulInteger", "Attention", "QAttention")
LAYER_NORMS = ("LayerNormalization", "SkipLayerNormalization")


@dataclass
class Cut:
    """Keep the kept dims along `axis` of input `index` of `node` (a constant); `role` says what it is."""

    node: onnx.NodeProto
    index: int
    axis: int
    role: str  # table, norm (LayerNorm gamma / beta / bias, [H] constants on the stream), reader, writer, int8
    zero_point: str | None = None  # int8 tables / gammas: the tensor that means 0


@dataclass
class Plan:
    hidden: int
    cuts: list[Cut] = field(default_factory=list)
    reshapes: list[onnx.NodeProto] = field(default_factory=list)  # constant target shape ending in H
    outputs: list[str] = field(default_factory=list)  # graph outputs carrying the stream


class _Walk:
    """The forward pass over the graph, classifying tensors: stream (last axis is the hidden one), narrow
    (a per-token statistic over the hidden axis: last dim 1), stream_shape (Shape of a stream tensor)."""

    def __init__(self, g: Graph, shapes: dict[str, list]):
        self.g, self.shapes = g, shapes
        self.stream: set[str] = set()
        self.narrow: set[str] = set()
        self.stream_shape: set[str] = set()
        self.hidden: int | None = None
        self.plan: Plan | None = None
        self.writers_done: set[str] = set()
        self.ranks: dict[str, int | None] = {}  # of stream tensors, where onnx cannot infer it (contrib ops)

    def emit(self, name: str, rank: int | None) -> None:
        """`name` carries the stream, with this rank (None: unknown)."""
        self.stream.add(name)
        self.ranks[name] = rank

    # ------------------------------------------------------------------ helpers
    def refuse(self, node: onnx.NodeProto, why: str) -> None:
        raise GraphPatternError(f"hidden-dim cut: {node_desc(node)} {why}; the graph is left unchanged")

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return len(s) if s is not None else self.ranks.get(name)

    def last_dim(self, name: str):
        s = self.shapes.get(name)
        return s[-1] if s else None

    def set_hidden(self, h: int, node: onnx.NodeProto) -> None:
        if self.hidden is None:
            self.hidden = h
            self.plan = Plan(h)
        elif h != self.hidden:
            self.refuse(node, f"has hidden width {h}, another embedding has {self.hidden}")

    def cut(self, node, index, axis, role, zero_point=None) -> None:
        self.plan.cuts.append(Cut(node, index, axis, role, zero_point))

    def const_vector(self, node, index) -> None:
        """A constant operand of an element-wise op on the stream: [.., H] is cut, [.., 1] / scalar broadcast."""
        c = self.g.const(node.input[index])
        if c.ndim == 0 or c.shape[-1] == 1:
            return
        if c.shape[-1] != self.hidden or any(d != 1 for d in c.shape[:-1]):
            self.refuse(node, f"adds a constant of shape {list(c.shape)} to the residual stream (hidden {self.hidden})")
        self.cut(node, index, -1, "norm")

    # ------------------------------------------------------------------ seeds
    def seed(self, node: onnx.NodeProto) -> bool:
        g = self.g
        if node.op_type in ("EmbedLayerNormalization", "QEmbedLayerNormalization"):
            # QEmbedLayerNormalization: int8 tables / gamma / beta with per-tensor scales (inputs 8-12)
            # and zero points (13-17)
            quantized = node.op_type.startswith("Q")
            gamma = g.const(node.input[5]) if len(node.input) > 6 else None
            if gamma is None or g.const(node.input[6]) is None:
                self.refuse(node, "has no constant gamma / beta")
            if quantized and any(g.const(i) is None or g.const(i).size != 1 for i in node.input[8:18] if i):
                self.refuse(node, "has int8 tables without per-tensor scales / zero points")
            self.set_hidden(gamma.shape[-1], node)

            def zp(j):
                return node.input[j + 11] if quantized and len(node.input) > j + 11 and node.input[j + 11] else None

            for j in (2, 3, 4):
                if j < len(node.input) and node.input[j]:
                    t = g.const(node.input[j])
                    if t is None or t.ndim != 2 or t.shape[1] != self.hidden:
                        self.refuse(node, f"input {j} is not a constant [*, {self.hidden}] embedding table")
                    self.cut(node, j, 1, "table", zp(j))
            self.cut(node, 5, 0, "norm", zp(5))
            self.cut(node, 6, 0, "norm", zp(6))
            self.emit(node.output[0], 3)
            if len(node.output) > 2 and node.output[2]:
                self.emit(node.output[2], 3)
            return True
        if node.op_type == "Gather" and node_attr(node, "axis", 0) == 0 and node.input[0] not in self.stream:
            t = g.const(node.input[0])
            if t is not None and t.ndim == 2 and t.dtype.kind in "fiu" and t.shape[0] > 1 and t.shape[1] > 1:
                if t.dtype.kind in "iu" and t.dtype.itemsize > 1:
                    return False  # an int64 lookup (position ids buffer), not an embedding table
                self.set_hidden(t.shape[1], node)
                dq = g.sole_child(node.output[0], "DequantizeLinear") if t.dtype.kind in "iu" else None
                if t.dtype.kind in "iu" and (dq is None or not self.per_tensor(dq)):
                    self.refuse(node, "gathers an int8 table not dequantized per tensor")
                zp = dq.input[2] if dq is not None and len(dq.input) > 2 and dq.input[2] else None
                self.cut(node, 0, 1, "table", zp)
                ids = self.rank(node.input[1])
                self.emit(node.output[0], None if ids is None else ids + 1)
                return True
        return False

    # ------------------------------------------------------------------ forward
    def visit(self, node: onnx.NodeProto) -> None:
        ins = [i for i in node.input if i]
        if self.seed(node):
            return
        touches = [i for i in ins if i in self.stream]
        if not touches:
            if any(i in self.stream_shape for i in ins):
                self.shape_consumer(node)
            elif any(i in self.narrow for i in ins) and node.op_type in ELEMENTWISE:
                if all(i in self.narrow or self.g.is_const(i) or self.last_dim(i) == 1 for i in ins):
                    self.narrow.update(o for o in node.output[:1] if o)
            return
        op = node.op_type
        if op in ELEMENTWISE or (op in FAKE_QUANT and self.per_tensor(node)):
            self.elementwise(node)
        elif op == "DynamicQuantizeLinear":
            self.emit(
                node.output[0], self.rank(node.input[0])
            )  # scale / zero point: scalars; the cut zeros never set the range
        elif op in LAYER_NORMS:
            self.layer_norm(node)
        elif op in READERS:
            self.reader(node)
        elif op in REDUCE:
            self.reduce(node)
        elif op in ("Gather", "Slice", "Squeeze", "Unsqueeze"):
            self.other_axis(node)
        elif op == "Reshape":
            self.reshape(node)
        elif op == "Shape":
            start, end = node_attr(node, "start", 0), node_attr(node, "end", None)
            if start == 0 and end is None:
                self.stream_shape.add(node.output[0])
            elif end is not None and (end >= 0 or end <= -2) and (self.rank(node.input[0]) or 0) > 0:
                pass  # reads the leading dims only
            else:
                self.refuse(node, "reads the hidden size of the residual stream")
        elif op == "Expand" and node.input[0] in self.stream:
            self.emit(node.output[0], self.rank(node.input[0]))
        else:
            self.refuse(node, "reads the residual stream and is not an op the hidden-dim cut knows")

    def per_tensor(self, node) -> bool:
        return all(not i or self.g.is_scalar_const(i) for i in node.input[1:])

    def elementwise(self, node: onnx.NodeProto) -> None:
        g = self.g
        for j, name in enumerate(node.input):
            if not name or name in self.stream or name in self.narrow:
                continue
            if node.op_type in FAKE_QUANT and j > 0:
                continue
            if g.is_const(name):
                self.const_vector(node, j)
            elif self.last_dim(name) == 1:
                continue  # e.g. the attention mask as [B, L, 1] in mean pooling
            elif node.op_type == "Add":
                self.writer(name, node)  # a residual Add: the other operand is a block writing into the stream
            else:
                self.refuse(node, f"combines the residual stream with the computed tensor {name!r} of unknown width")
        ranks = [self.rank(i) for i in node.input if i in self.stream]
        self.emit(node.output[0], None if None in ranks else max(ranks))

    def layer_norm(self, node: onnx.NodeProto) -> None:
        g = self.g
        if node.op_type == "LayerNormalization":
            axis = node_attr(node, "axis", -1)
            r = self.rank(node.input[0])
            if node.input[0] not in self.stream or not (axis == -1 or (r is not None and axis == r - 1)):
                self.refuse(node, "does not normalise the residual stream over its last axis")
            slots = [1, 2]
        else:
            for j in (0, 1):
                if node.input[j] not in self.stream:
                    self.writer(node.input[j], node)
            slots = [2, 3, 4]
        for j in slots:
            if j < len(node.input) and node.input[j]:
                c = g.const(node.input[j])
                if c is None or c.shape != (self.hidden,):
                    self.refuse(node, f"input {j} is not a constant [{self.hidden}] vector")
                self.cut(node, j, 0, "norm")
        r = self.rank(node.input[0]) or self.rank(node.input[1])
        self.emit(node.output[0], r)
        for k in (1, 2):
            if len(node.output) > k and node.output[k]:
                self.narrow.add(node.output[k])
        if node.op_type != "LayerNormalization" and len(node.output) > 3 and node.output[3]:
            self.emit(node.output[3], r)

    def reader(self, node: onnx.NodeProto) -> None:
        g = self.g
        op = node.op_type
        if node.input[0] not in self.stream or any(i in self.stream for i in node.input[1:]):
            self.refuse(node, "reads the residual stream other than as its data input")
        w = g.const(node.input[1])
        if w is None or w.ndim != 2:
            self.refuse(node, "reads the residual stream with a weight that is not a constant matrix")
        axis = 0
        if op in ("Gemm", "FusedGemm"):  # FusedGemm: ORT's Gemm + activation, in its saved graphs
            if node_attr(node, "transA", 0):
                self.refuse(node, "reads the residual stream transposed (transA=1)")
            axis = 1 if node_attr(node, "transB", 0) else 0
        if w.shape[axis] != self.hidden:
            self.refuse(node, f"has a weight of shape {list(w.shape)}, not {self.hidden} input rows")
        self.cut(node, 1, axis, "reader")

    def reduce(self, node: onnx.NodeProto) -> None:
        r = self.rank(node.input[0])
        axes = node_attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            v = self.g.const(node.input[1])
            axes = None if v is None else [int(a) for a in v.reshape(-1)]
        if axes is None:
            self.refuse(node, "reduces the residual stream over axes not known when the graph is built")
        last = [a for a in axes if a == -1 or (r is not None and a == r - 1)]
        if any(a >= 0 for a in axes) and r is None:
            self.refuse(node, "reduces the residual stream over an axis of unknown position")
        if not last:  # pooling over tokens keeps the hidden axis
            self.emit(node.output[0], None if r is None else r - (0 if node_attr(node, "keepdims", 1) else len(axes)))
        elif len(axes) == 1 and node_attr(node, "keepdims", 1):
            self.narrow.add(node.output[0])  # a per-token statistic (LayerNorm's mean / variance)
        else:
            self.refuse(node, "reduces the residual stream over the hidden axis together with others")

    def other_axis(self, node: onnx.NodeProto) -> None:
        """Gather / Slice / Squeeze / Unsqueeze over axes other than the hidden one (the CLS token)."""
        g = self.g
        r = self.rank(node.input[0])
        if node.input[0] not in self.stream:
            self.refuse(node, "uses the residual stream as indices")
        if node.op_type == "Gather":
            axes = [node_attr(node, "axis", 0)]
        elif node.op_type == "Slice":
            v = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if v is None and len(node.input) > 3 and node.input[3]:
                self.refuse(node, "slices the residual stream along axes computed at run time")
            axes = [int(a) for a in v.reshape(-1)] if v is not None else list(range(len(g.const(node.input[1]))))
        else:
            axes = node_attr(node, "axes", None)
            if axes is None and len(node.input) > 1:
                v = g.const(node.input[1])
                axes = None if v is None else [int(a) for a in v.reshape(-1)]
            if axes is None:
                self.refuse(node, "has axes unknown when the graph is built")
        for a in axes:
            if a < 0 or r is None or a >= r - 1:
                if node.op_type == "Unsqueeze" and a >= 0 and r is not None and a < r:
                    continue  # inserted before the hidden axis
                self.refuse(node, f"acts on axis {a} of the residual stream, which may be the hidden axis")
        if node.op_type == "Gather":
            idx = self.g.const(node.input[1])
            k = self.rank(node.input[1]) if idx is None else idx.ndim
            r_out = None if k is None else r - 1 + k
        else:
            r_out = r + {"Slice": 0, "Squeeze": -len(axes), "Unsqueeze": len(axes)}[node.op_type]
        self.emit(node.output[0], r_out)

    def reshape(self, node: onnx.NodeProto) -> None:
        shape = self.g.const(node.input[1])
        if shape is None:
            self.refuse(node, "reshapes the residual stream to a shape computed at run time")
        if shape.size == 0 or int(shape.reshape(-1)[-1]) != self.hidden:
            self.refuse(node, f"reshapes the residual stream to {shape.tolist()}, not keeping the hidden axis last")
        self.plan.reshapes.append(node)
        self.emit(node.output[0], shape.size)

    def shape_consumer(self, node: onnx.NodeProto) -> None:
        """Shape(stream) feeds Expand (mean pooling's mask, which then follows the cut) or is indexed
        at a leading dim; anything reading the hidden size itself is refused."""
        g = self.g
        if node.op_type == "Expand" and node.input[1] in self.stream_shape:
            self.emit(node.output[0], self.rank(g.producer[node.input[1]].input[0]))
            return
        if node.op_type == "Gather" and node.input[0] in self.stream_shape:
            idx = g.const(node.input[1])
            src = g.producer[node.input[0]]
            r = self.rank(src.input[0])
            if idx is not None and r is not None and all(0 <= int(i) < r - 1 for i in idx.reshape(-1)):
                return
        self.refuse(node, "reads the shape of the residual stream in a way the hidden-dim cut does not follow")

    # ------------------------------------------------------------------ writers
    def writer(self, name: str, residual: onnx.NodeProto) -> None:
        """Walk up from a block's output into the residual: bias Add, fake-quant, then the weight op."""
        g = self.g
        if name in self.writers_done:
            return
        start = name
        for _ in range(8):
            node = g.producer.get(name)
            if node is None:
                self.refuse(residual, f"adds the graph input {name!r} to the residual stream")
            if len(g.children(name)) != 1 and name != start:
                self.refuse(node, "writes into the residual stream and is read elsewhere too")
            op = node.op_type
            consts = [j for j, i in enumerate(node.input) if i and g.is_const(i)]
            if op == "Add" and len(consts) == 1:
                self.const_vector(node, consts[0])
                name = node.input[1 - consts[0]]
            elif op in FAKE_QUANT and self.per_tensor(node):
                name = node.input[0]
            elif op == "Reshape":
                self.reshape_writer(node)
                name = node.input[0]
            elif op in ("MatMul", "Gemm"):
                self.writer_weight(node)
                break
            elif op == "Mul" and integer_matmul(g, node) is not None:
                mm, scale, k = integer_matmul(g, node)
                self.writer_weight(mm)
                if len(mm.input) > 3 and mm.input[3] and g.const(mm.input[3]).size > 1:
                    self.cut(mm, 3, 0, "int8")
                if g.const(scale.input[k]).size > 1:
                    self.cut(scale, k, 0, "int8")
                break
            else:
                self.refuse(node, "writes into the residual stream and is not a bias Add or weight MatMul / Gemm")
        self.writers_done.add(start)

    def writer_weight(self, node: onnx.NodeProto) -> None:
        g = self.g
        w = g.const(node.input[1])
        if w is None or w.ndim != 2:
            self.refuse(node, "writes into the residual stream without a constant weight matrix")
        axis = 1
        if node.op_type == "Gemm":
            if node_attr(node, "transA", 0):
                self.refuse(node, "has transA=1")
            axis = 0 if node_attr(node, "transB", 0) else 1
            if len(node.input) > 2 and node.input[2]:
                self.const_vector(node, 2)
        if w.shape[axis] != self.hidden:
            self.refuse(node, f"writes into the residual stream with a weight of shape {list(w.shape)}")
        self.cut(node, 1, axis, "writer")

    def reshape_writer(self, node: onnx.NodeProto) -> None:
        shape = self.g.const(node.input[1])
        if shape is None or shape.size == 0 or int(shape.reshape(-1)[-1]) != self.hidden:
            self.refuse(node, "reshapes a block output into the residual stream without a constant [.., H] shape")
        self.plan.reshapes.append(node)


def elements(model: onnx.ModelProto) -> int:
    """Initializer elements, int8 ones included (graph.param_count counts float weights only)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Inferred shapes (dims as int, or None when symbolic) of every tensor onnx can infer."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # contrib ops or external data: what the graph declares is all there is
        inferred = model
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for t in inferred.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def plan_hidden(g: Graph) -> Plan:
    """Follow the residual stream through the graph; GraphPatternError for anything not recognised."""
    w = _Walk(g, _shapes(g.model))
    for node in g.graph.node:
        w.visit(node)
    if w.plan is None:
        raise GraphPatternError("hidden-dim cut: no embedding table found (no Gather of a constant [vocab, H] matrix)")
    if not any(c.role == "norm" for c in w.plan.cuts) or not any(c.role == "reader" for c in w.plan.cuts):
        raise GraphPatternError("hidden-dim cut: no LayerNorm or weight reading the embeddings found")
    w.plan.outputs = [o.name for o in g.graph.output if o.name in w.stream]
    return w.plan


def _dims_zero(g: Graph, plan: Plan) -> np.ndarray:
    """Per hidden dim: every LayerNorm gamma / beta, [H] constant on the stream and embedding column is 0
    (int8 ones: equal to their zero point)."""
    dead = np.ones(plan.hidden, bool)
    for c in plan.cuts:
        if c.role in ("norm", "table"):
            v = np.asarray(g.const(c.node.input[c.index]))
            zero = 0
            if v.dtype.kind in "iu":
                zero = int(np.asarray(g.const(c.zero_point)).reshape(-1)[0]) if c.zero_point else 0
            v = np.moveaxis(v.astype(np.float64), c.axis, -1).reshape(-1, plan.hidden)
            dead &= ~np.any(v != zero, axis=0)
    return dead


def has_zero_embedding_columns(model: onnx.ModelProto) -> bool:
    """Cheap evidence of hidden pruning that needs no walk of the stream: a float embedding table (a
    constant [vocab, H] Gather input, or EmbedLayerNormalization's word table) with an all-zero column.
    Trained embeddings never have one; compress.core.hidden.zero_pruned writes one per pruned dim."""
    g = Graph(model)
    for node in g.graph.node:
        index = {"Gather": 0, "EmbedLayerNormalization": 2}.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        table = g.const(node.input[index])
        if table is None:
            continue
        table = np.asarray(table)
        if table.ndim == 2 and table.dtype.kind == "f" and table.shape[0] > 1 and not np.all(table.any(axis=0)):
            return True
    return False


def detect_hidden(g: Graph, plan: Plan) -> list[int]:
    return np.flatnonzero(~_dims_zero(g, plan)).tolist()


def shrink_hidden(
    model: onnx.ModelProto,
    kept: list[int] | None = None,
    *,
    sample_inputs: list[dict[str, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Cut the hidden dims not in `kept` (None: those whose LayerNorm gammas / betas and embedding columns
    are all exactly zero) out of the residual stream. Returns (model, report); the input is not modified.
    A graph with nothing to cut comes back unchanged. The result normalises its LayerNorms over the kept
    dims only, by design: it is the hidden-masked model, not the uncut graph. With sample_inputs it is run
    once in ONNX Runtime (there is no graph to compare with; tests compare with the PyTorch model)."""
    out = copy.deepcopy(model)
    g = Graph(out)
    plan = plan_hidden(g)
    size = plan.hidden
    if kept is None:
        source = "zero weights"
        kept = detect_hidden(g, plan)
    else:
        source = "given"
        kept = sorted(int(i) for i in kept)
        if len(set(kept)) != len(kept) or any(not 0 <= i < size for i in kept):
            raise ArtifactError(f"hidden kept dims do not index the graph's hidden size {size}")
        live = sorted(set(np.flatnonzero(~_dims_zero(g, plan)).tolist()) - set(kept))
        if live:
            raise ArtifactError(
                f"hidden dims {live[:5]} are marked pruned but the graph's LayerNorm gamma / beta or embeddings are "
                "not zero there: the ONNX file does not come from this checkpoint (re-export it)"
            )
    report = {
        "source": source,
        "hidden_before": size,
        "hidden_after": len(kept),
        "kept": kept,
        "params_before": elements(model),
    }
    if len(kept) == size:
        return model, {**report, "params_after": report["params_before"], "note": "no pruned hidden dims; unchanged"}
    if not kept:
        raise ArtifactError("every hidden dim is pruned: nothing would be left of the model")
    index = np.asarray(kept, np.int64)
    done: dict[tuple[str, int], str] = {}
    for c in plan.cuts:  # shared initializers (exporters deduplicate) are cut once and shared again
        key = (c.node.input[c.index], c.axis)
        if key in done:
            g.set_input(c.node, c.index, done[key])
            continue
        hint = (c.node.name or c.node.op_type) + f".hidden_{c.role}"
        _slice_const(g, c.node, c.index, index, c.axis, hint)
        done[key] = c.node.input[c.index]
    for node in plan.reshapes:
        shape = np.array(g.const(node.input[1]), np.int64).reshape(-1)
        shape[-1] = len(kept)
        g.set_input(node, 1, g.add_initializer(shape, (node.name or "reshape") + ".hidden_shape"))
    for o in out.graph.output:
        if o.name in plan.outputs and o.type.tensor_type.shape.dim:
            dim = o.type.tensor_type.shape.dim[-1]
            if dim.HasField("dim_value"):
                dim.dim_value = len(kept)
    g.commit()
    g.prune_dead()
    finalize(out, source=model)
    if sample_inputs:
        from exporters.sessions import run

        run(out, sample_inputs[0])
    roles = {}
    for c in plan.cuts:
        roles[c.role] = roles.get(c.role, 0) + 1
    report.update(
        params_after=elements(out),
        cut=roles,
        reshapes=len(plan.reshapes),
        outputs_narrowed=plan.outputs,
        note="LayerNorms now normalise over the kept dims only (the hidden-masked model), by design",
    )
    return out, report
