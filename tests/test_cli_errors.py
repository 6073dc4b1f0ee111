"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, no artifact."""

import json
import os
import shutil

import onnx
import pytest
from transformers import AutoModelForSequenceClassification, BertTokenizer, GPT2Config, GPT2Model

import helpers as h

main = h.main  # the CLI entry point (imported in helpers.py only)

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes through permission bits


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("errors")
    h.write_sst2_like(d / "data" / "sst2", n_train=16, n_dev=8)
    h.save_checkpoint(h.tiny_model("bert"), d / "base")
    h.save_checkpoint(h.tiny_model("bert", num_labels=3), d / "teacher3")
    GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(d / "gpt2")
    corrupt = d / "corrupt"
    h.save_checkpoint(h.tiny_model("bert"), corrupt)
    blob = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "empty.tsv").write_text("sentence\tlabel\n")
    (d / "badlabel.tsv").write_text("sentence\tlabel\nthe movie is good\t5\n")
    (d / "nocol.tsv").write_text("text\ty\nthe movie is good\t1\n")
    (d / "occupied").mkdir()
    (d / "occupied" / "x").write_text("x")
    # A pruned checkpoint whose weights were replaced after compression.json was written.
    main(
        [
            "prune",
            "--model",
            str(d / "base"),
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--data-dir",
            str(d / "data"),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--no-progress",
            "-o",
            str(d / "pruned"),
        ]
    )
    h.tiny_model("bert", seed=3).save_pretrained(d / "pruned")
    (d / "bad.onnx").write_bytes(b"not an onnx graph")
    _user_mistake_inputs(d)
    return d


def _user_mistake_inputs(d):
    """Inputs for the cases below: each one a file or folder a new user could plausibly hand over."""
    # Same vocabulary size, different vocabulary (the word pieces in another order).
    words = h.WORDS[:5] + h.WORDS[5:][::-1]
    teacher = d / "teacher-other-vocab"
    h.tiny_model("bert", seed=1).save_pretrained(teacher)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(teacher)
    # A classifier whose config names its labels (as prune/finetune save it).
    h.save_checkpoint(
        h.tiny_model("bert", id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}),
        d / "named",
    )
    h.save_checkpoint(
        h.tiny_model("bert", id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1}),
        d / "named-swapped",
    )
    (d / "strings.tsv").write_text("sentence\tlabel\nthe movie is good\tpositive\nthe movie is bad\tnegative\n")
    (d / "neutral.tsv").write_text("sentence\tlabel\nthe movie is good\tpositive\nthe plot\tneutral\n")
    (d / "latin1.tsv").write_bytes("sentence\tlabel\nthe movie is good\t1\nun film tr\xe8s bon\t1\n".encode("latin-1"))
    (d / "blank.tsv").write_text("sentence\tlabel\nthe movie is good\t1\nthe movie is bad\t\n")
    (d / "a-file").write_text("a regular file where a folder is needed")
    (d / "dir.tsv").mkdir()
    # A checkpoint as a crash would leave it: tokenizer_config.json written, vocabulary not yet.
    novocab = d / "no-vocab"
    h.tiny_model("bert").save_pretrained(novocab)
    (novocab / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    # A model whose embedding table is smaller than its tokenizer's vocabulary.
    small = h.tiny_config("bert")
    small.vocab_size = len(h.WORDS) - 20
    h.save_checkpoint(AutoModelForSequenceClassification.from_config(small), d / "small-embedding")
    for name in ("victim", "nest/ckpt"):
        shutil.copytree(d / "base", d / name)
    # ONNX: the dense export, an int8 of it, and a copy whose external-data file went missing.
    assert main(["export", "--onnx", str(d / "base"), "-o", str(d / "onnx")]) == 0
    assert main(["quantize", str(d / "onnx"), "-o", str(d / "int8")]) == 0
    ext = d / "onnx-ext"
    shutil.copytree(d / "onnx", ext)
    onnx.save_model(
        onnx.load(str(d / "onnx" / "model.onnx")),
        str(ext / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    (ext / "model.onnx.data").unlink()
    shutil.copytree(d / "onnx", d / "onnx-copy")
    (d / "null-label.jsonl").write_text(
        '{"sentence": "the movie is good", "label": 1}\n{"sentence": "a plot", "label": null}\n'
    )
    (d / "list-recipe.yaml").write_text("- prune\n- export\n")
    (d / "ro-out").mkdir()
    (d / "ro-out" / "old").write_text("x")


CASES = {
    "missing model": (["prune", "--model", "{d}/nope"], "not found"),
    "unsupported architecture": (["prune", "--model", "{d}/gpt2"], "supported types: bert"),
    "unknown method": (["prune", "--model", "{d}/base", "--method", "lottery"], "unknown method"),
    "sparsity out of range": (
        ["prune", "--model", "{d}/base", "--method", "movement", "--sparsity", "1.2"],
        "out of range",
    ),
    "negative lambda": (["prune", "--model", "{d}/base", "--lambda", "-1"], "negative"),
    "conflicting flags": (["prune", "--model", "{d}/base", "--method", "movement", "--lambda", "3"], "use --sparsity"),
    "block size": (["prune", "--model", "{d}/base", "--method", "block", "--block-size", "128"], "4..64"),
    "empty data": (
        ["prune", "--model", "{d}/base", "--train-file", "{d}/empty.tsv", "--validation-file", "{d}/empty.tsv"],
        "empty",
    ),
    "bad labels": (
        ["prune", "--model", "{d}/base", "--train-file", "{d}/badlabel.tsv", "--validation-file", "{d}/badlabel.tsv"],
        "outside 0..1",
    ),
    "missing column": (
        ["prune", "--model", "{d}/base", "--train-file", "{d}/nocol.tsv", "--validation-file", "{d}/nocol.tsv"],
        "lacks column",
    ),
    "unknown task": (["prune", "--model", "{d}/base", "--task", "cola"], "unknown task"),
    "teacher labels": (["prune", "--model", "{d}/base", "--teacher", "{d}/teacher3"], "teacher has 3 labels"),
    "corrupt weights": (["prune", "--model", "{d}/corrupt"], "corrupt or truncated"),
    "output not empty": (["prune", "--model", "{d}/base", "--method", "movement", "--sparsity", "0.5"], "not empty"),
    "resume without checkpoint": (["prune", "--model", "{d}/base", "--resume"], "no checkpoint"),
    "hybrid-filled without source": (["prune", "--model", "{d}/base", "--method", "hybrid-filled"], "needs --source"),
    "stale compression.json": (["eval", "{d}/pruned"], "checksum"),
    "eval corrupt onnx": (["eval", "{d}/bad.onnx"], "onnx"),
    "head lr": (["prune", "--model", "{d}/base", "--method", "smp-l", "--head-lr", "0"], "--head-lr"),
    "negative fill steps": (
        ["run", "--teacher", "{d}/base", "--fill-steps", "-1", "-o", "{d}/out-negative-fill-steps"],
        "--fill-steps",
    ),
    # ---- inputs that could otherwise give a silently wrong result (numeric tests in test_reliability.py)
    "teacher with another vocabulary": (
        ["prune", "--model", "{d}/base", "--teacher", "{d}/teacher-other-vocab"],
        "vocabulary",
    ),
    "label not in the model's label map": (
        ["eval", "{d}/named", "--validation-file", "{d}/neutral.tsv"],
        "unknown label",
    ),
    "non-utf8 train file": (
        ["prune", "--model", "{d}/base", "--train-file", "{d}/latin1.tsv", "--validation-file", "{d}/latin1.tsv"],
        "not utf-8",
    ),
    "non-utf8 validation file": (["eval", "{d}/base", "--validation-file", "{d}/latin1.tsv"], "byte 45"),
    "non-utf8 calibration file": (
        ["quantize", "{d}/onnx", "-o", "{o}", "--calibration-file", "{d}/latin1.tsv"],
        "not utf-8",
    ),
    "prune output under a file": (["prune", "--model", "{d}/base", "-o", "{d}/a-file/out"], "cannot write"),
    "export output under a file": (["export", "--onnx", "{d}/base", "-o", "{d}/a-file/out"], "cannot write"),
    # Checked before the work: the data problem (found while loading) must not be what is reported.
    "eval json under a file": (
        ["eval", "{d}/base", "--validation-file", "{d}/blank.tsv", "--output-json", "{d}/a-file/m.json"],
        "cannot write",
    ),
    "bench json under a file": (
        ["bench", "{d}/onnx", "--iterations", "1", "--warmup", "0", "--json", "{d}/a-file/b.json"],
        "cannot write",
    ),
    "read-only output folder": (["export", "--onnx", "{d}/base", "-o", "{d}/ro-parent/out"], "cannot write"),
    "max-length 0": (["prune", "--model", "{d}/base", "--max-length", "0"], "--max-length"),
    "max-length negative": (["eval", "{d}/base", "--max-length", "-5"], "--max-length"),
    "max-length beyond positions": (["eval", "{d}/base", "--max-length", "4096"], "position"),
    "max-length 0 onnx": (["eval", "{d}/onnx", "--max-length", "0"], "--max-length"),
    "already int8": (["quantize", "{d}/int8", "-o", "{o}"], "already quantized"),
    "blank label": (["eval", "{d}/base", "--validation-file", "{d}/blank.tsv"], "missing label in row 3"),
    "sparsity 0": (["prune", "--model", "{d}/base", "--method", "movement", "--sparsity", "0"], "--sparsity"),
    "negative max-steps": (
        ["prune", "--model", "{d}/base", "--method", "movement", "--sparsity", "0.5", "--max-steps", "-5"],
        "--max-steps",
    ),
    "export truncated weights": (["export", "--onnx", "{d}/corrupt", "-o", "{o}"], "corrupt or truncated"),
    # ---- files, paths, permissions, interrupted writes, inconsistent folders
    "folder where a file is expected": (["eval", "{d}/base", "--validation-file", "{d}/dir.tsv"], "is a directory"),
    "eval json onto a folder": (["eval", "{d}/base", "--output-json", "{d}/dir.tsv"], "is a directory"),
    "onnx external data missing": (["eval", "{d}/onnx-ext"], "external data"),
    "tokenizer without vocabulary": (["prune", "--model", "{d}/no-vocab"], "vocabulary"),
    "tokenizer larger than the embedding": (["eval", "{d}/small-embedding"], "embedding"),
    "export tokenizer larger than the embedding": (
        ["export", "--onnx", "{d}/small-embedding", "-o", "{o}"],
        "embedding",
    ),
    "recipe not a mapping": (["run", "--recipe", "{d}/list-recipe.yaml", "-o", "{o}"], "mapping"),
    "null label in jsonl": (
        ["eval", "{d}/base", "--validation-file", "{d}/null-label.jsonl"],
        "missing label in row 2",
    ),
    "eval json onto the model": (["eval", "{d}/onnx-copy", "--output-json", "{d}/onnx-copy/model.onnx"], "input"),
    "prune output is the input": (["prune", "--model", "{d}/victim", "-o", "{d}/victim", "--overwrite"], "input"),
    "export output contains the input": (
        ["export", "--onnx", "{d}/nest/ckpt", "-o", "{d}/nest", "--overwrite"],
        "input",
    ),
    "eval batch size 0": (["eval", "{d}/base", "--batch-size", "0"], "--batch-size"),
    "negative max-eval-samples": (["eval", "{d}/base", "--max-eval-samples", "-3"], "--max-eval-samples"),
    "teacher with other label names": (
        [
            "prune",
            "--model",
            "{d}/base",
            "--teacher",
            "{d}/named-swapped",
            "--train-file",
            "{d}/strings.tsv",
            "--validation-file",
            "{d}/strings.tsv",
        ],
        "teacher's labels",
    ),
    "run output is the teacher": (
        ["run", "--teacher", "{d}/victim", "-o", "{d}/victim", "--overwrite"],
        "is the input",
    ),
    "mask file missing": (["mask", "apply", "{d}/base", "{d}/no-such.mask", "-o", "{o}"], "bit-mask"),
    "shrink report under a file": (
        ["shrink", "{d}/onnx/model.onnx", "{o}.onnx", "--report", "{d}/a-file/r.json"],
        "is a file",
    ),
    "shrink output under a file": (["shrink", "{d}/onnx/model.onnx", "{d}/a-file/x.onnx"], "is a file"),
    "read-only output replaced": (["export", "--onnx", "{d}/base", "-o", "{d}/ro-out", "--overwrite"], "cannot write"),
}

# Permission bits do not stop root; these run as a normal user (CI) and are skipped under root.
NEEDS_NON_ROOT = {"read-only output folder", "read-only output replaced"}
TRAIN_DEFAULTS = {"--max-steps": "2", "--batch-size": "4"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(ws, name, capsys):
    if name in NEEDS_NON_ROOT and ROOT:
        pytest.skip("root ignores permission bits")
    args, message = CASES[name]
    slug = "".join(c if c.isalnum() else "-" for c in name)
    out = ws / "occupied" if name == "output not empty" else ws / f"out-{slug}"
    args = [a.format(d=ws, o=out) for a in args]
    if args[0] == "prune":
        args += ["--data-dir", str(ws / "data"), "--no-progress"]
        args += [x for k, v in TRAIN_DEFAULTS.items() if k not in args for x in (k, v)]
        if "-o" not in args:
            args += ["-o", str(out)]
    elif args[0] in ("eval", "run"):
        args += ["--data-dir", str(ws / "data")]
    protected = {p: _snapshot(p) for p in (ws / "victim", ws / "nest" / "ckpt", ws / "ro-out", ws / "onnx-copy")}
    ro = ws / "ro-parent"
    ro.mkdir(exist_ok=True)
    for p in (ro, ws / "ro-out"):
        p.chmod(0o555)
    try:
        code = main(args)
    finally:
        for p in (ro, ws / "ro-out"):
            p.chmod(0o755)
    err = h.cli_error(code, capsys.readouterr().err)
    assert message.lower() in err.lower(), err
    if name != "output not empty":
        assert not out.exists()
        assert not list(ws.glob(f".{out.name}.tmp-*"))
    assert not list(ws.rglob("*.tmp-*")), "a temporary file or folder was left behind"
    for p, before in protected.items():
        assert _snapshot(p) == before, f"{p} was changed"


def _snapshot(folder):
    return (
        sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")) if folder.exists() else None
    )


def test_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--sparsity", "lots", "-o", "x"])
    assert e.value.code == 2
    assert "invalid float value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["prune", "--score-init", "uniform", "-o", "x"])
    assert e.value.code == 2
    assert "neither a number nor 'magnitude'" in capsys.readouterr().err
