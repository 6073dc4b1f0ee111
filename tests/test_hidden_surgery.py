"""Cutting pruned hidden dims out of exported graphs (exporters.surgery.hidden).

Tiny hidden-pruned models (hidden 32, 20 dims kept) are saved the way a checkpoint is: plain modules with
zeros on the pruned dims, so the export normalises its LayerNorms over all 32 dims and computes something
else than the pruned model. The reference is therefore the PyTorch model cut with slice_hidden (equal to
the masked model), never the uncut graph. int8 graphs: an int8 graph of the uncut model is no reference
either, and comparing with fp32 would hide errors below the int8 noise; instead the cut must commute with
ORT's dynamic quantization: cut(quantize(graph)) == quantize(cut(graph)) exactly (the pruned weights and
activations are exact zeros, which change neither the weight scales nor the run-time activation ranges),
and stay near the PyTorch reference with the same argmax."""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers
from onnx import helper

from compress.core import hidden
from compress.core.errors import ArtifactError, GraphPatternError
from exporters.files import import_contrib_domains
from exporters.sessions import run
from exporters.surgery.hidden import elements, shrink_hidden
from exporters.surgery.shrink import shrink
from helpers import kill_structure, tiny_config

HEADS = {"seq": transformers.AutoModelForSequenceClassification, "qa": transformers.AutoModelForQuestionAnswering}
HEADS["tok"] = transformers.AutoModelForTokenClassification


class _Positional(torch.nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return tuple(self.model(**dict(zip(self.names, tensors)), return_dict=True).values())


def input_names(family: str) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if family == "bert" else [])


def pruned_model(family: str, head: str, seed: int = 0, dead_heads=None, dead_dims=None):
    """(masked model, plain model with the same weights, kept dims): random weights large enough that
    outputs depend on the input, 20 of 32 hidden dims kept, zeros written as a checkpoint has them."""
    torch.manual_seed(seed)
    model = HEADS[head].from_config(tiny_config(family), attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if p.ndim == 1 and "norm" in name.lower() and name.endswith("weight") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) * (0.2 if p.ndim >= 2 else 0.1))
    if dead_heads or dead_dims:
        kill_structure(model, dead_heads or {}, dead_dims or {})
    kept = sorted(np.random.default_rng(seed).choice(32, 20, replace=False).tolist())
    hidden.fix(model, kept)
    hidden.zero_pruned(model, kept)
    plain = HEADS[head].from_config(model.config, attn_implementation="eager").eval()
    plain.load_state_dict(model.state_dict())
    return model, plain, kept


def export(model, family: str, exporter: str, opset: int) -> onnx.ModelProto:
    """The two torch exporters as the zoo uses them (tools/zoo/export_legacy.py, export_dynamo.py)."""
    names = input_names(family)
    example = tuple(torch.full((2, 16), {"input_ids": 5, "attention_mask": 1}.get(n, 0)) for n in names)
    wrapper = _Positional(model, names).eval()
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
            )
        else:
            dims = tuple({0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")} for _ in names)
            program = torch.onnx.export(
                wrapper, example, dynamo=True, dynamic_shapes=(dims,), opset_version=opset, input_names=names
            )
            program.save(str(path), external_data=False)
    return onnx.load(str(path))


def fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's BERT fusions, all on (as optimum -O2 applies them): EmbedLayerNormalization,
    SkipLayerNormalization, Attention with packed QKV, BiasGelu."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(
        copy.deepcopy(model), "bert", num_heads=4, hidden_size=32, optimization_options=FusionOptions("bert")
    ).model
    import_contrib_domains(fused)
    del fused.graph.value_info[:]
    return fused


def quantize(model: onnx.ModelProto, per_channel: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    d = Path(tempfile.mkdtemp())
    onnx.save(model, str(d / "in.onnx"))
    quantize_dynamic(
        str(d / "in.onnx"),
        str(d / "out.onnx"),
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm", "Gather", "Attention", "EmbedLayerNormalization"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return onnx.load(str(d / "out.onnx"))


def feeds(family: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0
    f = {
        "input_ids": rng.integers(5, 60, (3, 9)),
        "attention_mask": mask,
        "token_type_ids": (rng.random((3, 9)) < 0.3).astype(np.int64),
    }
    return {k: f[k] for k in input_names(family)}


def reference(masked, kept, feed) -> list[np.ndarray]:
    ref = hidden.slice_hidden(copy.deepcopy(masked), kept)
    with torch.no_grad():
        return [v.numpy() for v in ref(**{k: torch.from_numpy(v) for k, v in feed.items()}, return_dict=True).values()]


def max_diff(a, b) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def zeroed_params(plain) -> int:
    return sum(int((p == 0).sum()) for p in plain.parameters())


CASES = [  # family, head, exporter, opset: both LayerNorm forms (opset 14 decomposes it), both exporters
    ("bert", "seq", "torchscript", 17),
    ("bert", "qa", "torchscript", 14),
    ("bert", "tok", "dynamo", 18),
    ("roberta", "seq", "torchscript", 17),
    ("distilbert", "seq", "torchscript", 14),
]


@pytest.fixture(scope="module")
def exported():
    out = {}
    for family, head, exporter, opset in CASES:
        masked, plain, kept = pruned_model(family, head)
        out[(family, head)] = (masked, plain, kept, export(plain, family, exporter, opset))
    return out


@pytest.mark.parametrize("family,head", [c[:2] for c in CASES], ids=[f"{c[0]}-{c[1]}-{c[2]}{c[3]}" for c in CASES])
def test_cut_graph_is_the_hidden_pruned_model(exported, family, head):
    masked, plain, kept, graph = exported[(family, head)]
    feed = feeds(family)
    want = reference(masked, kept, feed)
    assert max_diff(want, list(run(graph, feed).values())) > 1e-2  # the uncut graph is not the pruned model
    small, report = shrink_hidden(graph, None, sample_inputs=[feed])
    assert report["kept"] == kept and report["source"] == "zero weights"  # found from the zeros alone
    assert (report["hidden_before"], report["hidden_after"]) == (32, 20)
    assert max_diff(want, list(run(small, feed).values())) < 1e-4
    assert report["params_before"] - report["params_after"] >= 0.95 * zeroed_params(plain)
    given, _ = shrink_hidden(graph, kept)
    assert max_diff(want, list(run(given, feed).values())) < 1e-4


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_fused_and_int8_graphs(exported, family):
    """ORT-fused graphs (EmbedLayerNormalization, SkipLayerNormalization, packed-QKV Attention) and their
    dynamic int8 versions (QEmbedLayerNormalization, QAttention, MatMulInteger, per tensor / per channel)."""
    masked, plain, kept, graph = exported[(family, "seq")]
    feed = feeds(family)
    want = reference(masked, kept, feed)
    fused = fuse(graph)
    ops = {n.op_type for n in fused.graph.node}
    assert {"EmbedLayerNormalization", "SkipLayerNormalization", "Attention"} <= ops
    cut, report = shrink_hidden(fused, None)
    assert report["kept"] == kept and max_diff(want, list(run(cut, feed).values())) < 1e-4
    for source, per_channel in ((graph, True), (fused, False)):
        int8 = quantize(source, per_channel)
        small, report = shrink_hidden(int8, None, sample_inputs=[feed])
        assert report["kept"] == kept
        got = list(run(small, feed).values())
        commuted = list(run(quantize(shrink_hidden(source, None)[0], per_channel), feed).values())
        assert max_diff(commuted, got) < 1e-5
        assert max_diff(want, got) < 0.1 and (got[0].argmax(-1) == want[0].argmax(-1)).all()
        assert report["params_before"] - report["params_after"] >= 0.95 * zeroed_params(plain)


def test_shrink_cuts_heads_ffn_dims_and_hidden_dims():
    """shrink(): heads / FFN dims cut and checked against the input as before, then the hidden cut;
    without the hidden keywords, exactly what shrink did before."""
    dead_heads, dead_dims = {0: [1, 3], 1: [0, 1, 2, 3]}, {0: list(range(0, 64, 3))}
    masked, plain, kept = pruned_model("bert", "seq", seed=1, dead_heads=dead_heads, dead_dims=dead_dims)
    graph = export(plain, "bert", "torchscript", 17)
    feed = feeds("bert")
    small, report = shrink(graph, sample_inputs=[feed], detect_hidden=True)
    assert [r["heads_after"] for r in report["layers"]] == [2, 0] and report["max_abs_diff"] < 1e-4
    assert report["hidden"]["kept"] == kept and report["hidden"]["hidden_after"] == 20
    assert "by design" in report["hidden"]["note"]
    assert max_diff(reference(masked, kept, feed), list(run(small, feed).values())) < 1e-4
    plain_small, plain_report = shrink(graph, sample_inputs=[feed])
    assert "hidden" not in plain_report
    assert max_diff(list(run(graph, feed).values()), list(run(plain_small, feed).values())) < 1e-4
    given, given_report = shrink(graph, hidden_kept=kept)
    assert given_report["hidden"]["source"] == "compression.json"
    assert elements(given) == elements(small)


def test_dense_graphs_unchanged_and_wrong_kept_refused(exported):
    _, _, kept, graph = exported[("roberta", "seq")]
    dense = export(HEADS["seq"].from_config(tiny_config("roberta")).eval(), "roberta", "torchscript", 17)
    same, report = shrink_hidden(dense, None)
    assert same is dense and report["hidden_after"] == 32 and "unchanged" in report["note"]
    live = next(i for i in range(32) if i in kept)
    with pytest.raises(ArtifactError, match=rf"hidden dims \[{live}\] are marked pruned"):
        shrink_hidden(graph, [i for i in kept if i != live])
    with pytest.raises(ArtifactError, match="do not index"):
        shrink_hidden(graph, kept + [40])


def test_unrecognised_use_of_the_stream_is_refused_by_name(exported):
    """A node on the residual stream the cut does not know (here a Softmax over it, or a Reshape to a
    shape computed at run time) stops the cut with its name; nothing is returned half cut."""
    _, _, kept, graph = exported[("distilbert", "seq")]
    bad = onnx.ModelProto.FromString(graph.SerializeToString())
    ln = next(n for n in bad.graph.node if n.op_type == "Div")  # the decomposed embedding LayerNorm
    out = ln.output[0]
    ln.output[0] = out + "_raw"
    bad.graph.node.insert(
        list(bad.graph.node).index(ln) + 1, helper.make_node("Softmax", [out + "_raw"], [out], name="odd_softmax")
    )
    with pytest.raises(GraphPatternError, match="Softmax node 'odd_softmax' reads the residual stream"):
        shrink_hidden(bad, kept)


def test_cli_shrink_reports_the_hidden_size(exported, tmp_path, capsys):
    from compress.cli.main import main

    _, _, kept, graph = exported[("bert", "seq")]
    onnx.save(graph, str(tmp_path / "in.onnx"))
    assert main(["shrink", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--report"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "hidden size 32 -> 20 (from zero weights)" in text and "parameters removed by the hidden cut" in text
    assert main(["shrink", str(tmp_path / "in.onnx"), str(tmp_path / "off.onnx"), "--hidden", "off"]) == 0
    assert "hidden size" not in capsys.readouterr().out
    assert elements(onnx.load(str(tmp_path / "off.onnx"))) > elements(onnx.load(str(tmp_path / "out.onnx")))
