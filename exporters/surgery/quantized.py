"""Seeing through quantized weights and activations while matching. Two patterns sit between the
float ops the matchers look for, and both act on each element (or each output column) alone, so cutting
heads / FFN dims does not change them:
  ORT's dynamic int8 projections: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale);
  activation fake-quant of QDQ graphs: per-tensor QuantizeLinear -> DequantizeLinear pairs.
Int8 weights of QDQ graphs need nothing here: Graph.const folds DequantizeLinear of constants.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporters.graph import Graph

# The ops of activation fake-quant (per tensor), looked through while matching.
QDQ = ("QuantizeLinear", "DequantizeLinear")


def integer_matmul(g: Graph, node: onnx.NodeProto | None):
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


def matmul_out(g: Graph, mm: onnx.NodeProto) -> str:
    """The float result of a weight MatMul: its output, or for MatMulInteger the rescaling Mul's."""
    if mm.op_type != "MatMulInteger":
        return mm.output[0]
    cast = g.sole_child(mm.output[0], "Cast")
    mul = g.sole_child(cast.output[0], "Mul") if cast is not None else None
    found = integer_matmul(g, mul)
    return mul.output[0] if found is not None and found[0] is mm else mm.output[0]


def weight_matmul_below(g: Graph, x: str) -> onnx.NodeProto | None:
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


def is_fake_quant(g: Graph, node: onnx.NodeProto | None) -> bool:
    """A QuantizeLinear / DequantizeLinear on an activation with per-tensor scale and zero point."""
    return (
        node is not None
        and node.op_type in QDQ
        and not g.is_const(node.input[0])
        and all(not i or g.is_scalar_const(i) for i in node.input[1:])
    )


def up_qdq(g: Graph, name: str) -> str:
    """The tensor above any activation fake-quant (Q -> DQ) pairs that produce `name`."""
    for _ in range(8):
        node = g.producer.get(name)
        if not is_fake_quant(g, node):
            break
        name = node.input[0]
    return name


def down_qdq(g: Graph, name: str) -> str:
    """The tensor below any activation fake-quant pairs that are the sole readers of `name`."""
    for _ in range(8):
        node = g.sole_child(name)
        if not is_fake_quant(g, node):
            break
        name = node.output[0]
    return name


def fake_quant_chain(g: Graph, name: str) -> list[onnx.NodeProto]:
    """The fake-quant nodes between a residual Add's input `name` and the block output above it."""
    chain = []
    node = g.producer.get(name)
    while is_fake_quant(g, node):
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
