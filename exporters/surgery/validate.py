"""Validation of surgery: the kept structure must belong to the graph, and the rewritten graph must
pass onnx.checker (numerical equality with the source is exporters.sessions.assert_close)."""

from __future__ import annotations

import onnx

from compress.core.errors import ArtifactError, ValidationError
from compress.core.record import LayerKeep
from exporters.files import check_model
from exporters.graph import Graph
from exporters.surgery.blocks import Layer
from exporters.surgery.layers import detect_kept


def check_kept(g: Graph, layers: list[Layer], kept: list[LayerKeep]) -> None:
    """kept (from compression.json) must index this graph and only drop structures that are zero;
    anything else means the graph and the json don't belong together."""
    if len(kept) != len(layers):
        raise ArtifactError(f"compression.json describes {len(kept)} layers but the graph has {len(layers)}")
    for i, (layer, k) in enumerate(zip(layers, kept)):
        a, f = layer.attention, layer.ffn
        heads, dims = list(k.heads), list(k.ffn_dims)
        if any(not 0 <= h < a.num_heads for h in heads) or len(set(heads)) != len(heads):
            raise ArtifactError(f"layer {i}: heads_kept {heads} do not index the graph's {a.num_heads} heads")
        if any(not 0 <= j < f.width for j in dims) or len(set(dims)) != len(dims):
            raise ArtifactError(f"layer {i}: ffn_dims_kept do not index the graph's {f.width} FFN dims")
        live = detect_kept(g, [layer])[0]
        lost_heads = sorted(set(live.heads) - set(heads))
        lost_dims = sorted(set(live.ffn_dims) - set(dims))
        if lost_heads or lost_dims:
            what = f"heads {lost_heads}" if lost_heads else f"{len(lost_dims)} FFN dims (e.g. {lost_dims[:5]})"
            raise ArtifactError(
                f"layer {i}: compression.json marks {what} as pruned but their output weights in the graph are "
                "not zero; the ONNX file does not come from this checkpoint (re-export it)"
            )


def finalize(model: onnx.ModelProto, source: onnx.ModelProto | None = None) -> None:
    """Drop shape annotations (stale after surgery) and check the model.

    They are not re-inferred on purpose: with value_info present, ORT's own runtime optimizer fuses
    the FFN output Add + residual + LayerNorm into SkipLayerNormalization, which the fresh exports it
    would be compared with don't get — and that kernel is several times slower than Add + LayerNorm
    on our CPU (ORT 1.31). A shrunk graph should differ from its source only in size. (Stale
    value_info also makes quantize_dynamic stop with a ShapeInferenceError; compress.ort.quantize
    drops it before quantizing for the same reason.)

    source: the graph it was made from. Graphs saved by ONNX Runtime itself can fail onnx.checker while
    ORT runs them (e.g. its LayerNormalization fusion at opset < 17); the result may fail the same way,
    never differently."""
    del model.graph.value_info[:]
    try:
        check_model(model)
    except onnx.checker.ValidationError as e:
        if source is not None and _checker_error(source) == str(e).splitlines()[0]:
            return
        raise ValidationError(f"the rewritten graph fails onnx.checker: {e}") from e


def _checker_error(model: onnx.ModelProto) -> str | None:
    try:
        check_model(model)
    except onnx.checker.ValidationError as e:
        return str(e).splitlines()[0]
    return None
