"""What the matcher found, in words and op counts (for `compress shrink --report`)."""

from __future__ import annotations

import onnx

from exporters.graph import Graph, op_counts
from exporters.surgery.blocks import Layer, Projection
from exporters.surgery.quantized import QDQ

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
