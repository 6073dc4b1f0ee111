"""NaN / inf outputs fail every numeric check: export validation, shrink, fusion, quantize and the zoo
harness. np.max of a difference holding NaN is NaN, and max(worst, nan) keeps `worst`, so a running
maximum alone lets a graph whose outputs are all NaN through; each check must name the NaN in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import zoo_check
from onnx import TensorProto, helper, numpy_helper

import helpers
from compress.core.config import QuantizeConfig
from compress.core.errors import ValidationError
from compress.ort.quantize import quantize_onnx
from exporters.optimize import optimize
from exporters.sessions import assert_close
from exporters.surgery.shrink import shrink


def nan_output(model: onnx.ModelProto, output: str = "logits") -> onnx.ModelProto:
    """The same graph with `output` replaced by (x - x) / 0, NaN everywhere x is finite."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for node in out.graph.node:
        node.output[:] = [f"{output}.before_nan" if o == output else o for o in node.output]
    out.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "nan.zero"))
    out.graph.node.extend(
        [
            helper.make_node("Sub", [f"{output}.before_nan"] * 2, ["nan.diff"], name="nan.sub"),
            helper.make_node("Div", ["nan.diff", "nan.zero"], [output], name="nan.div"),
        ]
    )
    return out


def one_line_nan(e: pytest.ExceptionInfo) -> None:
    msg = str(e.value)
    assert "\n" not in msg and "NaN" in msg, msg


@pytest.fixture(scope="module")
def graph():
    m = zoo_check.meta("bert_legacy_op14_tt")
    zeroed, _, _ = zoo_check.zero_structure(zoo_check.load("bert_legacy_op14_tt"), m["hidden"], m["num_heads"])
    return zeroed


def test_assert_close_fails_on_nan_candidate_and_nan_reference(graph):
    batches = zoo_check.feeds(graph)
    with pytest.raises(ValidationError) as e:
        assert_close(graph, nan_output(graph), batches, 1e-4, what="candidate")
    one_line_nan(e)
    assert "finite" in str(e.value)
    with pytest.raises(ValidationError) as e:  # a NaN reference proves nothing, the same NaN included
        assert_close(nan_output(graph), nan_output(graph), batches, 1e-4, what="candidate")
    one_line_nan(e)


def test_shrink_refuses_a_graph_computing_nan(graph, tmp_path, capsys):
    batches = zoo_check.feeds(graph)
    with pytest.raises(ValidationError) as e:
        shrink(nan_output(graph), sample_inputs=batches)
    one_line_nan(e)
    onnx.save(nan_output(graph), str(tmp_path / "in.onnx"))
    code = helpers.main(["shrink", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx")])
    assert "NaN" in helpers.cli_error(code, capsys.readouterr().err)
    assert not (tmp_path / "out.onnx").exists()


def test_fusion_is_not_applied_when_outputs_are_nan(graph):
    fused, report = optimize(nan_output(graph), zoo_check.feeds(graph))
    assert not report["applied"] and "NaN" in report["note"], report


def test_zoo_harness_counts_nan_as_a_difference():
    nan, one = np.full((2, 2), np.nan, np.float32), np.ones((2, 2), np.float32)
    assert zoo_check.max_diff([[nan]], [[one]]) == np.inf
    assert zoo_check.max_diff([[one]], [[nan]]) == np.inf
    assert zoo_check.max_diff([[nan]], [[nan]]) == np.inf
    assert zoo_check.max_diff([[one]], [[one]]) == 0.0


def test_export_validation_fails_on_nan(tmp_path):
    from test_onnx_runtime import export_tiny

    from exporters.export import validate_against_torch

    model = helpers.tiny_model()
    graph = onnx.load(str(export_tiny(tmp_path / "m", model) / "model.onnx"))
    names, task = [i.name for i in graph.graph.input], "sequence-classification"
    ids = np.random.default_rng(0).integers(5, len(helpers.WORDS), (3, 9))
    batches = [{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}]
    validate_against_torch(graph, model, task, names, batches, 1e-4)
    with pytest.raises(ValidationError) as e:
        validate_against_torch(nan_output(graph), model, task, names, batches, 1e-4)
    one_line_nan(e)


def _int8_nan_graph(path) -> None:
    """logits = mean(sqrt(x W - x W)) over the sequence, with x = embedding(input_ids): 0 in fp32, NaN
    wherever int8 rounding makes the quantized product (MatMul "quantized") smaller than the fp32 one
    (MatMul "kept", left fp32 by --keep-fp32; the embedding stays fp32 too, so x is quantized at run time)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (40, 16)).astype(np.float32), "emb"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w.copy(), "w.copy"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "w"], ["a"], name="quantized"),
        helper.make_node("MatMul", ["x", "w.copy"], ["b"], name="kept"),
        helper.make_node("Sub", ["a", "b"], ["d"], name="sub"),
        helper.make_node("Sqrt", ["d"], ["s"], name="sqrt"),
        helper.make_node("ReduceMean", ["s"], ["logits"], name="mean", axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_nan",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_quantize_fails_when_int8_outputs_are_nan_and_fp32_ones_finite(tmp_path):
    _int8_nan_graph(tmp_path / "in.onnx")
    with pytest.raises(ValidationError) as e:
        quantize_onnx(
            tmp_path / "in.onnx", tmp_path / "out.onnx", QuantizeConfig(op_types=("MatMul",), keep_fp32=("kept",))
        )
    one_line_nan(e)
    assert "fp32" in str(e.value)
    assert not (tmp_path / "out.onnx").exists()


def test_quantize_fails_when_the_fp32_graph_computes_nan(graph, tmp_path):
    onnx.save(nan_output(graph), str(tmp_path / "in.onnx"))
    with pytest.raises(ValidationError) as e:
        quantize_onnx(tmp_path / "in.onnx", tmp_path / "out.onnx")
    one_line_nan(e)
