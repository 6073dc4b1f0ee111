"""Matching FFN blocks. Nothing here changes the graph.

An FFN is anchored on a MatMul with constant weight W1 [H, F] whose output (after an optional bias Add) flows
only through element-wise ops (the activation; any GELU/ReLU/tanh-GELU decomposition, or BiasGelu / FastGelu)
into exactly one MatMul with constant weight W2 [F, H], then an optional bias Add and the residual Add (or
SkipLayerNormalization). Element-wise-only is what makes dropping a dim exact, so that is what is checked,
not a GELU shape.
"""

from __future__ import annotations

import onnx

from exporters.graph import Graph
from exporters.surgery.blocks import FfnBlock, bias_add_or_self, is_residual, projection_of
from exporters.surgery.quantized import QDQ, down_qdq, matmul_out, weight_matmul_below

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
    *QDQ,  # activation fake-quant: per element, like the activation itself
}


def match_ffn(g: Graph, mm1: onnx.NodeProto) -> FfnBlock | None:
    """Match x -> MatMul(W1) [+b1] -> element-wise activation -> MatMul(W2) [+b2] -> residual Add.
    Returns None when `mm1` does not start such a block (most MatMuls don't)."""
    w1 = g.const(mm1.input[1])
    if w1 is None or w1.ndim != 2 or g.is_const(mm1.input[0]):
        return None
    width = w1.shape[1]
    src = bias_add_or_self(g, mm1)
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
                node = weight_matmul_below(g, tensor)
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
    w1_proj = projection_of(g, mm1)
    if src != matmul_out(g, mm1):
        add = g.producer[src]
        w1_proj.add, w1_proj.bias_index = add, [g.is_const(i) for i in add.input].index(True)
    w2_out = bias_add_or_self(g, stops[0])
    w2_proj = projection_of(g, stops[0])
    if w2_out != matmul_out(g, stops[0]):
        add = g.producer[w2_out]
        w2_proj.add, w2_proj.bias_index = add, [g.is_const(i) for i in add.input].index(True)
    residual_in = down_qdq(g, w2_out)
    residual = g.sole_child(residual_in)
    if not is_residual(g, residual, residual_in):
        return None  # e.g. a classifier head MatMul -> ReLU -> MatMul: no residual, not an encoder FFN
    return FfnBlock(w1_proj, region_nodes, per_dim, w2_proj, residual, width, residual_in=residual_in)
