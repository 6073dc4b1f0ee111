"""compress.ort.bench / `compress bench`: well-formed JSON/CSV, interleaving, statistics, clear errors."""

from __future__ import annotations

import csv
import json

import onnxruntime as ort
import pytest
from test_onnx_runtime import export_tiny

import helpers
from compress.cli.main import main
from compress.core.config import BenchConfig
from compress.core.errors import InvalidConfigError
from compress.ort.bench import Runner, run_benchmark, summarize, time_grid_point, unique_labels


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    fp32 = export_tiny(root / "fp32")
    from compress.ort.quantize import quantize_onnx

    quantize_onnx(fp32, root / "int8")
    return fp32, root / "int8"


def test_cli_json_and_csv(models, tmp_path, capsys):
    fp32, int8 = models
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    rc = main(
        [
            "bench",
            str(fp32),
            str(int8),
            "--batch-sizes",
            "1",
            "2",
            "--seq-lens",
            "8",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json",
            str(js),
            "--csv",
            str(cs),
        ]
    )
    assert rc == 0
    report = json.loads(js.read_text())
    assert report["schema"] == "compress.bench/1"
    assert "bench" in report["command"]
    env = report["environment"]
    for key in ("onnxruntime", "torch", "cpu_model", "threads", "provider", "python"):
        assert key in env, key
    assert env["threads"] == 1 and env["onnxruntime"] == ort.__version__
    assert env["ort_thread_spinning"] is True and env["settle_ms"] > 0  # ORT's default, settled (compress.ort.bench)
    assert [m["label"] for m in report["models"]] == ["fp32", "int8"]
    rows = report["results"]
    assert len(rows) == 2 * 2  # models x grid points
    for r in rows:
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["runs"] == 3
        assert r["throughput_seq_s"] == pytest.approx(
            r["batch_size"] / (r["p50_ms"] / 1e3), rel=0.02
        )  # p50 is rounded to 1 us
    assert all(r["speedup"] == 1.0 for r in rows if r["model"] == "fp32")  # relative to the first model
    with open(cs) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"model", "p50_ms", "speedup", "threads", "onnxruntime"} <= set(table[0])
    assert "speedup" in capsys.readouterr().out


def test_torch_baseline(models, tmp_path):
    fp32, _ = models
    ckpt = helpers.save_checkpoint(helpers.tiny_model(), tmp_path / "ckpt")
    js = tmp_path / "r.json"
    assert (
        main(
            [
                "bench",
                str(fp32),
                "--torch",
                str(ckpt),
                "--batch-sizes",
                "1",
                "--seq-lens",
                "8",
                "--iterations",
                "2",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    report = json.loads(js.read_text())
    assert [m["kind"] for m in report["models"]] == ["onnx", "torch"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present")
def test_missing_cuda_is_one_line(models, capsys):
    fp32, _ = models
    assert main(["bench", str(fp32), "--provider", "cuda", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CUDAExecutionProvider is not available") and err.count("\n") == 1


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_io_binding(models, tmp_path):
    """On a GPU machine: the CUDA EP runs with IO binding, int8 included, and the report names the GPU."""
    fp32, int8 = models
    js = tmp_path / "r.json"
    assert (
        main(
            [
                "bench",
                str(fp32),
                str(int8),
                "--provider",
                "cuda",
                "--batch-sizes",
                "1",
                "4",
                "--seq-lens",
                "8",
                "--iterations",
                "3",
                "--warmup",
                "1",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    report = json.loads(js.read_text())
    assert report["environment"]["provider"] == "cuda" and report["environment"]["gpu"]
    assert len(report["results"]) == 4 and all(r["p50_ms"] > 0 for r in report["results"])


def test_corrupt_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage")
    assert main(["bench", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_sequence_longer_than_positions_is_clear(models, capsys):
    fp32, _ = models  # the tiny model has 128 positions
    assert main(["bench", str(fp32), "--seq-lens", "300", "--batch-sizes", "1", "--iterations", "1"]) == 2
    assert "failed at batch 1 x seq 300" in capsys.readouterr().err


def test_interleaving_rotates_start():
    calls = []

    def runner(label):
        return Runner(label, label, "onnx", 0, 100, lambda b, s: lambda: calls.append(label))

    cfg = BenchConfig(iterations=3, warmup=0, spinning=False)
    times = time_grid_point([runner("a"), runner("b"), runner("c")], 1, 8, cfg)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t) == 3 for t in times.values())


def test_spinning_threads_settle_before_each_timed_run():
    """With ORT's spinning threads, each timed run follows a pause and one untimed run of the same model, so
    the model before it has stopped spinning; one model alone needs neither."""
    import time

    events = []

    def runner(label):
        return Runner(label, label, "onnx", 0, 100, lambda b, s: lambda: events.append((label, time.perf_counter())))

    cfg = BenchConfig(iterations=2, warmup=0, settle_ms=20)
    times = time_grid_point([runner("a"), runner("b")], 1, 8, cfg)
    assert [e[0] for e in events] == ["a", "a", "b", "b", "b", "b", "a", "a"]
    gaps = [events[i][1] - events[i - 1][1] for i in (2, 4, 6)]  # last run of one model -> next model's first
    assert min(gaps) >= 0.019
    assert all(len(t) == 2 for t in times.values())
    events.clear()
    time_grid_point([runner("a")], 1, 8, cfg)
    assert [e[0] for e in events] == ["a", "a"]
    with pytest.raises(InvalidConfigError, match="settle"):
        BenchConfig(settle_ms=-1).validate()


def test_run_benchmark_speedup_and_labels():
    def runner(label, seconds):
        import time

        return Runner(label, label, "onnx", 0, 100, lambda b, s: lambda: time.sleep(seconds))

    report = run_benchmark(
        [runner("m", 0.004), runner("m", 0.001)],
        BenchConfig(batch_sizes=(1,), seq_lens=(8,), iterations=5, warmup=0),
        command="test",
    )
    slow, fast = report["results"]
    assert (slow["model"], fast["model"]) == ("m", "m#2")
    assert slow["speedup"] == 1.0 and fast["speedup"] > 1.5


def test_summarize_and_labels():
    s = summarize([0.001, 0.002, 0.003, 0.004], batch=4)
    assert s["p50_ms"] == pytest.approx(2.5) and s["throughput_seq_s"] == pytest.approx(1600)
    assert unique_labels(["a", "a", "b", "a"]) == ["a", "a#2", "b", "a#3"]


def test_sessions_without_spinning_give_the_same_outputs(models):
    import numpy as np
    import onnx

    from exporters.files import resolve_onnx
    from exporters.inputs import graph_inputs, random_feeds, vocab_size
    from exporters.sessions import make_session

    path = resolve_onnx(models[0])
    graph = onnx.load(str(path))
    feeds = random_feeds(graph_inputs(graph), vocab_size(graph, path.parent), 2, 8, 0)
    on, off = (make_session(path, "cpu", 2, spinning=s) for s in (True, False))
    assert np.array_equal(on.run(None, feeds)[0], off.run(None, feeds)[0])
    assert off.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
