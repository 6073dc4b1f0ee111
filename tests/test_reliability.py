"""Results that could come out silently wrong (the numbers are checked here), and file
bookkeeping (modes, sizes, resumed timings). The one-line refusals are in test_cli_errors.py."""

import json
import os
import stat

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizer

import helpers as h

main = h.main


def _labelled(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return path


def _eval(args, capsys):
    assert main(["eval", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    h.write_sst2_like(d / "data" / "sst2", n_train=16, n_dev=16)
    h.save_checkpoint(h.tiny_model("bert"), d / "base")
    return d


def test_teacher_vocabulary_compared_by_content(base, tmp_path, capsys):
    """A teacher with the student's vocabulary size but other word pieces is refused; the same
    vocabulary in another tokenizer class is accepted."""
    words = h.WORDS[:5] + h.WORDS[5:][::-1]
    other = tmp_path / "other"
    h.tiny_model("bert", seed=1).save_pretrained(other)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(other)
    assert len(AutoTokenizer.from_pretrained(other)) == len(AutoTokenizer.from_pretrained(base / "base"))
    capsys.readouterr()  # the saving above printed bars of its own
    common = [
        "prune",
        "--model",
        str(base / "base"),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--data-dir",
        str(base / "data"),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    code = main(common + ["--teacher", str(other), "-o", str(tmp_path / "a")])
    assert "vocabulary" in h.cli_error(code, capsys.readouterr().err)
    same = tmp_path / "same"
    h.save_checkpoint(h.tiny_model("bert", seed=1), same)
    assert main(common + ["--teacher", str(same), "-o", str(tmp_path / "b")]) == 0


def test_string_labels_are_saved_and_reused(base, tmp_path, capsys):
    """String labels get one mapping, saved in config.json (and the ONNX folder), and every
    later file goes through it: a file holding only "positive" rows scores what integer 1s score."""
    rows = [(s, "positive") for s in h.POSITIVE] + [(s, "negative") for s in h.NEGATIVE]
    train = _labelled(tmp_path / "train.tsv", rows * 2)
    pos = _labelled(tmp_path / "pos.tsv", [(s, "positive") for s in h.POSITIVE])
    pos_int = _labelled(tmp_path / "pos_int.tsv", [(s, 1) for s in h.POSITIVE])
    ft = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--model",
                str(base / "base"),
                "--train-file",
                str(train),
                "--validation-file",
                str(train),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--no-progress",
                "-o",
                str(ft),
            ]
        )
        == 0
    )
    config = json.loads((ft / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}

    # What the model predicts for the positive sentences, computed here without compress.
    tok = AutoTokenizer.from_pretrained(ft)
    model = AutoModelForSequenceClassification.from_pretrained(ft).eval()
    with torch.no_grad():
        preds = [int(model(**tok(s, return_tensors="pt")).logits.argmax(-1)) for s in h.POSITIVE]
    expected = float(np.mean([p == 1 for p in preds]))

    capsys.readouterr()
    assert _eval([str(ft), "--validation-file", str(pos)], capsys)["accuracy"] == pytest.approx(expected)
    assert _eval([str(ft), "--validation-file", str(pos_int)], capsys)["accuracy"] == pytest.approx(expected)
    assert main(["export", "--onnx", str(ft), "-o", str(tmp_path / "onnx")]) == 0
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    capsys.readouterr()
    assert _eval([str(tmp_path / "onnx"), "--validation-file", str(pos)], capsys)["accuracy"] == pytest.approx(expected)


def test_dynamic_int8_eval_states_its_batch_size(base, tmp_path, capsys):
    """Dynamic int8 computes one activation range per tensor over the whole batch (padding
    included), so its accuracy depends on the batch it is run in. eval reports the batch size it used,
    and for such graphs defaults to batch 1 (each row alone, as a per-request server runs it)."""
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert main(["export", "--onnx", str(base / "base"), "-o", str(fp32)]) == 0
    assert main(["quantize", str(fp32), "-o", str(int8)]) == 0
    capsys.readouterr()
    data = ["--data-dir", str(base / "data")]
    default = _eval([str(int8), *data], capsys)
    assert default["batch_size"] == 1 and "dynamic int8" in default["note"]
    one = _eval([str(int8), *data, "--batch-size", "1"], capsys)
    assert default["accuracy"] == one["accuracy"]
    b16 = _eval([str(int8), *data, "--batch-size", "16"], capsys)
    assert b16["batch_size"] == 16
    assert _eval([str(fp32), *data], capsys)["batch_size"] == 64  # fp32 does not depend on it
    r = tmp_path / "q.json"
    assert main(["quantize", str(fp32), "-o", str(tmp_path / "int8b"), "--task", "sst2", *data, "--json", str(r)]) == 0
    assert json.loads(r.read_text())["eval_batch_size"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_respect_the_umask(base, tmp_path, umask, capsys):
    """mkdtemp/mkstemp create 0700/0600; outputs must get the modes the umask gives."""
    old = os.umask(umask)
    try:
        out = tmp_path / "pruned"
        assert (
            main(
                [
                    "prune",
                    "--model",
                    str(base / "base"),
                    "--method",
                    "magnitude",
                    "--sparsity",
                    "0.5",
                    "--data-dir",
                    str(base / "data"),
                    "--max-steps",
                    "1",
                    "--batch-size",
                    "4",
                    "--no-progress",
                    "-o",
                    str(out),
                ]
            )
            == 0
        )
        assert main(["export", "--onnx", str(out), "-o", str(tmp_path / "onnx")]) == 0
        assert main(["quantize", str(tmp_path / "onnx"), "-o", str(tmp_path / "int8")]) == 0
        assert main(["quantize", str(tmp_path / "onnx"), "-o", str(tmp_path / "single" / "m.onnx")]) == 0
        assert (
            main(["eval", str(out), "--data-dir", str(base / "data"), "--output-json", str(tmp_path / "m.json")]) == 0
        )
    finally:
        os.umask(old)
    for folder in (out, tmp_path / "onnx", tmp_path / "int8", tmp_path / "single"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask


def test_quantize_reports_the_size_of_external_data(base, tmp_path):
    """A model stored with external data counts its data file in `size before`."""
    src = tmp_path / "ext"
    assert main(["export", "--onnx", str(base / "base"), "-o", str(src)]) == 0
    onnx.save_model(
        onnx.load(str(src / "model.onnx")),
        str(src / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    total = (src / "model.onnx").stat().st_size + (src / "model.onnx.data").stat().st_size
    assert (src / "model.onnx").stat().st_size < total / 2
    r = tmp_path / "q.json"
    assert main(["quantize", str(src), "-o", str(tmp_path / "int8"), "--json", str(r)]) == 0
    assert json.loads(r.read_text())["size_before"] == total


def test_resumed_run_times_only_its_own_steps(base, tmp_path):
    """After --resume, seconds_per_step divides this run's time by this run's steps."""
    from transformers import TrainerCallback

    from compress.core.config import DataConfig, PruneConfig, TrainConfig
    from compress.training.driver import prune

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt

    def cfg(resume):
        return PruneConfig(
            method="magnitude",
            sparsity=0.5,
            train=TrainConfig(max_steps=8, batch_size=4, save_steps=4, progress=False, resume=resume),
        )

    data = DataConfig(task="sst2", data_dir=str(base / "data"))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prune(cfg(False), data, str(base / "base"), output=out, callbacks=[Crash()])
    info = prune(cfg(True), data, str(base / "base"), output=out)["training"]
    assert info["steps"] == 8 and info["resumed_from_step"] == 4 and info["steps_this_run"] == 4
    assert info["seconds_per_step"] == pytest.approx(info["train_seconds"] / 4)


def test_quantize_to_a_file_among_unrelated_files(base, tmp_path, capsys):
    """`quantize -o DIR/x.onnx` into a folder of someone else's files writes x.onnx only
    (and says that its config and tokenizer are not beside it), instead of scattering sidecars there."""
    assert main(["export", "--onnx", str(base / "base"), "-o", str(tmp_path / "onnx")]) == 0
    folder = tmp_path / "shared-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("someone else's file")
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "onnx"), "-o", str(folder / "x.onnx")]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "x.onnx"]
    assert "were not copied" in " ".join(capsys.readouterr().out.split())
    empty = tmp_path / "new-folder"
    assert main(["quantize", str(tmp_path / "onnx"), "-o", str(empty / "x.onnx")]) == 0
    assert {"x.onnx", "config.json", "tokenizer_config.json"} <= {p.name for p in empty.iterdir()}
