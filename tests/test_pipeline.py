"""`compress run` end to end on a tiny model: prune -> export -> shrink -> quantize -> eval -> bench -> report."""

import json

import helpers as h
from compress.cli.main import main


def test_run_chain_tiny(tmp_path):
    h.write_sst2_like(tmp_path / "data" / "sst2", n_train=32, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), tmp_path / "teacher")
    recipe = {
        "task": "sst2",
        "data_dir": str(tmp_path / "data"),
        "bench_batch_sizes": [1, 4],
        "bench_seq_len": 16,
        "bench_iterations": 3,
        "optimize": True,
        "fill_steps": 4,
        "prune": {
            "method": "struct",
            "lambda_reg": 50.0,
            "score_lr": 0.5,
            "train": {"max_steps": 16, "batch_size": 8, "warmup_ratio": 0.05, "progress": False},
            "distill": {"teacher": str(tmp_path / "teacher")},
        },
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    assert main(["run", "--recipe", str(tmp_path / "recipe.json"), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    names = [r["model"] for r in summary["rows"]]
    assert names == ["dense fp32", "pruned fp32", "dense int8", "pruned int8"]
    for r in summary["rows"]:
        assert 0 <= r["dev_accuracy"] <= 1 and r["p50_ms_b1"] > 0 and r["speedup_b4"] > 0
    # Dynamic int8 accuracy depends on the eval batch: measured row by row, and said so.
    assert [r["eval_batch"] for r in summary["rows"]] == [64, 64, 1, 1]
    for f in (
        "report.md",
        "pattern.png",
        "kept.png",
        "frontier.png",
        "recipe.json",
        "pruned/compression.json",
        "onnx/pruned/model.onnx",
        "onnx/pruned-int8/model.onnx",
    ):
        assert (out / f).exists(), f
    # The same graphs on the dev rows themselves (dynamic padding), in the summary and the report.
    real = summary["real_text"]
    assert real["lengths"]["rows"] == 16 and set(real["batches"]) == set(names)
    for by_batch in real["batches"].values():
        assert set(by_batch["4"]) == {"arrival", "length"}
        assert all(r["sentences_s"] > 0 and r["speedup"] > 0 for r in by_batch["4"].values())
    assert real["batches"]["dense fp32"]["4"]["arrival"]["speedup"] == 1.0
    assert "Speed on the dev set's text (16 rows" in (out / "report.md").read_text()
    pruned_params = summary["rows"][1]["encoder_linear_params"]
    assert pruned_params < summary["rows"][0]["encoder_linear_params"]
    # The fill stage kept the structure it was given, and that is what was exported.
    pruned, filled = (json.loads((out / d / "compression.json").read_text()) for d in ("pruned", "filled"))
    assert filled["method"] == "hybrid-filled" and filled["training"]["steps"] == 4
    assert [l["heads_kept"] for l in filled["layers"]] == [l["heads_kept"] for l in pruned["layers"]]
    assert summary["layers"] == filled["layers"]
    assert summary["rows"][1]["encoder_linear_params"] == filled["params"]["encoder_linear_after_removal"]

    # The report knows the runs beside it: a second report in a sibling folder tables and plots this one.
    from compress.report import known_runs, write_report

    sibling = tmp_path / "again"
    sibling.mkdir()
    assert list(known_runs(sibling)) == ["out"]
    write_report(sibling, summary, out / "filled", others=known_runs(sibling))
    report = (sibling / "report.md").read_text()
    assert "| out | struct lambda 50.0, 16 steps + 4 fill |" in report
    assert (sibling / "frontier.png").stat().st_size > 0
