"""A thin, mutable view of an ONNX graph for pattern matching and batch edits.

Why our own and not onnxruntime.transformers.onnx_model.OnnxModel: the surgery needs exactly four
things — producer/consumer maps, constant lookup that sees through Identity/Constant nodes, parent-path
matching, and copy-on-write initializers (exporters deduplicate equal tensors, so one initializer can
be the bias of many layers; slicing it in place would corrupt the others). OnnxModel has the first
three spread over a large API whose maps go stale after edits, and nothing for the fourth. This file
is small enough to read in one sitting, and edits are collected and committed in one batch so the
maps are never half-updated while a pass is still matching.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper


class Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self._to_add: list[onnx.NodeProto] = []
        self._to_remove: set[int] = set()
        self._used_names: set[str] = set()
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.refresh()

    # ---------------------------------------------------------------- maps
    def refresh(self) -> None:
        """Rebuild producer/consumer/initializer maps from the current proto."""
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self._const_cache = {}  # rewiring can change what a non-initializer name resolves to
        self.graph_outputs = {o.name for o in self.graph.output}
        self.graph_inputs = {i.name for i in self.graph.input}
        self._used_names |= set(self.producer) | set(self.initializers) | self.graph_inputs
        self._used_names |= {n.name for n in self.graph.node if n.name}

    def index(self) -> dict[int, int]:
        """id(node) -> position in the (topologically sorted) node list; used to order layers."""
        return {id(n): i for i, n in enumerate(self.graph.node)}

    def nodes(self, op_type: str | None = None) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if op_type is None or n.op_type == op_type]

    # ---------------------------------------------------------------- constants
    def _resolve(self, name: str) -> str | onnx.NodeProto | None:
        """Initializer name or Constant node behind `name`, looking through Identity (the TorchScript
        exporter aliases deduplicated weights through Identity nodes); None if computed at run time."""
        for _ in range(8):  # Identity chains are short; the bound only guards against cycles
            if name in self.initializers:
                return name
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name = node.input[0]
                continue
            return node if node.op_type == "Constant" else None
        return None

    def dequantized(self, name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear node producing `name` from constant int8 values, scale and zero point
        (a weight or bias of a QDQ-quantized graph), else None."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        if any(a.name == "block_size" and a.i for a in node.attribute):
            return None  # blocked quantization: not a layout surgery can slice
        if all(not i or self._resolve(i) is not None for i in node.input):
            return node
        return None

    def _folded_qdq(self, name: str, depth: int = 0) -> onnx.NodeProto | None:
        """A QuantizeLinear / DequantizeLinear whose inputs are all constants (QDQ graphs quantize
        weights as DequantizeLinear(int8 initializer) and constants as DQ(Q(Constant)))."""
        node = self.producer.get(name)
        if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear") or depth > 4:
            return None
        if any(a.name == "block_size" and a.i for a in node.attribute):
            return None
        for i in node.input:
            if i and self._resolve(i) is None and self._folded_qdq(i, depth + 1) is None:
                return None
        return node

    def const(self, name: str) -> np.ndarray | None:
        """Value of a tensor known at graph-build time, else None (QuantizeLinear / DequantizeLinear of
        constants count: their value is what the graph computes with). Cached: initializers are never
        edited in place (edits add new ones), so a name's value never changes."""
        if name in self._const_cache:
            return self._const_cache[name]
        src = self._resolve(name)
        value = None
        qdq = self._folded_qdq(name) if src is None else None
        if qdq is not None:
            args = [self.const(i) if i else None for i in list(qdq.input) + [""] * (3 - len(qdq.input))]
            axis = next((a.i for a in qdq.attribute if a.name == "axis"), 1)
            value = (dequantize if qdq.op_type == "DequantizeLinear" else quantize)(*args, axis=axis)
        elif isinstance(src, str):
            value = numpy_helper.to_array(self.initializers[src])
        elif src is not None:
            attr = next((a for a in src.attribute if a.name.startswith("value")), None)
            if attr is not None and attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr is not None and attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                value = np.array(onnx.helper.get_attribute_value(attr))
        self._const_cache[name] = value
        return value

    def is_stored(self, name: str) -> bool:
        """A constant stored as such (initializer or Constant node, through Identity), as opposed to one
        computed from constants (a QDQ weight's DequantizeLinear)."""
        return self._resolve(name) is not None

    def is_const(self, name: str) -> bool:
        return self._resolve(name) is not None or self._folded_qdq(name) is not None

    def is_scalar_const(self, name: str) -> bool:
        if self._folded_qdq(name) is not None:
            return self.const(name).size == 1
        src = self._resolve(name)
        if isinstance(src, str):
            return int(np.prod(self.initializers[src].dims)) == 1
        v = self.const(name) if src is not None else None
        return v is not None and v.size == 1

    # ---------------------------------------------------------------- navigation
    def parent(self, node: onnx.NodeProto, i: int) -> onnx.NodeProto | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.producer.get(node.input[i])

    def children(self, name: str) -> list[onnx.NodeProto]:
        return list(self.consumers.get(name, []))

    def sole_child(self, name: str, op_type: str | Sequence[str] | None = None) -> onnx.NodeProto | None:
        """The only consumer of `name` (and of the op type asked), else None; graph outputs count as
        consumers we cannot rewire, so a tensor that is also a graph output has no sole child."""
        kids = self.children(name)
        if len(kids) != 1 or name in self.graph_outputs:
            return None
        ops = (op_type,) if isinstance(op_type, str) else op_type
        return kids[0] if ops is None or kids[0].op_type in ops else None

    def match_parent_path(
        self, node: onnx.NodeProto, ops: Sequence[str], inputs: Sequence[int | None]
    ) -> list[onnx.NodeProto] | None:
        """Walk up from `node`: step k follows input `inputs[k]` (None = any input) to a parent of type
        `ops[k]`. Returns the parents in order, or None if the path is not there."""
        path = []
        current = node
        for op, idx in zip(ops, inputs, strict=True):
            candidates = range(len(current.input)) if idx is None else [idx]
            found = None
            for i in candidates:
                p = self.parent(current, i)
                if p is not None and p.op_type == op:
                    found = p
                    break
            if found is None:
                return None
            path.append(found)
            current = found
        return path

    # ---------------------------------------------------------------- edits (batched)
    def unique_name(self, hint: str) -> str:
        name, k = hint, 0
        while name in self._used_names:
            k += 1
            name = f"{hint}_{k}"
        self._used_names.add(name)
        return name

    def add_initializer(self, array: np.ndarray, hint: str) -> str:
        """Add a fresh initializer (never overwrites: callers rewire to the returned name)."""
        name = self.unique_name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.initializers[name] = self.graph.initializer[-1]
        return name

    def set_input(self, node: onnx.NodeProto, i: int, name: str) -> None:
        """Rewire one input in place; the maps are updated at commit()."""
        node.input[i] = name

    def rewire(self, old: str, new: str) -> None:
        """Point every consumer of tensor `old` at `new`."""
        for node in self.children(old):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def add_node(self, node: onnx.NodeProto) -> None:
        self._to_add.append(node)

    def remove_nodes(self, nodes: Iterable[onnx.NodeProto]) -> None:
        self._to_remove.update(id(n) for n in nodes)

    def commit(self) -> None:
        """Apply queued additions/removals, keep the node list topologically sorted, rebuild maps."""
        kept = [n for n in self.graph.node if id(n) not in self._to_remove] + self._to_add
        ordered = topological_sort(kept, self.graph_inputs | set(self.initializers))
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        self._to_add, self._to_remove = [], set()
        self.refresh()

    def prune_dead(self) -> int:
        """Remove nodes whose outputs reach no graph output, then initializers nobody reads.
        Returns how many nodes were removed."""
        live: set[str] = set(self.graph_outputs)
        keep = []
        for node in reversed(self.graph.node):
            if any(o in live for o in node.output if o):
                keep.append(node)
                live.update(i for i in node.input if i)
                live.update(_subgraph_inputs(node))
        removed = len(self.graph.node) - len(keep)
        keep.reverse()
        del self.graph.node[:]
        self.graph.node.extend(keep)
        unused = [t for t in self.graph.initializer if t.name not in live]
        for t in unused:
            self.graph.initializer.remove(t)
        self.refresh()
        return removed


def check_structure(model: onnx.ModelProto) -> None:
    """ArtifactError (one line) for a graph no runtime could load: a tensor produced twice, a node reading
    a tensor nothing produces, a cycle, an initializer whose data does not fill its shape. Checked before
    surgery, whose matching would otherwise stop on it with whatever numpy or the sort raises."""
    from compress.core.errors import ArtifactError

    g = model.graph
    inits = [t.name for t in g.initializer]
    if len(set(inits)) != len(inits):
        dup = next(n for n in inits if inits.count(n) > 1)
        raise ArtifactError(f"the graph is corrupt: initializer {dup!r} is defined twice")
    available = set(inits) | {i.name for i in g.input}
    for node in g.node:
        for out in node.output:
            if out and out in available:
                raise ArtifactError(
                    f"the graph is corrupt: tensor {out!r} is produced twice ({node_desc(node)} and another)"
                )
            available.add(out)
    for node in g.node:
        missing = [i for i in node.input if i and i not in available]
        if missing:
            raise ArtifactError(f"the graph is corrupt: {node_desc(node)} reads {missing[0]!r}, which nothing produces")
    try:
        topological_sort(list(g.node), set(inits) | {i.name for i in g.input})
    except ValueError as e:
        raise ArtifactError("the graph is corrupt: its nodes form a cycle") from e
    for t in g.initializer:
        _check_tensor_data(t)


def _check_tensor_data(t: onnx.TensorProto) -> None:
    from compress.core.errors import ArtifactError

    if t.data_location == onnx.TensorProto.EXTERNAL:
        return  # read (and its size checked) by onnx.load
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    try:
        if t.raw_data:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            packed = t.data_type in _PACKED_TYPES
            expected = (count + 1) // 2 if packed else count * itemsize
            ok = len(t.raw_data) == expected
        else:
            ok = numpy_helper.to_array(t).size == count
    except (ValueError, TypeError, KeyError) as e:  # an unknown data type, typed fields that do not fit
        raise ArtifactError(f"the graph is corrupt: initializer {t.name!r} cannot be read ({e})") from e
    if not ok:
        dtype = (
            onnx.TensorProto.DataType.Name(t.data_type)
            if t.data_type in onnx.TensorProto.DataType.values()
            else t.data_type
        )
        raise ArtifactError(
            f"the graph is corrupt: initializer {t.name!r} holds {len(t.raw_data)} bytes, not what {count} "
            f"values of {dtype} take (shape {list(t.dims)})"
        )


# 4-bit types: two values per byte.
_PACKED_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def node_desc(node: onnx.NodeProto) -> str:
    """How error messages name a node: op type and name (or first output, for unnamed nodes)."""
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node`, or `default` when it is not set."""
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else onnx.helper.get_attribute_value(a)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read by If/Loop/Scan bodies (not in encoders, but don't break them)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_inputs(n)
    return names


def topological_sort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's algorithm, stable with respect to the given order (so diffs of the graph stay readable)."""
    producers = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = []
    users = defaultdict(list)
    for i, n in enumerate(nodes):
        needed = {
            producers[x]
            for x in list(n.input) + sorted(_subgraph_inputs(n))
            if x and x in producers and x not in available
        }
        needed.discard(i)
        deps.append(len(needed))
        for j in needed:
            users[j].append(i)
    ready = [i for i, d in enumerate(deps) if d == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        i = heapq.heappop(ready)
        out.append(nodes[i])
        for u in users[i]:
            deps[u] -= 1
            if deps[u] == 0:
                heapq.heappush(ready, u)
    if len(out) != len(nodes):
        raise ValueError("graph has a cycle or a node reads a tensor nobody produces")
    return out


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """ONNX DequantizeLinear: (x - zero_point) * scale, per tensor or per channel along `axis`."""
    x = x.astype(np.float32)
    if zero_point is not None:
        zero_point = zero_point.astype(np.float32)
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = None if zero_point is None else zero_point.reshape(shape)
    return ((x - zero_point) if zero_point is not None else x) * scale.astype(np.float32)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in the zero point's type."""
    dtype = zero_point.dtype if zero_point is not None else np.uint8
    zp = zero_point.astype(np.float32) if zero_point is not None else np.zeros((), np.float32)
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.size > 1 else zp
    info = np.iinfo(dtype)
    return np.clip(np.round(x.astype(np.float32) / scale) + zp, info.min, info.max).astype(dtype)


def param_count(model: onnx.ModelProto) -> int:
    """Elements in floating-point initializers (the model's parameters, embeddings included)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_type in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
            onnx.TensorProto.DOUBLE,
        ):
            total += int(np.prod(t.dims)) if len(t.dims) else 1
    return total


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        counts[n.op_type] += 1
    return dict(sorted(counts.items()))
