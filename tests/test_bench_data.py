"""`compress bench --data` (compress.ort.bench_data) and `--deploy-shape BATCHxdata`: real dev rows, each
batch padded to its own longest row, arrival and length order, interleaved timing, clear errors."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from test_onnx_runtime import export_tiny

import helpers
from compress.cli.main import main
from compress.core.config import BenchConfig, DataConfig, PruneConfig, TrainConfig
from compress.core.errors import DataError, InvalidConfigError
from compress.ort.bench_data import DataModel, bench_on_data, make_batches, time_requests
from compress.training.dev_rows import dev_features, file_texts, row_lengths

# Sentences of 1 to 9 words, so that batches of 4 in file order hold rows of different lengths.
SENTENCES = [" ".join(["good"] * (1 + (k * 5) % 9)) for k in range(18)]
FAST = ["--threads", "1", "--warmup", "1", "--settle-ms", "2"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Two tiny graphs (fp32 and its int8), each with config and tokenizer beside it, and an SST-2-like folder."""
    root = tmp_path_factory.mktemp("bench_data")
    fp32 = export_tiny(root / "fp32")
    from compress.ort.quantize import quantize_onnx

    quantize_onnx(fp32, root / "int8")
    data = root / "data" / "sst2"
    data.mkdir(parents=True)
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{k % 2}\n" for k, s in enumerate(SENTENCES)))
    return root


def _inputs():
    return [("input_ids", "tensor(int64)"), ("attention_mask", "tensor(int64)"), ("token_type_ids", "tensor(int64)")]


def _features(graphs, **kw):
    data = DataConfig(validation_file=str(graphs / "data" / "sst2" / "dev.tsv"), **kw)
    return dev_features(data, helpers.tiny_tokenizer())


def test_cli_table_json_and_csv(graphs, tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    dev = graphs / "data" / "sst2" / "dev.tsv"
    args = ["bench", str(graphs / "fp32"), str(graphs / "int8"), "--data", str(dev), "--batch-sizes", "1", "4"]
    assert main([*args, *FAST, "--json", str(js), "--csv", str(cs)]) == 0
    out = capsys.readouterr().out
    assert "sent/s" in out and "speedup" in out and "p90 10.3" in out  # the token lengths in the caption
    report = json.loads(js.read_text())
    assert report["schema"] == "compress.bench-data/1" and "--data" in report["command"]
    for key in ("onnxruntime", "cpu_model", "threads", "provider", "python"):
        assert key in report["environment"], key
    lengths = report["data"]["lengths"]  # [CLS] words [SEP]: 3..11 tokens
    assert lengths["rows"] == len(SENTENCES) and lengths["max"] == 11 and lengths["p90"] <= 11
    assert set(lengths) == {"rows", "mean", "p50", "p90", "max"}
    rows = report["results"]
    # batch 1: one order (one unpadded row per request); batch 4: arrival and length
    assert [(r["batch_size"], r["bucketing"]) for r in rows[::2]] == [(1, "arrival"), (4, "arrival"), (4, "length")]
    assert [r["model"] for r in rows] == ["fp32", "int8"] * 3
    for r in rows:
        assert r["rows"] == len(SENTENCES) and r["requests"] == math.ceil(len(SENTENCES) / r["batch_size"])
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["sentences_s"] == pytest.approx(r["rows"] / r["total_s"], rel=0.02)
    assert all(r["speedup"] == 1.0 for r in rows if r["model"] == "fp32")
    arrival, length = rows[2], rows[4]
    assert length["padding"] < arrival["padding"] and rows[0]["padding"] == 0.0
    with open(cs) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {"model", "bucketing", "sentences_s", "p99_ms", "total_s", "speedup"} <= set(table[0])


def test_bench_on_data_for_the_pipeline(graphs):
    """Named graphs, a built-in task from a data folder: speedups against "dense fp32", one summary per model."""
    models = {"pruned int8": graphs / "int8", "dense fp32": graphs / "fp32"}
    data = DataConfig(task="sst2", data_dir=str(graphs / "data"))
    report = bench_on_data(models, data, 4, 1, bucketing=("length",), config=BenchConfig(warmup=0, settle_ms=0))
    s = report["summary"]
    assert set(s) == set(models) and report["baseline"] == "dense fp32"
    assert s["dense fp32"][4]["length"]["speedup"] == 1.0
    assert set(s["pruned int8"][4]["length"]) == {"sentences_s", "p50_ms", "p90_ms", "p99_ms", "total_s", "speedup"}
    assert report["results"][0]["rows"] == len(SENTENCES)


@pytest.mark.parametrize("order", ["arrival", "length"])
def test_batches_hold_every_row_padded_to_their_longest(graphs, order):
    features = _features(graphs)
    lengths = row_lengths(features)
    assert len(set(lengths[:4])) > 1  # the first arrival batch mixes lengths
    batches = make_batches(features, _inputs(), 4, order, pad_id=0)
    seen = np.concatenate([sel for sel, _ in batches])
    assert sorted(seen) == list(range(len(SENTENCES)))  # every row once
    if order == "arrival":
        assert list(seen) == list(range(len(SENTENCES)))
    else:
        assert list(lengths[seen]) == sorted(lengths)
    for sel, feeds in batches:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        assert ids.shape == (len(sel), lengths[sel].max())  # its own longest row, not a fixed length
        assert list(mask.sum(1)) == list(lengths[sel]) and set(feeds) == {n for n, _ in _inputs()}


class _Recorder:
    """A session that logs which model ran which request shape."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, outputs, feeds):
        self.log.append((self.name, feeds["input_ids"].shape))


def test_requests_are_interleaved_and_fed_as_built(graphs):
    features = _features(graphs)
    log = []
    models = [DataModel(n, graphs, _Recorder(n, log), _inputs(), graphs, 0) for n in ("a", "b")]
    batches = {m.label: [f for _, f in make_batches(features, _inputs(), 4, "arrival")] for m in models}
    batches["b"] = batches["b"][:3]  # another tokenizer's set can hold fewer requests
    times = time_requests(models, batches, BenchConfig(warmup=0, settle_ms=0))
    assert [len(times["a"]), len(times["b"])] == [5, 3]
    shapes = [f["input_ids"].shape for f in batches["a"]]
    largest = max(shapes, key=lambda s: s[0] * s[1])
    assert log[:2] == [("a", largest), ("b", largest)]  # the untimed run of each model's largest request
    # round k runs request k of every model, the start rotating; b has nothing left after its third
    turns = [(n, k) for k in range(5) for n in (("a", "b") if k % 2 == 0 else ("b", "a"))]
    assert log[2:] == [(n, shapes[k]) for n, k in turns if n == "a" or k < 3]


def test_file_readers(tmp_path):
    (tmp_path / "a.txt").write_text("one line\n\ntwo lines here\n")
    (tmp_path / "b.jsonl").write_text('{"text": "x y", "p": "z"}\n{"text": "w", "p": "v"}\n')
    (tmp_path / "c.csv").write_text("body,label\nhello there,1\n")
    assert file_texts(tmp_path / "a.txt") == (["one line", "two lines here"], None)
    assert file_texts(tmp_path / "b.jsonl", pair_column="p") == (["x y", "w"], ["z", "v"])
    assert file_texts(tmp_path / "c.csv", "body")[0] == ["hello there"]
    with pytest.raises(DataError, match="no text column 'sentence' or 'text'.*body, label.*--text-column"):
        file_texts(tmp_path / "c.csv")
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(DataError, match="unsupported"):
        file_texts(tmp_path / "d.parquet")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.strip().count("\n") == 0, err
    return err


def test_bad_inputs_are_one_line(graphs, tmp_path, capsys):
    g = str(graphs / "fp32")
    assert main(["bench", g, "--data", str(tmp_path / "missing.tsv"), *FAST]) == 2
    assert "no such file, and not a built-in task" in _one_line_error(capsys)
    (tmp_path / "cols.tsv").write_text("body\tlabel\nhello\t1\n")
    assert main(["bench", g, "--data", str(tmp_path / "cols.tsv"), *FAST]) == 2
    assert "no text column" in _one_line_error(capsys)
    bare = tmp_path / "bare" / "graph"  # a graph with no tokenizer beside it or in its parent
    bare.mkdir(parents=True)
    shutil.copy(graphs / "fp32" / "model.onnx", bare / "model.onnx")
    dev = str(graphs / "data" / "sst2" / "dev.tsv")
    assert main(["bench", str(bare), "--data", dev, *FAST]) == 2
    assert "pass --tokenizer" in _one_line_error(capsys)
    assert main(["bench", str(bare), "--data", dev, "--tokenizer", g, "--batch-sizes", "8", *FAST]) == 0
    assert "sent/s" in capsys.readouterr().out
    assert main(["bench", g, "--data", dev, "--torch", g, *FAST]) == 2
    assert "--torch" in _one_line_error(capsys)


# ------------------------------------------------------------------------------ --deploy-shape BATCHxdata
def test_deploy_shape_from_data(graphs):
    from compress.speed.deploy_graph import parse_shape
    from compress.speed.plan import deploy_from, deploy_shape_from_data, resolve_deploy_shape

    data = DataConfig(task="sst2", data_dir=str(graphs / "data"))
    tok = helpers.tiny_tokenizer()
    p90 = np.percentile(row_lengths(_features(graphs)), 90)
    assert resolve_deploy_shape("32xdata", data, tok) == f"32x{math.ceil(p90 / 8) * 8}" == "32x16"
    shape, record = deploy_shape_from_data("4xDATA", data, tok, max_length=10)
    assert shape == "4x10" and record["requested"] == "4xDATA" and record["tokens"]["max"] == 10  # truncated
    assert resolve_deploy_shape("32x128", data, tok) == "32x128"
    for bad, match in (("0xdata", "positive batch"), ("32x", "BATCHxSEQ")):
        with pytest.raises(InvalidConfigError, match=match):
            resolve_deploy_shape(bad, data, tok)
    with pytest.raises(InvalidConfigError, match="read from the task's dev data"):
        parse_shape("32xdata")
    with pytest.raises(InvalidConfigError, match="read from the task's dev data"):
        deploy_from(PruneConfig(deploy_shape="32xdata"))


def test_prune_resolves_the_deploy_shape(graphs, tmp_path):
    """The prune driver reads the length before the speed plan: the FLOPs table and compression.json see it."""
    from compress.training.driver import prune

    helpers.write_sst2_like(tmp_path / "data" / "sst2", n_train=16, n_dev=8)
    shutil.copy(graphs / "data" / "sst2" / "dev.tsv", tmp_path / "data" / "sst2" / "dev.tsv")
    base = helpers.save_checkpoint(helpers.tiny_model(), tmp_path / "base")
    cfg = PruneConfig(
        method="struct",
        target_flops=0.5,
        ffn_block=16,
        deploy_shape="2xdata",
        train=TrainConfig(max_steps=2, batch_size=8, progress=False, save_steps=1000, logging_steps=1000),
    )
    info = prune(cfg, DataConfig(task="sst2", data_dir=str(tmp_path / "data")), str(base), output=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "compression.json").read_text())
    sp = saved["speed"]["shape_from_data"]
    assert (sp["requested"], sp["resolved"], sp["tokens"]["rows"]) == ("2xdata", "2x16", len(SENTENCES))
    assert saved["recipe"]["deploy_shape"] == "2x16"
    assert (info["speed"]["table"]["key"]["batch"], info["speed"]["table"]["key"]["seq"]) == (2, 16)


def test_run_benchmarks_at_the_deploy_shape_read_from_data(graphs, tmp_path):
    """`compress run` times its graphs at the length a latency target's BATCHxdata reads from the dev rows."""
    from compress.core.config import RunConfig
    from compress.pipeline import _deploy_shape, _speed_target

    base = helpers.save_checkpoint(helpers.tiny_model(), tmp_path / "base")
    cfg = RunConfig(task="sst2", data_dir=str(graphs / "data"))
    cfg.prune = PruneConfig(method="struct", target_speedup=1.5, deploy_shape="8xdata", deploy_threads=1)
    shape = _deploy_shape(cfg, cfg.data(), str(base))
    assert shape == "8x16"
    _, run_cfg = _speed_target(cfg, shape)
    assert run_cfg.bench_seq_len == 16 and 8 in run_cfg.bench_batch_sizes and run_cfg.bench_threads == 1
    cfg.prune.deploy_shape = None  # no shape given: the task's default
    assert _deploy_shape(cfg, cfg.data(), str(base)) == "32x128"
