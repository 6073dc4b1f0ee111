"""Surgery on real exporters' graphs: every graph of tests/zoo/ (made by tools/zoo/make_zoo.sh)
has heads (layer 1: all of them) and FFN dims zeroed in its weights, is shrunk, and must give the outputs
of the unshrunk zeroed graph within 1e-4 (int8 against the unshrunk int8 graph), remove >= 95% of the zeroed
parameters (dynamic int8: what its run-time ranges allow) and run in ONNX Runtime. Graphs the surgery refuses are
listed in REFUSED with the exact one-line message, so a refusal is a decision, not an accident."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import zoo_check

# name -> the exact refusal. Empty entries would be hidden failures; every refusal names the pattern.
REFUSED: dict[str, str] = {
    "bert_legacy_op14_int8_qoperator_static": (
        "static QOperator int8 ops (QGemm, QLinearAdd, QLinearMatMul, QLinearMul, QLinearSoftmax) are not rewritten: "
        "shrink the fp32 graph, then quantize (dynamic, or static in QDQ format, both of which shrink)"
    ),
}


def test_zoo_is_complete_and_small():
    names = zoo_check.entries()
    assert len(names) >= 24
    kinds = {(m["exporter"].split()[0], bool(m["fused"]), bool(m["int8"])) for m in map(zoo_check.meta, names)}
    assert {k[1] for k in kinds} == {False, True} and {k[2] for k in kinds} == {False, True}
    total = sum(p.stat().st_size for p in zoo_check.ZOO.iterdir())
    assert total < 10 * 2**20, f"the zoo is {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", ["bert_legacy_op14_tt", "bert_legacy_op14_int8_qdq_pc", "bert_optimum_O2"])
def test_zeroing_finds_every_layer_and_changes_the_outputs(name):
    """The fixture must really kill structure, or the shrink comparisons below would prove nothing."""
    m = zoo_check.meta(name)
    model = zoo_check.load(name)
    layers = zoo_check.locate(model, m["hidden"])
    assert len(layers) == 2
    zeroed, n, kept = zoo_check.zero_structure(model, m["hidden"], m["num_heads"])
    assert kept[1]["heads_kept"] == [] and kept[0]["heads_kept"] == [0, 2]
    assert n > 0
    batches = zoo_check.feeds(model)
    assert zoo_check.max_diff(zoo_check.outputs(model, batches), zoo_check.outputs(zeroed, batches)) > 1e-3


@pytest.mark.parametrize("side", ["both", "input"], ids=["output-zeroed", "input-zeroed"])
@pytest.mark.parametrize("name", zoo_check.entries())
def test_zoo_graph_shrinks_exactly_or_is_refused(name, side):
    """output-zeroed: Q/K/V+O and W1+W2 of the dead structure are zero. input-zeroed: only Q/K/V and W1,
    so each dead head / dim still adds a constant (V bias through softmax and W_O; act(b1) through W2)
    that must be folded into the output bias (fp32) or the structure kept (int8)."""
    rec = zoo_check.check(name, side)
    if name in REFUSED:
        assert rec["status"] == "refused", f"{name} is listed as refused but now {rec['status']}: update REFUSED"
        assert rec["message"] == REFUSED[name]
        assert "\n" not in rec["message"]
        return
    assert rec["status"] == "pass", rec.get("message")
    assert np.isfinite(rec["max_abs_diff"])


def _outputs_offset(model, delta: float):
    """`model` with `delta` added to its first output: what a surgery bug that moves every output does."""
    from onnx import helper, numpy_helper

    m = onnx.ModelProto.FromString(model.SerializeToString())
    name = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [o + "_before_offset" if o == name else o for o in node.output]
        node.input[:] = [i + "_before_offset" if i == name else i for i in node.input]
    m.graph.initializer.append(numpy_helper.from_array(np.array(delta, np.float32), "offset"))
    m.graph.node.append(helper.make_node("Add", [name + "_before_offset", "offset"], [name]))
    return m


INT8_SHRINKING = [n for n in zoo_check.entries() if zoo_check.meta(n).get("int8") and n not in REFUSED]


@pytest.mark.parametrize("delta", [1.0, 1e-3])
@pytest.mark.parametrize("name", INT8_SHRINKING)
def test_int8_check_catches_a_shrink_that_moves_the_outputs(name, delta, monkeypatch):
    """The int8 zoo check compares the shrunk int8 graph with the unshrunk int8 graph it came from (equal
    to ~1e-6 on the zoo, see above), not with the fp32 source (0.1-2 apart): a shrink whose outputs are
    off by 1, or by 1e-3, fails it, as `benchmarks/graph_zoo.py` runs it."""
    real = zoo_check.shrink_fn()

    def buggy_shrink(graph):
        small, report = real(graph)
        return _outputs_offset(small, delta), report

    monkeypatch.setattr(zoo_check, "shrink_fn", lambda: buggy_shrink)
    rec = zoo_check.check(name, "both")
    assert rec["status"] == "fail" and "outputs differ" in rec["message"], rec.get("message")


def test_cli_shrink_report_on_a_fused_zoo_graph(tmp_path, capsys):
    """`compress shrink --report` says per layer what it found and removed, and which fusions survive."""
    import onnx

    from compress.cli import main

    m = zoo_check.meta("bert_optimum_O2")
    zeroed, _, _ = zoo_check.zero_structure(zoo_check.load("bert_optimum_O2"), m["hidden"], m["num_heads"])
    onnx.save(zeroed, str(tmp_path / "in.onnx"))
    assert main(["shrink", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--report"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "Attention 2 -> 1" in text and "SkipLayerNormalization 4 -> 3" in text and "BiasGelu 2 -> 2" in text
    assert "layer 0: found fused Attention (com.microsoft, packed QKV)" in text and "removed heads [1, 3]" in text
    assert "removed heads [0, 1, 2, 3] (whole attention block)" in text
    assert (
        main(["shrink", str(tmp_path / "in.onnx"), str(tmp_path / "out2.onnx"), "--report", str(tmp_path / "r.json")])
        == 0
    )
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["fused_ops_before"]["Attention"] == 2 and data["fused_ops_after"]["Attention"] == 1


@pytest.mark.parametrize("name", [n for n in zoo_check.entries() if n not in REFUSED])
def test_whole_ffn_block_removed(name):
    """Layer 1 loses its whole FFN (and one head): the block's output bias goes to the residual, also
    when that is a SkipLayerNormalization (replaced by Add + LayerNormalization) or behind fake-quant."""
    rec = zoo_check.check(
        name,
        "both",
        heads_of=lambda i, n: [0] if i == 1 else [],
        dims_of=lambda i, width: list(range(width)) if i == 1 else [],
    )
    assert rec["status"] == "pass", rec["message"]
    # dynamic int8 keeps head 0 (its context, the V bias, is in W_O's run-time int8 range): int8_range.py
    dynamic = "dynamic" in str(rec["meta"]["int8"])
    assert rec["layers"][1] == (rec["meta"]["num_heads"] - (not dynamic), 0)


def test_input_zeroed_structure_is_folded_not_dropped():
    """The fold is what makes input-zeroed removal exact: the dead heads' V biases and the dead dims'
    activations are nonzero in the zoo graphs (random biases), so the output bias must change."""
    rec = zoo_check.check("bert_legacy_op14_tt", "input")
    assert rec["status"] == "pass", rec["message"]
    assert rec["bias_folded"][0] == {"heads": [1, 3], "ffn_dims": list(range(0, 128, 3))}
    assert rec["bias_folded"][1]["heads"] == [0, 1, 2, 3] and len(rec["bias_folded"][1]["ffn_dims"]) == 32
    import onnx

    m = zoo_check.meta("bert_legacy_op14_tt")
    zeroed, _, _ = zoo_check.zero_structure(zoo_check.load("bert_legacy_op14_tt"), m["hidden"], m["num_heads"], "input")
    small, _ = zoo_check.shrink_fn()(zeroed)
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in small.graph.initializer if "bias_folded" in t.name}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in zeroed.graph.initializer}
    ffn0 = folded["layer0.ffn.output.bias_folded"]
    assert not np.allclose(ffn0, original["model.bert.encoder.layer.0.output.dense.bias"], atol=1e-3)


def test_cli_shrink_reads_external_data(tmp_path, capsys):
    """Graphs saved with external data (as every model past 2 GB is) shrink from the command line."""
    import onnx

    from compress.cli import main

    m = zoo_check.meta("bert_legacy_op17_extdata")
    assert m["external_data"]
    zeroed, _, _ = zoo_check.zero_structure(zoo_check.load("bert_legacy_op17_extdata"), m["hidden"], m["num_heads"])
    on_disk = onnx.ModelProto.FromString(zeroed.SerializeToString())  # saving as external data edits the proto
    onnx.save(on_disk, str(tmp_path / "in.onnx"), save_as_external_data=True, location="in.onnx.data", size_threshold=0)
    assert (tmp_path / "in.onnx.data").stat().st_size > (tmp_path / "in.onnx").stat().st_size
    assert main(["shrink", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx")]) == 0
    small = onnx.load(str(tmp_path / "out.onnx"))
    batches = zoo_check.feeds(zeroed)
    assert zoo_check.max_diff(zoo_check.outputs(zeroed, batches), zoo_check.outputs(small, batches)) < 1e-4
    assert zoo_check.elements(small) < zoo_check.elements(zeroed)
