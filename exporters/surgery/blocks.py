"""What matching finds: per encoder layer an attention block and an FFN block, each a few weight
projections (y = x @ W + b) ending in a residual; and the projection helpers both block matchers share.
Nothing here changes the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from exporters.graph import Graph
from exporters.surgery.quantized import down_qdq, integer_matmul, matmul_out

# Residual + LayerNorm fused by ORT; the block output is input 0 or 1, a folded output bias input 4.
SKIP_LN = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")


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


def projection_of(g: Graph, mm: onnx.NodeProto) -> Projection:
    """A Projection for a weight MatMul / MatMulInteger (bias filled in by the caller)."""
    p = Projection(mm)
    out = matmul_out(g, mm)
    if out != mm.output[0]:
        p.int_out = g.producer[out]
        _, p.int_scale, p.int_scale_index = integer_matmul(g, p.int_out)
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


def bias_add_or_self(g: Graph, mm: onnx.NodeProto) -> str:
    """Output of the MatMul's bias Add when there is one (a constant [out] operand), else of the MatMul."""
    add = g.sole_child(down_qdq(g, matmul_out(g, mm)), "Add")
    w = g.const(mm.input[1])
    if add is not None and w is not None and w.ndim == 2:
        consts = [g.const(i) for i in add.input]
        if sum(c is not None for c in consts) == 1 and any(c is not None and c.shape == (w.shape[1],) for c in consts):
            return add.output[0]
    return matmul_out(g, mm)


def is_residual(g: Graph, node: onnx.NodeProto | None, block_out: str) -> bool:
    """A residual Add of two computed tensors, or ORT's SkipLayerNormalization reading the block output
    as its input or skip."""
    if node is None:
        return False
    if node.op_type == "Add":
        return not any(g.is_const(i) for i in node.input)
    return node.op_type in SKIP_LN and block_out in node.input[:2]
