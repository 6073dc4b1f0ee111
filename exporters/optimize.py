"""Optional ONNX Runtime transformer fusions after surgery, kept only if outputs still match.

We call onnxruntime.transformers.optimizer.optimize_by_fusion with num_heads=0 / hidden_size=0 so it
reads the head count of each layer from the Q Reshape's constant shape, which our surgery writes as
[0, 0, heads, head_size] per layer — that is what lets layers with different head counts fuse.

Known limits (ORT 1.31), reported rather than hidden: the Attention fusion recognises the
Transformers-5 eager mask pattern of the TorchScript exporter, not the dynamo exporter's, so graphs
exported with --exporter dynamo get LayerNorm/GELU fusions but no fused Attention. Whatever happens,
the fused graph is compared with the unfused one; on an error or a mismatch the unfused graph is kept
and the report says why.
"""

from __future__ import annotations

import copy

import onnx

from compress.core.errors import ValidationError
from exporters.files import import_contrib_domains
from exporters.sessions import assert_close, ort_logging

# ORT's report lists every fusion it knows; we keep the ones that happened.
_COUNTED = (
    "EmbedLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "Gelu",
    "FastGelu",
    "BiasAdd",
)


def fusion_options():
    """ORT's BERT fusions minus the LayerNorm ones that are slower on CPU.

    SkipLayerNormalization (residual Add + LayerNorm, optionally the bias Add too) ran 2-4x slower
    than the ops it replaces in ORT 1.31's CPU kernel (MiniLM-L6 profile: 12 of them took 2.1 ms of
    a 9 ms batch-1 run). A fused EmbedLayerNormalization gives ORT's load-time optimizer the shapes
    it needs to make SkipLayerNormalization on its own, so it goes too. Attention and BiasGelu stay:
    measured faster. See benchmarks/results/shrink.md.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    options.enable_embed_layer_norm = False
    return options


def optimize(
    model: onnx.ModelProto,
    sample_inputs: list[dict],
    atol: float = 1e-4,
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
) -> tuple[onnx.ModelProto, dict]:
    """Run ORT's BERT fusions, then check the fused graph against `model` on sample_inputs; return
    (model to use, report). The one fuse-then-check path (export --optimize and quantize --optimize).

    num_heads/hidden_size 0: each layer's head count is read from its head Reshape (what
    exporters.surgery.rewrite.normalize_heads writes); a global count is only right for dense graphs.
    Never raises for a fusion problem: the unfused model comes back with report["applied"] = False
    and a note saying why."""
    attention_layers = sum(n.op_type == "Softmax" for n in model.graph.node)  # one per attention block
    report: dict = {"applied": False, "fusions": {}, "note": "", "optimizer_messages": []}
    try:
        from onnxruntime.transformers.optimizer import optimize_by_fusion
    except ImportError as e:  # pragma: no cover - ORT without its transformers tools
        report["note"] = f"onnxruntime.transformers is not available ({e}); graph left unfused"
        return model, report
    try:
        with ort_logging() as messages:
            optimizer = optimize_by_fusion(
                copy.deepcopy(model),
                model_type="bert",
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=fusion_options(),
            )
            stats = optimizer.get_fused_operator_statistics()
        candidate = optimizer.model
    except Exception as e:  # ORT's fusion code raises assorted exception types
        report["note"] = f"ORT transformer optimizer failed ({type(e).__name__}: {e}); graph left unfused"
        return model, report
    import_contrib_domains(candidate)  # fused ops live in com.microsoft; declare it so onnx.checker accepts the graph
    del candidate.graph.value_info[:]  # with them ORT's runtime fuses SkipLayerNormalization anyway
    report["optimizer_messages"] = messages[:5]
    report["fusions"] = {k: v for k, v in stats.items() if v and k in _COUNTED}
    try:
        report["max_abs_diff"] = assert_close(model, candidate, sample_inputs, atol, what="ORT-optimized graph")
    except ValidationError as e:
        report["note"] = f"{e}; kept the unfused graph"
        return model, report
    report["applied"] = True
    fused_attention = report["fusions"].get("Attention", 0) + report["fusions"].get("MultiHeadAttention", 0)
    if fused_attention < attention_layers:
        report["note"] = (
            f"attention fused in {fused_attention} of {attention_layers} layers (the rest run as plain MatMul/"
            "Softmax; with the dynamo exporter ORT does not recognise the attention mask pattern)"
        )
    return candidate, report
