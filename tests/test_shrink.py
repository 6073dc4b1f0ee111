"""ONNX surgery: tiny hand-built graphs (fast, exact control of the pattern) and real exports of tiny
BERT / RoBERTa / DistilBERT from both torch exporters, with uneven heads, a layer with no head left and
a layer with no FFN dim left."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.cli.main import main
from compress.core.errors import ArtifactError, GraphPatternError
from exporters.export import export_checkpoint
from exporters.graph import Graph, op_counts
from exporters.inputs import load_tokenizer, sample_inputs
from exporters.optimize import optimize
from exporters.sessions import assert_close, run
from exporters.surgery.layers import detect_kept, find_layers
from exporters.surgery.shrink import shrink
from helpers import cli_error, kill_structure, save_checkpoint, tiny_model

DEAD_HEADS = {0: [1, 3], 1: [0, 1, 2, 3], 2: [2]}  # uneven; layer 1 loses its attention
DEAD_DIMS = {0: list(range(0, 64, 3)), 1: list(range(10)), 2: list(range(64))}  # layer 2 loses its FFN


# ------------------------------------------------------------------------------------ hand-built graphs
def build_encoder(
    layers=2, hidden=16, heads=4, ffn=32, packed=False, dead_heads=None, dead_dims=None, seed=0, shared_qk=False
):
    """A post-LN encoder written with onnx.helper the way exporters lay it out. Dead heads have only
    their W_O rows zeroed, dead dims only their W2 rows: removal must be exact anyway."""
    rng = np.random.default_rng(seed)
    d = heads and hidden // heads
    nodes, inits = [], []

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    x = "x"
    c("scale", np.array(1 / np.sqrt(d), np.float32))
    c("sqrt2", np.array(np.sqrt(2), np.float32))
    c("one", np.array(1.0, np.float32))
    c("half", np.array(0.5, np.float32))
    c("split_shape", np.array([0, 0, heads, d], np.int64))
    c("merge_shape", np.array([0, 0, hidden], np.int64))
    for i in range(layers):
        w = {k: rng.normal(0, 0.3, (hidden, hidden)).astype(np.float32) for k in "qkvo"}
        b = {k: rng.normal(0, 0.1, hidden).astype(np.float32) for k in "qkvo"}
        for h in (dead_heads or {}).get(i, []):
            w["o"][h * d : (h + 1) * d] = 0
        p = f"l{i}."
        if packed:
            qkv = n(
                "Add",
                [
                    n("MatMul", [x, c(p + "wqkv", np.concatenate([w["q"], w["k"], w["v"]], 1))], p + "qkv_mm"),
                    c(p + "bqkv", np.concatenate([b["q"], b["k"], b["v"]])),
                ],
                p + "qkv",
            )
            nodes.append(
                helper.make_node(
                    "Split",
                    [qkv, c(p + "sizes", np.array([hidden] * 3, np.int64))],
                    [p + "q", p + "k", p + "v"],
                    axis=-1,
                    name=p + "split",
                )
            )
            q, k, v = p + "q", p + "k", p + "v"
        else:
            q, k, v = (
                n("Add", [n("MatMul", [x, c(p + "w" + t, w[t])], p + t + "_mm"), c(p + "b" + t, b[t])], p + t)
                for t in "qkv"
            )
            if shared_qk:  # what dynamo's CSE makes of identical (e.g. all-zero) Q and K projections
                nodes[:] = [nd for nd in nodes if not nd.output[0].startswith(p + "k")]
                k = q
        qh = n("Transpose", [n("Reshape", [q, "split_shape"], p + "qr")], p + "qh", perm=[0, 2, 1, 3])
        kt = n("Transpose", [n("Reshape", [k, "split_shape"], p + "kr")], p + "kt", perm=[0, 2, 3, 1])
        vh = n("Transpose", [n("Reshape", [v, "split_shape"], p + "vr")], p + "vh", perm=[0, 2, 1, 3])
        scores = n("Add", [n("Mul", [n("MatMul", [qh, kt], p + "qk"), "scale"], p + "scaled"), "mask"], p + "masked")
        ctx = n("MatMul", [n("Softmax", [scores], p + "probs", axis=-1), vh], p + "ctx")
        merged = n("Reshape", [n("Transpose", [ctx], p + "ctx_t", perm=[0, 2, 1, 3]), "merge_shape"], p + "merged")
        o = n("Add", [n("MatMul", [merged, c(p + "wo", w["o"])], p + "o_mm"), c(p + "bo", b["o"])], p + "o")
        a = n(
            "LayerNormalization",
            [
                n("Add", [o, x], p + "res1"),
                c(p + "g1", np.ones(hidden, np.float32)),
                c(p + "be1", np.zeros(hidden, np.float32)),
            ],
            p + "ln1",
            axis=-1,
        )
        w1 = rng.normal(0, 0.3, (hidden, ffn)).astype(np.float32)
        w2 = rng.normal(0, 0.3, (ffn, hidden)).astype(np.float32)
        w2[(dead_dims or {}).get(i, [])] = 0
        h = n(
            "Add",
            [n("MatMul", [a, c(p + "w1", w1)], p + "h_mm"), c(p + "b1", rng.normal(0, 0.1, ffn).astype(np.float32))],
            p + "h",
        )
        h = n(
            "Mul", [h, c(p + "act_scale", rng.uniform(0.5, 1.5, ffn).astype(np.float32))], p + "hs"
        )  # per-dim constant
        gelu = n(
            "Mul",
            [
                n(
                    "Mul",
                    [h, n("Add", [n("Erf", [n("Div", [h, "sqrt2"], p + "hd")], p + "erf"), "one"], p + "erf1")],
                    p + "g0",
                ),
                "half",
            ],
            p + "gelu",
        )
        f = n(
            "Add",
            [
                n("MatMul", [gelu, c(p + "w2", w2)], p + "f_mm"),
                c(p + "b2", rng.normal(0, 0.1, hidden).astype(np.float32)),
            ],
            p + "f",
        )
        x = n(
            "LayerNormalization",
            [
                n("Add", [f, a], p + "res2"),
                c(p + "g2", np.ones(hidden, np.float32)),
                c(p + "be2", np.zeros(hidden, np.float32)),
            ],
            p + "ln2",
            axis=-1,
        )
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", hidden]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, 1, "L"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # ORT 1.31 reads <= 13
    onnx.checker.check_model(model)
    return model


def float_feeds(hidden=16, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for b, length in ((1, 3), (4, 9)):
        mask = np.zeros((b, 1, 1, length), np.float32)
        mask[1:, ..., length // 2 :] = -1e4
        out.append({"x": rng.normal(size=(b, length, hidden)).astype(np.float32), "mask": mask})
    return out


def weight_shapes(model, prefix):
    return {t.name: tuple(t.dims) for t in model.graph.initializer if t.name.startswith(prefix)}


@pytest.mark.parametrize("packed", [False, True], ids=["separate-qkv", "packed-qkv"])
def test_tiny_graph_uneven_heads_and_empty_blocks(packed):
    dense = build_encoder(
        layers=3,
        packed=packed,
        dead_heads={0: [1], 1: [0, 1, 2, 3], 2: [0, 2]},
        dead_dims={0: list(range(20)), 2: list(range(32))},
    )
    small, report = shrink(dense, sample_inputs=float_feeds(), atol=1e-5)
    assert [(r["heads_after"], r["ffn_after"]) for r in report["layers"]] == [(3, 12), (0, 32), (2, 0)]
    assert report["layers"][0]["heads_kept"] == [0, 2, 3]
    assert report["max_abs_diff"] < 1e-5
    ops = op_counts(small)
    assert ops["Softmax"] == 2 and ops["Erf"] == 2  # layer 1 lost its attention, layer 2 its FFN
    assert ops["MatMul"] == 2 * (4 if packed else 6) + 2 * 2  # two attention blocks + two FFNs left
    shapes = {
        tuple(numpy_helper.to_array(t).tolist()) for t in small.graph.initializer if t.name.startswith("shrunk_shape")
    }
    assert shapes == {(0, 0, 3, 4), (0, 0, 12), (0, 0, 2, 4), (0, 0, 8)}
    w = weight_shapes(small, "layer0.")
    assert w["layer0.attention.output.weight"] == (12, 16) and w["layer0.ffn.out.weight"] == (12, 16)
    assert w["layer0.ffn.act.const"] == (12,)  # the per-dim constant inside the activation was sliced
    assert (
        (w["layer0.attention.qkv.weight"] == (16, 36)) if packed else (w["layer0.attention.query.weight"] == (16, 12))
    )


def test_projection_shared_by_q_and_k_is_sliced_once():
    dense = build_encoder(layers=1, shared_qk=True, dead_heads={0: [0, 3]})
    small, report = shrink(dense, sample_inputs=float_feeds(), atol=1e-5)
    assert report["layers"][0]["heads_kept"] == [1, 2]
    assert weight_shapes(small, "layer0.attention.query")["layer0.attention.query.weight"] == (16, 8)


def test_tiny_graph_structure_from_json_must_match_the_weights():
    dense = build_encoder(layers=2, dead_heads={0: [1]}, dead_dims={1: [0, 1]})
    g = Graph(dense)
    layers, _ = find_layers(g, None)
    kept = detect_kept(g, layers)
    assert kept[0].heads == (0, 2, 3) and len(kept[1].ffn_dims) == 30
    # keeping a zero structure is allowed (nothing removed for it) ...
    _, report = shrink(
        dense,
        [{"heads_kept": [0, 1, 2, 3], "ffn_dims_kept": list(range(32))}] * 2,
        num_heads=4,
        sample_inputs=float_feeds(),
    )
    assert report["source"] == "compression.json" and report["layers"][0]["heads_after"] == 4
    # ... removing a live one is not: the json does not describe this graph
    wrong = [{"heads_kept": [0, 1, 2], "ffn_dims_kept": list(range(32))}, kept[1]]
    with pytest.raises(ArtifactError, match=r"layer 0: .*heads \[3\]"):
        shrink(dense, wrong, num_heads=4)
    with pytest.raises(ArtifactError, match="already shrunk"):
        shrink(dense, kept, num_heads=12)


def test_unrecognised_graphs_raise_graph_pattern_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])
    mlp = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
            "mlp",
            [x],
            [y],
            [numpy_helper.from_array(np.ones((16, 16), np.float32), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    with pytest.raises(GraphPatternError, match="no attention block"):
        shrink(mlp)

    bad = build_encoder(layers=1)
    next(n for n in bad.graph.node if n.name == "l0.kt").attribute[0].ints[:] = [0, 2, 1, 3]  # K not transposed
    with pytest.raises(GraphPatternError, match=r"K heads are transposed with \[0, 2, 1, 3\]"):
        shrink(bad)

    bad = build_encoder(layers=1)
    mm = next(n for n in bad.graph.node if n.name == "l0.o_mm")
    mm.input[1] = "x"  # O projection weight is not a constant any more
    with pytest.raises(GraphPatternError, match="O projection"):
        shrink(bad)

    fused = build_encoder(layers=1)
    fused.graph.node.append(helper.make_node("Attention", ["x"], ["unused"], domain="com.microsoft", num_heads=4))
    # fused com.microsoft Attention is rewritten (tests/test_zoo.py); one without its
    # packed weight is still refused, naming the node and what is missing
    with pytest.raises(
        GraphPatternError, match="fused Attention at Attention node 'unused': the packed QKV weight is not a constant"
    ):
        shrink(fused)
    other = build_encoder(layers=1)
    other.graph.node.append(
        helper.make_node("MultiHeadAttention", ["x", "x", "x"], ["unused"], domain="com.microsoft", num_heads=4)
    )
    with pytest.raises(
        GraphPatternError, match="fused MultiHeadAttention .*only com.microsoft Attention / QAttention are rewritten"
    ):
        shrink(other)


@pytest.mark.parametrize("axis", [-1, 1], ids=["head-size", "head-count"])
def test_runtime_scale_factor_must_read_the_head_size(axis):
    """torch's SDPA decomposition scales Q by a factor computed from Shape(Q_heads)[-1]. That
    one survives cutting heads; a factor read from another dim (here the head count) would not, so the
    block is refused rather than silently changed."""
    model = build_encoder(layers=1, dead_heads={0: [1, 3]})
    nodes = list(model.graph.node)
    qk = next(n for n in nodes if n.name == "l0.qk")
    model.graph.initializer.extend([numpy_helper.from_array(np.array(axis, np.int64), "axis_idx")])
    extra = [
        helper.make_node("Shape", ["l0.qh"], ["q_shape"], name="q_shape"),
        helper.make_node("Gather", ["q_shape", "axis_idx"], ["q_dim"], name="q_dim", axis=0),
        helper.make_node("Cast", ["q_dim"], ["q_dim_f"], name="q_dim_f", to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["q_dim_f"], ["q_sqrt"], name="q_sqrt"),
        helper.make_node("Reciprocal", ["q_sqrt"], ["q_factor"], name="q_factor"),
        helper.make_node("Mul", ["l0.qh", "q_factor"], ["q_scaled"], name="q_scaled"),
    ]
    qk.input[0] = "q_scaled"
    del model.graph.node[:]
    model.graph.node.extend(nodes[: nodes.index(qk)] + extra + nodes[nodes.index(qk) :])
    onnx.checker.check_model(model)
    if axis == -1:
        small, report = shrink(model, sample_inputs=float_feeds(), atol=1e-5)
        assert report["layers"][0]["heads_kept"] == [0, 2]
    else:
        with pytest.raises(
            GraphPatternError, match="expected a Reshape splitting Q into heads, found Mul node 'q_scaled'"
        ):
            shrink(model)


def test_fused_matmul_with_transposed_k():
    """ORT's saved graphs can hold the scores as com.microsoft FusedMatMul(Q, K, transB=1, alpha): K then
    stays in the Q layout (the zoo's ORT graph has transB=0; this covers the other form)."""
    model = build_encoder(layers=1, dead_heads={0: [0, 2]})
    kt = next(n for n in model.graph.node if n.name == "l0.kt")
    kt.attribute[0].ints[:] = [0, 2, 1, 3]
    qk = next(n for n in model.graph.node if n.name == "l0.qk")
    qk.op_type, qk.domain = "FusedMatMul", "com.microsoft"
    qk.attribute.extend([helper.make_attribute("transB", 1), helper.make_attribute("alpha", 1.0)])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    small, report = shrink(model, sample_inputs=float_feeds(), atol=1e-5)
    assert report["layers"][0]["heads_kept"] == [1, 3] and report["max_abs_diff"] < 1e-5
    kt.attribute[0].ints[:] = [0, 2, 3, 1]  # K transposed twice: not attention heads any more
    with pytest.raises(GraphPatternError, match=r"K heads are transposed with \[0, 2, 3, 1\], expected \[0, 2, 1, 3\]"):
        shrink(model)


# ------------------------------------------------------------------------------------ real exports
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Dense exports (feature-extraction: O(1) outputs make equality meaningful) of masked tiny models."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for family, exporter in (
        ("bert", "torchscript"),
        ("bert", "dynamo"),
        ("roberta", "torchscript"),
        ("distilbert", "torchscript"),
    ):
        model = kill_structure(tiny_model(family, layers=3), DEAD_HEADS, DEAD_DIMS)
        ck = save_checkpoint(model, root / f"ck_{family}_{exporter}")
        result = export_checkpoint(
            ck, root / f"onnx_{family}_{exporter}", task="feature-extraction", exporter=exporter, shrink=False
        )
        assert result.exporter == exporter
        out[(family, exporter)] = result.path
    return out


@pytest.mark.parametrize(
    "family,exporter",
    [("bert", "torchscript"), ("bert", "dynamo"), ("roberta", "torchscript"), ("distilbert", "torchscript")],
)
def test_shrink_exported_models(exports, family, exporter):
    path = exports[(family, exporter)]
    dense = onnx.load(str(path))
    feeds = sample_inputs([i.name for i in dense.graph.input], load_tokenizer(path.parent))
    small, report = shrink(dense, num_heads=4, head_size=8, sample_inputs=feeds)
    assert [(r["heads_after"], r["ffn_after"]) for r in report["layers"]] == [(2, 42), (0, 54), (3, 0)]
    assert report["max_abs_diff"] < 1e-4
    for feed in feeds:  # shapes and values, independently of shrink's own check
        ref, got = run(dense, feed), run(small, feed)
        assert got["last_hidden_state"].shape == ref["last_hidden_state"].shape
        np.testing.assert_allclose(got["last_hidden_state"], ref["last_hidden_state"], atol=1e-4)
    before, after = op_counts(dense), op_counts(small)
    assert before["Softmax"] == 3 and after["Softmax"] == 2
    assert after["MatMul"] == 8 + 2 + 6  # full layer 0, layer 1 FFN only, layer 2 attention only
    assert before["Erf"] == 3 and after["Erf"] == 2
    assert report["layers"][0]["params_after"] == 4 * 32 * 16 + 3 * 16 + 32 + 2 * 32 * 42 + 42 + 32
    onnx.checker.check_model(small)


def test_optimize_fuses_attention_with_uneven_heads(exports):
    path = exports[("bert", "torchscript")]
    dense = onnx.load(str(path))
    feeds = sample_inputs([i.name for i in dense.graph.input], load_tokenizer(path.parent))
    small, _ = shrink(dense, sample_inputs=feeds)
    fused, report = optimize(small, feeds)
    assert report["applied"], report["note"]
    assert report["fusions"]["Attention"] == 2  # layers with 2 and 3 heads, each fused with its own count
    heads = sorted(
        next(a.i for a in n.attribute if a.name == "num_heads") for n in fused.graph.node if n.op_type == "Attention"
    )
    assert heads == [2, 3]
    assert assert_close(dense, fused, feeds, 1e-4, "fused") < 1e-4


def test_optimize_reports_when_attention_does_not_fuse(exports):
    path = exports[("bert", "dynamo")]
    dense = onnx.load(str(path))
    feeds = sample_inputs([i.name for i in dense.graph.input], load_tokenizer(path.parent))
    fused, report = optimize(shrink(dense)[0], feeds)
    assert report["applied"] and "Attention" not in report["fusions"]
    assert "attention fused in 0 of 2 layers" in report["note"]


# ------------------------------------------------------------------------------------ CLI
def test_cli_export_then_shrink(tmp_path, capsys):
    model = kill_structure(tiny_model("bert", layers=3), DEAD_HEADS, DEAD_DIMS)
    ck = save_checkpoint(model, tmp_path / "ck")
    assert main(["export", "--onnx", str(ck), "--output", str(tmp_path / "dense"), "--no-shrink"]) == 0
    out, report = tmp_path / "small.onnx", tmp_path / "report.json"
    assert (
        main(["shrink", str(tmp_path / "dense" / "model.onnx"), str(out), "--optimize", "--report", str(report)]) == 0
    )
    text = capsys.readouterr().out
    assert "attention removed" in text and "FFN removed" in text
    data = json.loads(report.read_text())
    assert [r["heads_after"] for r in data["layers"]] == [2, 0, 3] and data["optimize"]["applied"]
    assert op_counts(onnx.load(str(out)))["Attention"] == 2
    # refuses to clobber, and errors are one line with exit code 2
    code = main(["shrink", str(tmp_path / "dense" / "model.onnx"), str(out)])
    assert "exists" in cli_error(code, capsys.readouterr().err)
    missing = main(["shrink", str(tmp_path / "missing.onnx"), str(tmp_path / "x.onnx")])
    assert "does not exist" in cli_error(missing, capsys.readouterr().err)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_uses_and_guards_compression_json(tmp_path, capsys):
    from test_export import write_compression_json

    model = kill_structure(tiny_model("distilbert", layers=3), DEAD_HEADS, DEAD_DIMS)
    ck = save_checkpoint(model, tmp_path / "ck")
    write_compression_json(ck, model)
    assert main(["export", "--onnx", str(ck), "--output", str(tmp_path / "dense"), "--no-shrink"]) == 0
    assert main(["shrink", str(tmp_path / "dense" / "model.onnx"), str(tmp_path / "s.onnx")]) == 0
    assert "structure from" in capsys.readouterr().out
    assert main(["export", "--onnx", str(ck), "--output", str(tmp_path / "small"), "--shrink"]) == 0
    capsys.readouterr()
    code = main(["shrink", str(tmp_path / "small" / "model.onnx"), str(tmp_path / "s2.onnx")])
    assert "already shrunk" in cli_error(code, capsys.readouterr().err)


def test_dense_graph_normalised_for_fusion(exports):
    from exporters.surgery.rewrite import normalize_heads

    path = exports[("bert", "torchscript")]
    dense = onnx.load(str(path))
    feeds = sample_inputs([i.name for i in dense.graph.input], load_tokenizer(path.parent))
    same = normalize_heads(dense)
    assert op_counts(same)["MatMul"] == op_counts(dense)["MatMul"]  # nothing removed ...
    assert assert_close(dense, same, feeds, 1e-5, "normalised") < 1e-5
    fused, report = optimize(same, feeds)  # ... but every layer's head count is now readable by ORT
    assert report["applied"] and report["fusions"]["Attention"] == 3


def test_cli_export_shrinks_pruned_checkpoints_by_default(tmp_path, capsys):
    """Exporting a pruned model must not give the unshrunk graph by accident."""
    model = kill_structure(tiny_model("bert", layers=3), DEAD_HEADS, DEAD_DIMS)
    ck = save_checkpoint(model, tmp_path / "ck")  # no compression.json: the zero weights tell
    assert main(["export", "--onnx", str(ck), "--output", str(tmp_path / "auto")]) == 0
    text = capsys.readouterr().out
    assert "attention removed" in text and "FFN removed" in text  # what was removed is printed
    small = op_counts(onnx.load(str(tmp_path / "auto" / "model.onnx")))
    assert main(["export", "--onnx", str(ck), "--output", str(tmp_path / "full"), "--no-shrink"]) == 0
    full = op_counts(onnx.load(str(tmp_path / "full" / "model.onnx")))
    assert (small["Softmax"], full["Softmax"]) == (2, 3) and "removed" not in capsys.readouterr().out
    # a dense checkpoint has nothing to cut: exported as is, and the note says why
    dense = save_checkpoint(tiny_model("bert", layers=2), tmp_path / "dense_ck")
    assert main(["export", "--onnx", str(dense), "--output", str(tmp_path / "dense")]) == 0
    assert "not shrunk: no all-zero heads or FFN dims in the graph" in capsys.readouterr().out
    # --shrink is still accepted
    assert main(["export", "--onnx", str(ck), "--output", str(tmp_path / "forced"), "--shrink"]) == 0
    assert op_counts(onnx.load(str(tmp_path / "forced" / "model.onnx")))["Softmax"] == 2
