"""The public Python API: the main job's chain on a tiny model, each result type, no config mutation."""

from __future__ import annotations

import copy
import json

import pytest

import compress
import helpers as h


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    h.write_sst2_like(d / "data" / "sst2", n_train=32, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), d / "teacher")
    return d


def test_main_chain_in_python(ws):
    data = compress.DataConfig(task="sst2", data_dir=str(ws / "data"))
    config = compress.PruneConfig(
        method="struct",
        lambda_reg=50.0,
        score_lr=0.5,
        train=compress.TrainConfig(max_steps=16, batch_size=8, warmup_ratio=0.05, progress=False),
        distill=compress.DistillConfig(teacher=str(ws / "teacher")),
    )
    given = copy.deepcopy(config)
    pruned = compress.prune(ws / "teacher", ws / "pruned", config, data=data)
    assert config == given  # the caller's config is not touched
    assert isinstance(pruned, compress.PruneResult) and pruned.path == ws / "pruned"
    assert 0 <= pruned.metrics["accuracy"] <= 1
    assert pruned.report == json.loads((ws / "pruned" / "compression.json").read_text())
    assert all(isinstance(k, compress.LayerKeep) for k in pruned.layers)
    assert sum(len(k.heads) for k in pruned.layers) < 8  # struct at lambda 50 removed whole heads

    onnx = compress.export_onnx(pruned.path, ws / "onnx", compress.ExportConfig(shrink=True, optimize=True))
    assert isinstance(onnx, compress.ExportResult) and onnx.path == ws / "onnx" / "model.onnx"
    assert onnx.report["shrink"]["params_after"] < onnx.report["shrink"]["params_before"]
    assert onnx.metrics["max_abs_diff"] <= 1e-4

    int8 = compress.quantize(onnx.path, ws / "int8")
    assert isinstance(int8, compress.QuantizeResult) and int8.path == ws / "int8" / "model.onnx"
    assert int8.report["op_counts"] and int8.report["size_after"] < int8.report["size_before"]

    fp32_eval = compress.evaluate(onnx.path, data=data)
    int8_eval = compress.evaluate(int8.path, data=data)
    torch_eval = compress.evaluate(pruned.path, data=data)
    assert isinstance(fp32_eval, compress.EvalResult) and fp32_eval.path is None
    # The shrunk, fused ONNX graph scores what the PyTorch checkpoint scores.
    assert fp32_eval.metrics["accuracy"] == torch_eval.metrics["accuracy"]
    assert 0 <= int8_eval.metrics["accuracy"] <= 1

    bench = compress.benchmark(
        [onnx.path, int8.path], compress.BenchConfig(batch_sizes=(1,), seq_lens=(16,), warmup=1, iterations=2)
    )
    assert isinstance(bench, compress.BenchResult) and len(bench.metrics) == 2
    assert all(v > 0 for v in bench.metrics.values())


def test_shrink_result(ws):
    dense = compress.export_onnx(ws / "teacher", ws / "dense")
    model = h.kill_structure(h.tiny_model("bert"), {0: [1, 2]}, {1: list(range(10))})
    h.save_checkpoint(model, ws / "zeroed")
    zeroed = compress.export_onnx(
        ws / "zeroed", ws / "zeroed-onnx", compress.ExportConfig(shrink=False)
    )  # the dense graph
    result = compress.shrink(zeroed.path, ws / "shrunk.onnx", compress.ShrinkConfig(from_weights=True))
    assert isinstance(result, compress.ShrinkResult) and result.path.is_file()
    assert result.metrics["params_after"] < result.metrics["params_before"]
    assert [layer["heads_after"] for layer in result.report["layers"]] == [2, 4]
    assert dense.path.is_file()


def test_quantize_measures_dev_metrics_with_data(ws):
    data = compress.DataConfig(task="sst2", data_dir=str(ws / "data"))
    onnx = compress.export_onnx(ws / "teacher", ws / "dense-for-int8")
    config = compress.QuantizeConfig(threads=1, max_eval_samples=8)
    int8 = compress.quantize(onnx.path, ws / "int8-with-data", config, data=data)
    assert set(int8.metrics) == {"accuracy"} and set(int8.report["metrics_before"]) == {"accuracy"}
    assert int8.report["eval_batch_size"] == 1  # dynamic int8 is evaluated row by row
    assert compress.quantize(onnx.path, ws / "int8-without-data").metrics == {}


def test_errors_are_typed_with_causes(ws):
    with pytest.raises(compress.CompressError) as e:
        compress.evaluate(ws / "nope", data=compress.DataConfig(task="sst2", data_dir=str(ws / "data")))
    assert "not found" in str(e.value)
    bad = ws / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(compress.CompressError) as e:
        compress.shrink(bad, ws / "out.onnx")
    assert e.value.__cause__ is not None  # the library keeps the cause; only the CLI flattens it


def test_run_result_and_recorded_config(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=16, n_dev=8)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "teacher")
    cfg = compress.RunConfig(
        task="sst2",
        data_dir=str(tmp_path / "data"),
        bench_batch_sizes=[1],
        bench_seq_len=16,
        bench_iterations=2,
        fill_steps=2,
        quantize=False,
    )
    cfg.prune = compress.PruneConfig(
        method="struct",
        lambda_reg=50.0,
        score_lr=0.5,
        train=compress.TrainConfig(max_steps=8, batch_size=8, warmup_ratio=0.05, progress=False),
        distill=compress.DistillConfig(teacher=str(tmp_path / "teacher")),
    )
    given = copy.deepcopy(cfg)
    result = compress.run(None, tmp_path / "out", cfg)
    assert cfg == given
    assert isinstance(result, compress.RunResult) and result.path == tmp_path / "out"
    assert set(result.metrics) >= {"dense fp32 dev_accuracy", "pruned fp32 speedup_b1"}
    # No temporary path leaks into what the run records.
    for f in ("summary.json", "recipe.json", "filled/compression.json"):
        assert ".tmp-" not in (tmp_path / "out" / f).read_text(), f
    filled = json.loads((tmp_path / "out" / "filled" / "compression.json").read_text())
    assert filled["base_model"] == str(tmp_path / "teacher") and filled["recipe"]["source"] == "../pruned"
