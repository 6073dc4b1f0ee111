"""ONNX graph surgery: physically remove pruned attention heads and FFN dims from an encoder graph.

Why in ONNX and not only in PyTorch: a masked checkpoint exports dense-shaped matrices, and ONNX
Runtime gains nothing from zeros. Cutting the graph keeps the export path standard (any exporter,
any HF version) while the shapes ORT sees get genuinely smaller.

shrink() runs the passes: match (exporters.surgery.layers) -> check the kept structure against the
graph (validate), or read it from zero weights and fold the bias contribution of input-side-dead
structure (rewrite.fold_input_dead) -> keep the dead structure dynamic int8 still sees (int8_range) ->
remove heads, remove FFN dims (rewrite) -> commit, drop dead nodes, check the graph -> compare outputs
with the source. Fusion is the caller's step
(exporters.optimize). Graphs already fused or quantized by ONNX Runtime tools are rewritten in place
(fused Attention / QAttention, SkipLayerNorm, BiasGelu, QDQ and dynamic int8); tests/zoo/ holds one
graph of each exporter this was checked on (tests/test_zoo.py, benchmarks/results/graph_zoo.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx

from compress.core.errors import ArtifactError, GraphPatternError, InvalidConfigError
from compress.core.record import LayerKeep, as_layer_keeps
from exporters.graph import Graph, check_structure, op_counts, param_count
from exporters.sessions import assert_close
from exporters.surgery.hidden import has_zero_embedding_columns, shrink_hidden
from exporters.surgery.int8_range import keep_for_dynamic_range
from exporters.surgery.layers import detect_kept, find_layers
from exporters.surgery.report import describe_layer, fused_op_counts
from exporters.surgery.rewrite import fold_input_dead, layer_params, remove_ffn_dims, remove_heads
from exporters.surgery.validate import check_kept, finalize


def _check_head_count(layers, num_heads: int) -> None:
    """A structure indexes the dense graph's heads: a graph with another head count is not that graph."""
    for i, layer in enumerate(layers):
        if layer.attention.num_heads != num_heads:
            raise ArtifactError(
                f"layer {i} of the graph has {layer.attention.num_heads} heads but the structure describes "
                f"{num_heads}: the graph was already shrunk or comes from another model"
            )


def shrink(
    model: onnx.ModelProto,
    kept: list[LayerKeep] | list[dict] | None = None,
    num_heads: int | None = None,
    head_size: int | None = None,
    *,
    sample_inputs: list[dict[str, np.ndarray]] | None = None,
    atol: float = 1e-4,
    hidden_kept: list[int] | None = None,
    detect_hidden: bool = False,
) -> tuple[onnx.ModelProto, dict]:
    """Remove the heads / FFN dims not listed in `kept` (or, when kept is None, those whose output
    weights are all zero) and return (new model, report). The input model is not modified.

    kept: per layer LayerKeep (or compression.json's {"heads_kept": [...], "ffn_dims_kept": [...]}) indexing the graph's current heads/dims
    (compression.json's `layers` for a dense export). num_heads: the dense head count the indices refer
    to, checked against the graph. head_size: read from the graph when None. Without kept, heads / dims
    whose V / W1 columns are zero are removed too, their bias contribution folded (fp32 graphs only).
    With sample_inputs, ORT outputs of the result are compared to the input model's (atol) and a
    ValidationError is raised on mismatch.

    hidden_kept: the hidden dims to keep (compression.json's `hidden.kept`); detect_hidden without it:
    those whose LayerNorm gammas / betas and embedding columns are all zero. That cut
    (exporters.surgery.hidden) runs after the heads / FFN dims are removed and checked, and is not
    compared with the input: it makes every LayerNorm normalise over the kept dims only, which is the
    hidden-pruned model by design, not the graph it was exported as. report["hidden"] says what it did.
    """
    check_structure(model)
    out = copy.deepcopy(model)
    g = Graph(out)
    layers, head_size = find_layers(g, head_size)
    if kept is not None and num_heads is not None:
        _check_head_count(layers, num_heads)
    source = "compression.json" if kept is not None else "zero weights"
    params_before, nodes_before, fused_before = param_count(out), len(out.graph.node), fused_op_counts(out)
    found = [describe_layer(g, layer) for layer in layers]
    folded = [{"heads": [], "ffn_dims": []} for _ in layers]
    if kept is None:
        kept, folded = fold_input_dead(g, layers, detect_kept(g, layers))
    else:
        kept = as_layer_keeps(kept)
        check_kept(g, layers, kept)
    kept, held = keep_for_dynamic_range(g, layers, kept)
    heads_kept = [list(k.heads) for k in kept]
    dims_kept = [list(k.ffn_dims) for k in kept]

    for i, layer in enumerate(layers):
        a, f = layer.attention, layer.ffn
        hidden = g.const(a.o.matmul.input[1]).shape[1]
        layer.report = {
            "layer": i,
            "params_before": layer_params(layer, hidden, a.num_heads * head_size, f.width),
            "params_after": layer_params(layer, hidden, len(heads_kept[i]) * head_size, len(dims_kept[i])),
            "heads_removed": sorted(set(range(a.num_heads)) - set(heads_kept[i])),
            "found": found[i],
            "bias_folded": folded[i],
            "kept_for_int8_range": held[i],
        }
    changes = zip(remove_heads(g, layers, heads_kept), remove_ffn_dims(g, layers, dims_kept))
    for layer, (heads, ffn) in zip(layers, changes):
        layer.report = {
            "layer": layer.report["layer"],
            **heads,
            **ffn,
            **{k: v for k, v in layer.report.items() if k != "layer"},
        }
    g.commit()
    g.prune_dead()
    finalize(out, source=model)
    report = {
        "source": source,
        "head_size": head_size,
        "layers": [layer.report for layer in layers],
        "params_before": params_before,
        "params_after": param_count(out),
        "nodes_before": nodes_before,
        "nodes_after": len(out.graph.node),
        "fused_ops_before": fused_before,
        "fused_ops_after": fused_op_counts(out),
        "op_counts": op_counts(out),
    }
    if sample_inputs:
        report["max_abs_diff"] = assert_close(model, out, sample_inputs, atol, what="shrunk graph")
    if hidden_kept is not None or detect_hidden:
        try:
            out, cut = shrink_hidden(out, hidden_kept, sample_inputs=sample_inputs)
        except GraphPatternError as e:
            # Looking for pruned hidden dims must not refuse a graph that has none (a layout the stream
            # walk does not know, e.g. mean pooling through Shape / Gather); with evidence of them, the
            # uncut graph would be wrong, so the refusal stands.
            if hidden_kept is not None or has_zero_embedding_columns(out):
                raise
            report["hidden"] = {"source": "zero weights", "note": f"hidden dims not analysed: {e}"}
            return out, report
        cut["source"] = "compression.json" if hidden_kept is not None else "zero weights"
        if cut["hidden_after"] < cut["hidden_before"]:
            cut["note"] = (
                "LayerNorms now normalise over the kept hidden dims only: the hidden-pruned model by design, so "
                "max_abs_diff compares only the head / FFN cut with the input"
            )
        report["hidden"] = cut
        report.update(
            params_after=param_count(out),
            nodes_after=len(out.graph.node),
            fused_ops_after=fused_op_counts(out),
            op_counts=op_counts(out),
        )
    return out, report


def shrink_file(
    src: str | Path,
    dst: str | Path,
    kept: list[LayerKeep] | list[dict] | None = None,
    num_heads: int | None = None,
    head_size: int | None = None,
    *,
    atol: float = 1e-4,
    overwrite: bool = False,
    optimize=None,
    hidden_kept: list[int] | None = None,
    detect_hidden: bool = False,
) -> dict:
    """shrink() on files: checked against `src` on tokenized sentences (tokenizer files next to src)
    or random ids, then written atomically to `dst`. Returns the report.

    optimize: a callable (model, sample_inputs, atol) -> (model, report) run on the shrunk graph
    before it is written, e.g. exporters.optimize.optimize; the caller picks it, shrink does not fuse.
    hidden_kept / detect_hidden: as in shrink(); off by default. The optimizer's check then compares the
    fused graph with the hidden-cut one, which is the right reference for it."""
    from compress.core.artifacts import atomic_file
    from exporters.files import save_model
    from exporters.inputs import load_tokenizer, sample_inputs, vocab_size

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ArtifactError(f"{src} does not exist")
    if dst.exists() and not overwrite:
        raise InvalidConfigError(f"{dst} exists; pass --overwrite or pick another path")
    if dst.resolve() == src.resolve():
        raise InvalidConfigError("the output must differ from the input (the input is the reference for validation)")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf DecodeError and friends
        raise ArtifactError(f"{src} is not a readable ONNX model ({type(e).__name__})") from e
    batches = sample_inputs(
        [i.name for i in model.graph.input], load_tokenizer(src.parent), vocab_size(model, src.parent)
    )
    new, report = shrink(
        model,
        kept,
        num_heads,
        head_size,
        sample_inputs=batches,
        atol=atol,
        hidden_kept=hidden_kept,
        detect_hidden=detect_hidden,
    )
    if optimize is not None:
        new, report["optimize"] = optimize(new, batches, atol)
    with atomic_file(dst) as tmp:
        save_model(new, tmp, data_name=dst.name + ".data")  # past 2 GiB: weights beside the final name
    return report
