"""The graph-zoo check, shared by tests/test_zoo.py and benchmarks/graph_zoo.py.

For one zoo graph: zero some heads (layer 1 loses all of them) and FFN dims directly in the graph's
weights, shrink it, and compare with the unshrunk zeroed graph in ONNX Runtime.

The weights are located here without the surgery's matcher on purpose: the surgery is what is under
test, so the fixture must not inherit its blind spots. What is used instead is only what every encoder
export shares: in graph order, each layer consumes its attention projections ([H, H] each, or one packed
[H, 3H] for fused Attention) and then W1 [H, F] and W2 [F, H]; the output projection is the last [H, H]
before W1. A weight is a constant matrix read by MatMul / MatMulInteger / com.microsoft Attention,
possibly through DequantizeLinear (QDQ). int8 weights are "zeroed" by setting them to their zero point.
The input-side bias of a projection (zeroed with biases=True) is the constant [out] operand of the first
Add / BiasGelu / FastGelu below it, past the scale Mul/Div and Cast of int8 and fake-quant pairs; fused
Attention holds its packed bias as input 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ZOO = Path(__file__).parent / "zoo"


def dead_heads(num_heads: int) -> dict[int, list[int]]:
    return {0: [1, 3], 1: list(range(num_heads))}  # layer 1 loses all its heads


def dead_dims(width: int) -> dict[int, list[int]]:
    return {0: list(range(0, width, 3)), 1: list(range(width // 4))}


def entries(root: Path = ZOO) -> list[str]:
    return sorted(p.stem for p in Path(root).glob("*.json"))


def meta(name: str, root: Path = ZOO) -> dict:
    return json.loads((Path(root) / f"{name}.json").read_text())


def load(name: str, root: Path = ZOO) -> onnx.ModelProto:
    return onnx.load(str(Path(root) / f"{name}.onnx"))  # external data is read from beside the file


# ------------------------------------------------------------------------------------------ locating
@dataclass
class Weight:
    """A constant [in, out] matrix and how to write zeros into it."""

    init: str  # initializer name holding the (possibly int8) values
    zero_point: np.ndarray | None = None  # int8: the value that means 0 (scalar, or one per channel)
    shape: tuple = ()
    axis: int = 1  # the channel axis of a per-channel zero point
    bias: "Weight | None" = None  # the [out] bias added to this weight's product, when located


@dataclass
class LayerWeights:
    qkv: list[Weight] = field(default_factory=list)  # three [H, H], or one packed [H, 3H]
    o: Weight | None = None
    w1: Weight | None = None
    w2: Weight | None = None
    qkv_bias: list[Weight | None] = field(default_factory=list)  # one per qkv entry
    b1: Weight | None = None


def _init_behind(model: onnx.ModelProto, producers: dict, name: str) -> str | None:
    inits = {t.name for t in model.graph.initializer}
    for _ in range(4):
        if name in inits:
            return name
        node = producers.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def _array(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def weights_in_order(model: onnx.ModelProto) -> list[Weight]:
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "MatMulInteger") or (
            node.op_type in ("Attention", "QAttention") and node.domain == "com.microsoft"
        ):
            src = node.input[1]
            dq = producers.get(src)
            zp, axis = None, 1  # MatMulInteger: per-channel means per output column
            if dq is not None and dq.op_type == "DequantizeLinear":  # QDQ weight
                src = dq.input[0]
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                zp_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
                zp = _array(model, _init_behind(model, producers, zp_name)) if zp_name else np.zeros((), np.int8)
            elif node.op_type in ("MatMulInteger", "QAttention"):
                j = 3 if node.op_type == "MatMulInteger" else 7  # the weight zero point input
                zp_name = node.input[j] if len(node.input) > j and node.input[j] else None
                zp = _array(model, _init_behind(model, producers, zp_name)) if zp_name else np.zeros((), np.int8)
            init = _init_behind(model, producers, src)
            if init is None:
                continue
            shape = tuple(_array(model, init).shape)
            if len(shape) == 2:
                w = Weight(init, zp, shape, axis % 2)
                w.bias = _bias_of(model, producers, consumers, node, shape[1])
                out.append(w)
    return out


# Between a weight MatMul and its bias: int8 rescaling, attention scaling, activation fake-quant.
_TO_BIAS = ("Cast", "Mul", "Div", "QuantizeLinear", "DequantizeLinear")


def _constant(model: onnx.ModelProto, producers: dict, name: str, width: int) -> Weight | None:
    """A [width] constant: an initializer (through Identity) or DequantizeLinear of one (zero point kept)."""
    init = _init_behind(model, producers, name)
    zp = None
    dq = producers.get(name)
    if init is None and dq is not None and dq.op_type == "DequantizeLinear":
        init = _init_behind(model, producers, dq.input[0])
        zp_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        zp = _array(model, _init_behind(model, producers, zp_name)) if zp_name else np.zeros((), np.int32)
    if init is None or tuple(_array(model, init).shape) != (width,):
        return None
    return Weight(init, zp, (width,), 0)


def _bias_of(model: onnx.ModelProto, producers: dict, consumers: dict, node, width: int) -> Weight | None:
    if node.op_type in ("Attention", "QAttention"):
        return _constant(model, producers, node.input[2], width) if len(node.input) > 2 else None
    tensor = node.output[0]
    for _ in range(6):
        kids = consumers.get(tensor, [])
        if len(kids) != 1:
            return None
        kid = kids[0]
        if kid.op_type in ("Add", "BiasGelu", "FastGelu"):
            found = [_constant(model, producers, i, width) for i in kid.input if i != tensor]
            return next((b for b in found if b is not None), None)
        if kid.op_type not in _TO_BIAS:
            return None
        tensor = kid.output[0]
    return None


def locate(model: onnx.ModelProto, hidden: int) -> list[LayerWeights]:
    layers, pending = [], []
    for w in weights_in_order(model):
        rows, cols = w.shape
        if rows == hidden and cols in (hidden, 3 * hidden):
            pending.append(w)
        elif rows == hidden and cols != hidden:
            if len(pending) in (2, 4):  # W1 after Q/K/V (or packed QKV) and O
                qkv = pending[:-1]
                layers.append(LayerWeights(qkv, pending[-1], w, None, [q.bias for q in qkv], w.bias))
            pending = []  # else a head after the encoder (pooler -> classifier)
        elif cols == hidden and layers and layers[-1].w2 is None and rows == layers[-1].w1.shape[1]:
            layers[-1].w2 = w
    for i, layer in enumerate(layers):
        widths = sorted(q.shape[1] for q in layer.qkv)
        if widths not in ([hidden] * 3, [3 * hidden]) or layer.w2 is None:
            raise AssertionError(f"layer {i}: could not locate Q/K/V/O/W1/W2 (Q/K/V widths {widths})")
    return layers


# ------------------------------------------------------------------------------------------ zeroing
def _require(found, message: str):
    if found is None:
        raise AssertionError(message)
    return found


def _zero(arrays: dict, masks: dict, w: Weight, rows=None, cols=None) -> None:
    a = arrays[w.init]
    m = masks.setdefault(w.init, np.zeros(a.shape, bool))
    sel = np.zeros(a.shape, bool)
    if rows is not None:
        sel[rows, ...] = True
    if cols is not None:
        sel[..., cols] = True
    if w.zero_point is None:
        a[sel] = 0
    else:  # int8: the zero point of each element's channel (per-tensor: one value)
        zp = np.asarray(w.zero_point).reshape(-1)
        shape = [1] * a.ndim
        shape[w.axis] = -1
        full = np.broadcast_to(zp.reshape(shape) if zp.size > 1 else zp[0], a.shape)
        a[sel] = full[sel]
    m |= sel


def zero_structure(
    model: onnx.ModelProto,
    hidden: int,
    num_heads: int,
    side: str = "both",
    heads_of=None,
    dims_of=None,
    biases: bool = False,
) -> tuple[onnx.ModelProto, int, list[dict]]:
    """A copy with dead_heads / dead_dims zeroed (Q/K/V columns and O rows; W1 columns and W2 rows;
    biases untouched, as a masked checkpoint has them, unless `biases`: then the dead structure's Q/K/V
    and W1 biases are zeroed too, as a pruned checkpoint cut by structure has them). side="input" zeroes
    only Q/K/V and W1 columns: those heads / dims still add a constant (their biases through softmax / the
    activation) that shrink must fold into the next bias, or keep the structure. heads_of(layer, num_heads)
    / dims_of(layer, width) pick other heads / dims. Returns (model, zeroed weight elements, kept per layer)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    layers = locate(model, hidden)
    d = hidden // num_heads
    arrays, masks, bias_masks = {}, {}, {}
    for layer in layers:
        for w in layer.qkv + [layer.o, layer.w1, layer.w2] + [b for b in layer.qkv_bias + [layer.b1] if b]:
            arrays.setdefault(w.init, _array(model, w.init).copy())
    kept = []
    for i, layer in enumerate(layers):
        heads = heads_of(i, num_heads) if heads_of else dead_heads(num_heads).get(i, [])
        cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in heads]) if heads else np.array([], int)
        for w, b in zip(layer.qkv, layer.qkv_bias):
            segs = w.shape[1] // hidden
            head_cols = np.concatenate([cols + s * hidden for s in range(segs)])
            _zero(arrays, masks, w, cols=head_cols)
            if biases:
                _require(b, f"layer {i}: no bias located for the Q/K/V weight {w.init}")
                _zero(arrays, bias_masks, b, cols=head_cols)
        if side == "both":
            _zero(arrays, masks, layer.o, rows=cols)
        width = layer.w1.shape[1]
        dims = dims_of(i, width) if dims_of else dead_dims(width).get(i, [])
        _zero(arrays, masks, layer.w1, cols=dims)
        if biases:
            _require(layer.b1, f"layer {i}: no bias located for W1 {layer.w1.init}")
            _zero(arrays, bias_masks, layer.b1, cols=dims)
        if side == "both":
            _zero(arrays, masks, layer.w2, rows=dims)
        kept.append(
            {
                "heads_kept": [h for h in range(num_heads) if h not in heads],
                "ffn_dims_kept": [j for j in range(width) if j not in set(dims)],
                "ffn_width": width,
            }
        )
    for t in model.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    return model, int(sum(m.sum() for m in masks.values())), kept


# ------------------------------------------------------------------------------------------ running
def feeds(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    names = [i.name for i in model.graph.input]
    rng = np.random.default_rng(0)
    out = []
    for b, length in ((1, 5), (3, 17), (4, 33)):
        ids = rng.integers(4, 100, size=(b, length), dtype=np.int64)
        mask = np.ones((b, length), dtype=np.int64)
        for r in range(1, b):  # ragged padding: the attention mask must matter
            mask[r, length - (r * length) // (b + 1) :] = 0
        all_ = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": (rng.random((b, length)) < 0.3).astype(np.int64),
        }
        out.append({k: v for k, v in all_.items() if k in names})
    return out


def outputs(model: onnx.ModelProto, batches) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in batches]


def max_diff(a, b) -> float:
    """Max |a - b| over matching outputs; inf for a shape mismatch or a NaN / inf in either (a graph
    that computes NaN must never compare equal to anything, itself included)."""
    worst = 0.0
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if x.shape != y.shape or not (np.isfinite(x).all() and np.isfinite(y).all()):
                return float("inf")
            worst = max(worst, float(np.max(np.abs(x - y))) if x.size else 0.0)
    return worst


def elements(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)


FUSED = (
    "Attention",
    "QAttention",
    "FusedMatMul",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "EmbedLayerNormalization",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
)


def fused_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in FUSED:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def shrink_fn():
    """The surgery entry point, wherever the layout puts it."""
    try:
        from exporters.surgery.shrink import shrink
    except ImportError:
        from exporters.surgery import shrink
    return shrink


def check(
    name: str,
    side: str = "both",
    root: Path = ZOO,
    heads_of=None,
    dims_of=None,
    biases: bool = False,
    int8: str = "exact",
) -> dict:
    """Run the zoo check on one entry; returns a record (status 'pass', 'fail' or 'refused').
    side="input": only Q/K/V and W1 columns zeroed; fp32 graphs must fold the dead structure's bias
    contribution and remove it, int8 graphs may keep it (the fold would not be exact through the
    activation quantization). The shrunk graph must match the unshrunk zeroed graph, int8 against int8 (never
    the fp32 source, 0.1-2 away, which would pass a bug of that size): within 1e-4 everywhere, fp32 and int8
    alike (int8="exact": the zoo's own patterns differ by <= 1e-6), or for int8 with int8="flips" equal
    but for local rounding flips (int8_flips: random patterns of the fuzz campaign)."""
    if int8 not in ("exact", "flips"):
        raise ValueError(f"int8={int8!r}: choose exact or flips")
    from compress.core.errors import CompressError

    m = meta(name, root)
    model = load(name, root)
    rec = {"name": name, "side": side, "biases": biases, "meta": m, "fused_before": fused_counts(model)}
    try:
        zeroed, n_zeroed, kept = zero_structure(model, m["hidden"], m["num_heads"], side, heads_of, dims_of, biases)
    except AssertionError as e:  # weights the harness cannot find (e.g. QLinearMatMul): surgery must refuse
        zeroed, n_zeroed, kept = model, 0, []
        rec["harness_note"] = str(e)
    rec["zeroed"] = n_zeroed
    try:
        small, report = shrink_fn()(zeroed)
    except CompressError as e:
        rec.update(status="refused", message=str(e))
        return rec
    if not kept:
        rec.update(
            status="fail",  # outputs unknown: counted as different
            message=f"shrink accepted a graph whose weights the harness could not locate ({rec['harness_note']})",
        )
        return rec
    batches = feeds(zeroed)
    # Without its shape annotations, as shrink writes its result: with them ORT fuses other kernels
    # (SkipLayerNormalization), whose float rounding alone flips int8 roundings downstream.
    bare = onnx.ModelProto.FromString(zeroed.SerializeToString())
    del bare.graph.value_info[:]
    ref = outputs(bare, batches)
    got = outputs(small, batches)
    rec["max_abs_diff"] = max_diff(ref, got)
    rec["tolerance"] = 1e-4
    if m.get("int8") and int8 == "flips":
        rec["tolerance"] = INT8_BOUND
        rec["units_differing"], rec["units"] = int8_flips(ref, got)
    rec["removed"] = elements(zeroed) - elements(small)
    rec["removed_fraction"] = rec["removed"] / n_zeroed if n_zeroed else 1.0
    rec["fused_after"] = fused_counts(small)
    rec["layers"] = [(r["heads_after"], r["ffn_after"]) for r in report["layers"]]
    rec["bias_folded"] = [r.get("bias_folded") for r in report["layers"]]
    rec["expected_layers"] = [(len(k["heads_kept"]), len(k["ffn_dims_kept"])) for k in kept]
    keeps = side == "input" and m.get("int8")
    if keeps:  # allowed to keep the structure (exactly): then nothing is removed
        rec["expected_layers"] = [(m["num_heads"], k["ffn_width"]) for k in kept]
    elif "dynamic" in str(m.get("int8")) and not biases:
        # Dynamic int8 quantizes W_O's / W2's input at run time over every column: dead heads (context
        # b_v) and dims (act(b1)) stay where the layer keeps others, or the scale would move.
        keeps = True
        rec["expected_layers"] = [
            (m["num_heads"] if k["heads_kept"] else 0, k["ffn_width"] if k["ffn_dims_kept"] else 0) for k in kept
        ]
    problems = []
    if not rec["max_abs_diff"] <= rec["tolerance"]:
        problems.append(f"outputs differ by {rec['max_abs_diff']:.3g} > {rec['tolerance']:.3g}")
    if rec.get("units_differing", 0) > INT8_FLIP_SHARE * rec.get("units", 0):
        problems.append(
            f"{rec['units_differing']} of {rec['units']} output units differ by more than {INT8_ATOL:g} "
            "(more than int8 rounding flips, which stay local)"
        )
    # (small patterns: the constant head shapes surgery writes weigh against a handful of zeroed weights)
    if not keeps and rec["removed_fraction"] < 0.95 and n_zeroed >= 1000:
        problems.append(f"removed {rec['removed']} of {n_zeroed} zeroed parameters ({rec['removed_fraction']:.0%})")
    if rec["layers"] != rec["expected_layers"]:
        problems.append(f"kept (heads, dims) per layer {rec['layers']} instead of {rec['expected_layers']}")
    rec["status"] = "fail" if problems else "pass"
    rec["message"] = "; ".join(problems)
    return rec


# ------------------------------------------------------------------------------------------ fuzzing
# int8 graphs are compared with the unshrunk int8 graph, but not within one tolerance: where a rewrite
# changes float rounding upstream by ~1e-7 (a fused SkipLayerNormalization becomes Add + LayerNormalization
# when a whole block goes; other ORT fusions), a value on an int8 rounding boundary lands one step away,
# which moved outputs by up to 6e-2 on the zoo's dynamic int8 graphs, as much as a real bug
# (benchmarks/results/fuzz_surgery.md). A flip stays local: it changes the tokens / sequences downstream
# of that element. A surgery bug (a wrong bias, scale or slice) changes every unit. So int8 outputs must
# match within INT8_ATOL on all but INT8_FLIP_SHARE of the output units (one token's or one sequence's
# outputs) and within INT8_BOUND everywhere: one bias entry off by 1e-2 fails (checked by mutation, see
# the campaign's notes).
INT8_ATOL = 1e-4
INT8_FLIP_SHARE = 0.25
INT8_BOUND = 0.1


def int8_flips(ref, got, atol: float = INT8_ATOL) -> tuple[int, int]:
    """(output units differing by more than atol, units): a unit is one position of every axis but the
    last of an output (a token of last_hidden_state, a sequence of logits); NaN / inf differ."""
    bad = total = 0
    for xs, ys in zip(ref, got):
        for x, y in zip(xs, ys):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            if x.shape != y.shape:
                return 1, 1
            d = np.abs(x - y).reshape(-1, x.shape[-1] if x.ndim else 1)
            d[~np.isfinite(d)] = np.inf
            bad += int((d.max(axis=1, initial=0.0) > atol).sum())
            total += d.shape[0]
    return bad, total


def geometry(name: str, root: Path = ZOO) -> tuple[int, int, list[int]]:
    """(layers, heads, FFN width per layer) of a zoo graph, as the harness locates them."""
    m = meta(name, root)
    layers = locate(load(name, root), m["hidden"])
    return len(layers), m["num_heads"], [layer.w1.shape[1] for layer in layers]


def fuzz_case(name: str, heads: dict, dims: dict, side: str = "both", biases: bool = False, root: Path = ZOO) -> dict:
    """One zero pattern (dead heads / FFN dims per layer) through check(), classified: 'exact' (outputs
    equal and the dead structure removed, or kept where allowed), 'refused' (a CompressError in one
    line), 'kept' (outputs equal but structure left in), 'wrong' (outputs differ, or a refusal that is
    not one line) or 'traceback' (any other exception)."""
    import traceback

    case = {"name": name, "side": side, "biases": biases, "heads": heads, "dims": dims}
    try:
        rec = check(
            name,
            side,
            root,
            heads_of=lambda i, n: sorted(heads.get(i, [])),
            dims_of=lambda i, width: sorted(dims.get(i, [])),
            biases=biases,
            int8="flips",
        )
    except Exception as e:
        return {**case, "outcome": "traceback", "message": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    out = {**case, "message": rec.get("message", ""), "max_abs_diff": rec.get("max_abs_diff")}
    if rec["status"] == "refused":
        return {**out, "outcome": "refused" if "\n" not in rec["message"] else "wrong"}
    if rec["status"] == "pass":
        return {**out, "outcome": "exact", "units_differing": rec.get("units_differing", 0)}
    differs = rec.get("max_abs_diff") is None or "differ" in rec["message"]
    return {**out, "outcome": "wrong" if differs else "kept"}


# ------------------------------------------------------------------------------------------ broken graphs
DAMAGE = ("delete_node", "wrong_dtype", "truncated_initializer", "duplicate_name", "cycle")


def damage(model, kind: str, rng: np.random.Generator):
    """A copy of `model` broken in one way; each makes the graph invalid (no runtime can load it), never
    merely different."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    nodes, inits = m.graph.node, m.graph.initializer
    used = {i for n in nodes for i in n.input}
    if kind == "delete_node":
        live = [i for i, n in enumerate(nodes) if any(o in used for o in n.output)]
        del nodes[live[rng.integers(len(live))]]
    elif kind in ("wrong_dtype", "truncated_initializer"):
        tensors = [t for t in inits if int(np.prod(t.dims)) > 1 and t.name in used]  # not shape scalars
        t = tensors[rng.integers(len(tensors))]
        arr = onnx.numpy_helper.to_array(t)
        for f in ("float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(f)
        t.raw_data = arr.tobytes()
        if kind == "wrong_dtype":
            others = [
                d
                for d in (
                    onnx.TensorProto.FLOAT,
                    onnx.TensorProto.INT64,
                    onnx.TensorProto.DOUBLE,
                    onnx.TensorProto.INT8,
                )
                if d != t.data_type
            ]
            t.data_type = others[rng.integers(len(others))]
        else:
            t.raw_data = t.raw_data[: max(1, len(t.raw_data) // int(rng.integers(2, 8)))]
    elif kind == "duplicate_name":
        a, b = sorted(rng.choice(len(nodes), 2, replace=False))
        nodes[b].output[0] = nodes[a].output[0]  # two producers of one tensor
    elif kind == "cycle":
        readers: dict[str, list[int]] = {}
        for j, n in enumerate(nodes):
            for i in n.input:
                readers.setdefault(i, []).append(j)
        a = int(rng.choice([j for j, n in enumerate(nodes[: len(nodes) // 2]) if any(n.input)]))
        below, todo = set(), [a]
        while todo:  # every node that depends on node a
            for o in nodes[todo.pop()].output:
                for j in readers.get(o, []):
                    if j not in below:
                        below.add(j)
                        todo.append(j)
        j = int(rng.choice(sorted(below)))
        k = next(k for k, name in enumerate(nodes[a].input) if name)
        nodes[a].input[k] = nodes[j].output[0]  # node a now reads what it feeds: a cycle
    return m
