"""compress.ort.quantize / `compress quantize`: integer ops present, outputs close to fp32, static
calibration, fused and shrunk graphs, the stale value_info pitfall, sidecars and errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from test_onnx_runtime import export_tiny, shrunk_tiny_model, torch_export

import helpers
from compress.cli.main import main
from compress.core.config import QuantizeConfig
from compress.core.errors import ArtifactError, GraphPatternError, InvalidConfigError
from compress.ort.quantize import quantize_onnx
from exporters.sessions import make_session


def feeds(batch=3, seq=11, seed=0, vocab=len(helpers.WORDS)):
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(5, vocab, (batch, seq)),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }


def logits(path, f=None):
    s = make_session(path, "cpu", threads=1)
    f = f or feeds()
    return s.run(["logits"], {i.name: f[i.name] for i in s.get_inputs()})[0]


def ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def assert_close(path_a, path_b, frac=0.1):
    """int8 logits within `frac` of the fp32 logits' range (a tiny random model has small logits)."""
    x, y = logits(path_a), logits(path_b)
    assert np.abs(x - y).max() <= frac * np.abs(x).max() + 1e-3, (np.abs(x - y).max(), np.abs(x).max())


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("q") / "dense")


@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    """The export form ORT's fusion recognises (TorchScript exporter, eager attention)."""
    model = helpers.tiny_model()
    model.config._attn_implementation = "eager"
    return torch_export(model, tmp_path_factory.mktemp("q") / "eager")


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return helpers.write_sst2_like(tmp_path_factory.mktemp("data") / "sst2", n_train=24, n_dev=16).parent


def test_dynamic_default(dense, tmp_path):
    out = tmp_path / "int8"
    r = quantize_onnx(dense, out, threads=1)
    q = out / "model.onnx"
    counts = ops(q)
    assert counts["MatMulInteger"] >= 8 and counts["DynamicQuantizeLinear"] >= 1
    assert r.size_after < r.size_before  # (4x smaller on real models; graph overhead dominates here)
    assert r.kept_fp32, "the classifier stays fp32 by default"
    assert_close(dense / "model.onnx", q)
    # Dynamic axes survive: other batch sizes and lengths run.
    for b, s in ((1, 5), (4, 30)):
        assert logits(q, feeds(b, s)).shape == (b, 2)
    # Sidecars travel with the model.
    for f in dense.iterdir():
        if f.suffix != ".onnx":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_per_channel_and_keep_patterns(dense, tmp_path):
    r = quantize_onnx(dense, tmp_path / "pc", QuantizeConfig(per_channel=True, keep_fp32=("classifier", "*pooler*")))
    assert any("pooler" in n for n in r.kept_fp32)
    assert_close(dense / "model.onnx", tmp_path / "pc" / "model.onnx")
    with pytest.raises(InvalidConfigError, match="matches no node"):
        quantize_onnx(dense, tmp_path / "x", QuantizeConfig(keep_fp32=("no_such_node_xyz",)))


@pytest.mark.parametrize("fmt,expect", [("qoperator", "QLinearMatMul"), ("qdq", "QuantizeLinear")])
def test_static_with_tiny_calibration(dense, glue, tmp_path, fmt, expect):
    from compress.training.data import load_task_data

    task = load_task_data(
        "sst2", helpers.tiny_tokenizer(), data_dir=str(glue), splits=("train", "dev"), max_train_samples=8
    )
    out = tmp_path / f"static-{fmt}.onnx"
    r = quantize_onnx(
        dense,
        out,
        QuantizeConfig(mode="static", format=fmt, num_samples=8),
        calibration_data=task.train,
        task_data=task,
        threads=1,
    )
    assert ops(out)[expect] > 0
    assert_close(dense / "model.onnx", out, frac=0.2)
    assert set(r.metrics_after) == {"accuracy"} and 0 <= r.metrics_after["accuracy"] <= 1
    assert (tmp_path / "config.json").exists()  # sidecars copied next to an OUT.onnx elsewhere


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier fitted to the toy sentences, so that its predictions mean something (a random
    model's logits are near ties that any rounding flips) and int8 can be asked to keep them."""
    import torch

    torch.manual_seed(0)
    model = helpers.tiny_model()
    batch = helpers.tiny_tokenizer()(helpers.POSITIVE + helpers.NEGATIVE, padding=True, return_tensors="pt")
    labels = torch.tensor([1] * len(helpers.POSITIVE) + [0] * len(helpers.NEGATIVE))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return export_tiny(tmp_path_factory.mktemp("trained") / "dense", model)


def _predictions(path, texts) -> np.ndarray:
    enc = helpers.tiny_tokenizer()(texts, padding=True, return_tensors="np")
    s = make_session(path, "cpu", threads=1)
    return s.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in s.get_inputs()})[0].argmax(-1)


@pytest.mark.parametrize(
    "config",
    [QuantizeConfig(), QuantizeConfig(per_channel=False), QuantizeConfig(mode="static", format="qdq", num_samples=16)],
    ids=["dynamic-per-channel", "dynamic-per-tensor", "static-qdq"],
)
def test_int8_keeps_the_fp32_predictions(trained, glue, tmp_path, config):
    """int8 predicts what fp32 predicts: the same class for every training sentence and for >= 98% of 200
    random word sequences (measured: all but one, whose fp32 logits are 0.04 apart); a wrong scale or sign
    in one layer flips 3-25% of them."""
    from compress.training.data import load_task_data

    calibration = None
    if config.mode == "static":
        calibration = load_task_data("sst2", helpers.tiny_tokenizer(), data_dir=str(glue), splits=("train",)).train
    out = tmp_path / "int8.onnx"
    quantize_onnx(trained, out, config, calibration_data=calibration, threads=1)
    known = helpers.POSITIVE + helpers.NEGATIVE
    rng = np.random.default_rng(0)
    words = [w for w in helpers.WORDS if w.isalpha() and len(w) > 1]
    texts = known + [" ".join(rng.choice(words, rng.integers(2, 9))) for _ in range(200)]
    fp32, int8 = _predictions(trained / "model.onnx", texts), _predictions(out, texts)
    n = len(known)
    assert (fp32[:n] == [1] * len(helpers.POSITIVE) + [0] * len(helpers.NEGATIVE)).all()  # the fit worked
    assert (int8[:n] == fp32[:n]).all()
    assert (int8[n:] == fp32[n:]).mean() >= 0.98, (int8[n:] != fp32[n:]).sum()


def test_static_needs_calibration(dense, tmp_path):
    with pytest.raises(InvalidConfigError, match="calibration"):
        quantize_onnx(dense, tmp_path / "s", QuantizeConfig(mode="static"))


def test_stale_value_info_pitfall(dense, tmp_path):
    """Exporters (torch dynamo) record value_info for initializers; quantize_dynamic rewrites
    Gemm(transB) into MatMul with the weight transposed under the same name, and ONNX shape inference
    then stops on the stale shape. compress clears value_info first."""
    m = onnx.load(str(dense / "model.onnx"))
    for t in m.graph.initializer:
        m.graph.value_info.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    src = tmp_path / "stale"
    src.mkdir()
    onnx.save(m, str(src / "model.onnx"))
    quantize_onnx(src, tmp_path / "q.onnx")
    assert ops(tmp_path / "q.onnx")["MatMulInteger"] > 0


def test_optimize_then_quantize(eager, tmp_path):
    r = quantize_onnx(eager, tmp_path / "fused", QuantizeConfig(optimize=True), threads=1)
    assert r.fusion and r.fusion.get("Attention") == 2, r.warnings
    assert ops(tmp_path / "fused" / "model.onnx")["QAttention"] == 2
    assert_close(eager / "model.onnx", tmp_path / "fused" / "model.onnx")


def test_quantize_graph_already_fused_by_ort(eager, tmp_path):
    """ORT optimizer output (com.microsoft ops) fed straight to quantize: plain ONNX shape inference
    cannot type those ops; symbolic shape inference is used instead."""
    from onnxruntime.transformers.optimizer import optimize_model

    src = tmp_path / "ortopt"
    src.mkdir()
    optimize_model(
        str(eager / "model.onnx"), model_type="bert", num_heads=4, hidden_size=32, opt_level=0
    ).save_model_to_file(str(src / "model.onnx"))
    assert ops(src / "model.onnx")["SkipLayerNormalization"] > 0
    quantize_onnx(src, tmp_path / "q.onnx")
    assert ops(tmp_path / "q.onnx")["QAttention"] == 2
    assert_close(src / "model.onnx", tmp_path / "q.onnx")
    # The in-memory optimizer result saved with onnx.save lacks the com.microsoft opset import
    # (ONNX Runtime loads it anyway); that is accepted too.
    model = onnx.load(str(src / "model.onnx"))
    del model.opset_import[1:]
    assert [o.domain for o in model.opset_import] == [""]
    onnx.save(model, str(src / "model.onnx"))
    quantize_onnx(src, tmp_path / "q2.onnx")
    assert ops(tmp_path / "q2.onnx")["QAttention"] == 2


def test_shrunk_graph_fuses_with_per_layer_heads(tmp_path):
    """Layers that kept 2 and 3 of 4 heads: fusion must give each Attention its own head count."""
    src = torch_export(shrunk_tiny_model(sharpen=20.0), tmp_path / "shrunk")
    r = quantize_onnx(src, tmp_path / "q", QuantizeConfig(optimize=True), threads=1)
    assert r.fusion and r.fusion.get("Attention") == 2, r.warnings
    heads = [
        a.i
        for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node
        if n.op_type == "QAttention"
        for a in n.attribute
        if a.name == "num_heads"
    ]
    assert heads == [2, 3]
    assert_close(src / "model.onnx", tmp_path / "q" / "model.onnx")


def test_wrong_fusion_is_caught(tmp_path, monkeypatch):
    """Without per-layer head counts, the global count (4) would split shrunk layers wrongly; the
    numeric check rejects that graph and the unfused one is quantized instead."""
    import compress.ort.quantize as q

    src = torch_export(shrunk_tiny_model(sharpen=20.0), tmp_path / "shrunk")

    def no_per_layer_counts(model):  # as for a graph whose attention surgery cannot match
        raise GraphPatternError("attention not matched")

    monkeypatch.setattr(q, "normalize_heads", no_per_layer_counts)
    r = quantize_onnx(src, tmp_path / "q", QuantizeConfig(optimize=True), threads=1)
    assert r.fusion is None and any("not equivalent" in w for w in r.warnings)
    assert ops(tmp_path / "q" / "model.onnx")["QAttention"] == 0
    assert_close(src / "model.onnx", tmp_path / "q" / "model.onnx")


def test_compression_json_carried_and_verified(dense, tmp_path):
    from compress.core.artifacts import read_compression_json, record_checksums, write_json

    src = tmp_path / "src"
    src.mkdir()
    for f in dense.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    write_json(
        src / "compression.json", record_checksums(src, {"format_version": 1, "method": "hybrid"}, ["model.onnx"])
    )
    quantize_onnx(src, tmp_path / "q")
    data = read_compression_json(tmp_path / "q", verify=True)  # checksums describe the int8 file
    assert data["method"] == "hybrid" and data["quantization"]["config"]["mode"] == "dynamic"


def test_unquantizable_graph(tmp_path):
    """A graph with nothing to quantize is an error, not a silent fp32 copy."""
    x = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["b", "s"])
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Cast", ["input_ids"], ["logits"], to=1, name="c")], "g", [x], [y]
    )
    d = tmp_path / "plain"
    d.mkdir()
    model = onnx.helper.make_model(
        g, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10
    )  # ORT 1.31 reads <= 13
    onnx.save(model, str(d / "model.onnx"))
    with pytest.raises(GraphPatternError, match="nothing .* was quantized"):
        quantize_onnx(d, tmp_path / "q.onnx", QuantizeConfig(keep_fp32=()))


def test_refuses_to_clobber(dense, tmp_path):
    with pytest.raises(InvalidConfigError, match="replace the input"):
        quantize_onnx(dense, dense / "model.onnx", overwrite=True)
    (tmp_path / "exists.onnx").write_bytes(b"x")
    with pytest.raises(InvalidConfigError, match="exists"):
        quantize_onnx(dense, tmp_path / "exists.onnx")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_reports_accuracy_and_json(dense, glue, tmp_path, capsys):
    rc = main(
        [
            "quantize",
            str(dense),
            "-o",
            str(tmp_path / "q"),
            "--task",
            "sst2",
            "--data-dir",
            str(glue),
            "--threads",
            "1",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["size_after"] < report["size_before"]
    assert set(report["metrics_before"]) == set(report["metrics_after"]) == {"accuracy"}
    assert "accuracy" in capsys.readouterr().out


def test_cli_corrupt_input_one_line(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage" * 10)
    err = helpers.cli_error(main(["quantize", str(bad), "-o", str(tmp_path / "q")]), capsys.readouterr().err)
    assert "corrupt" in err
    assert not (tmp_path / "q").exists()


def test_cli_bad_flag_combination(dense, tmp_path, capsys):
    code = main(["quantize", str(dense), "-o", str(tmp_path / "q"), "--format", "qdq"])
    assert "needs --mode static" in helpers.cli_error(code, capsys.readouterr().err)


def test_artifact_error_type(tmp_path):
    with pytest.raises(ArtifactError):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx")


def test_cli_static_from_calibration_file(dense, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(helpers.POSITIVE + helpers.NEGATIVE) + "\n")
    out = tmp_path / "s.onnx"
    assert (
        main(
            [
                "quantize",
                str(dense),
                "-o",
                str(out),
                "--mode",
                "static",
                "--calibration-file",
                str(calib),
                "--num-samples",
                "6",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert ops(out)["QLinearMatMul"] > 0


def _runtime_ops(path, tmp_path) -> Counter:
    """Op types after ORT's own load-time optimizations (what actually runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "runtime.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return ops(tmp_path / "runtime.onnx")


def test_no_runtime_skip_layernorm(eager, tmp_path):
    """The quantizer writes value_info; with it ORT fuses residual Add + LayerNorm into
    SkipLayerNormalization at load, which is slower on CPU. compress drops it (a control shows the
    mechanism: the same int8 graph with shapes re-inferred does get the fusion)."""
    out = tmp_path / "int8.onnx"
    quantize_onnx(eager, out, threads=1)
    q = onnx.load(str(out))
    assert not q.graph.value_info
    assert _runtime_ops(out, tmp_path)["SkipLayerNormalization"] == 0
    control = tmp_path / "control.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(q), str(control))
    assert _runtime_ops(control, tmp_path)["SkipLayerNormalization"] > 0


def _weight_scale_sizes(path) -> set[int]:
    """Element counts of the MatMul weight scales ORT's quantizer writes (`<weight>_scale`; embeddings excluded)."""
    g = onnx.load(str(path)).graph
    return {int(np.prod(i.dims)) for i in g.initializer if i.name.endswith("_scale") and "MatMul" in i.name}


def test_per_channel_is_the_default_and_per_tensor_opts_out(dense, tmp_path):
    assert main(["quantize", str(dense), "-o", str(tmp_path / "pc.onnx")]) == 0
    assert main(["quantize", str(dense), "-o", str(tmp_path / "pt.onnx"), "--per-tensor"]) == 0
    assert _weight_scale_sizes(tmp_path / "pt.onnx") == {1}
    assert min(_weight_scale_sizes(tmp_path / "pc.onnx")) > 1  # one scale per output column
    assert_close(dense / "model.onnx", tmp_path / "pc.onnx")
