"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, no artifact."""


import pytest
from transformers import GPT2Config, GPT2Model

import helpers as h
from compress.cli.main import main


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
    main(["prune", "--model", str(d / "base"), "--method", "magnitude", "--sparsity", "0.5", "--data-dir", str(d / "data"),
          "--max-steps", "2", "--batch-size", "4", "--no-progress", "-o", str(d / "pruned")])
    h.tiny_model("bert", seed=3).save_pretrained(d / "pruned")
    (d / "bad.onnx").write_bytes(b"not an onnx graph")
    return d


CASES = {
    "missing model": (["prune", "--model", "{d}/nope"], "not found"),
    "unsupported architecture": (["prune", "--model", "{d}/gpt2"], "supported types: bert"),
    "unknown method": (["prune", "--model", "{d}/base", "--method", "lottery"], "unknown method"),
    "sparsity out of range": (["prune", "--model", "{d}/base", "--method", "movement", "--sparsity", "1.2"], "out of range"),
    "negative lambda": (["prune", "--model", "{d}/base", "--lambda", "-1"], "negative"),
    "conflicting flags": (["prune", "--model", "{d}/base", "--method", "movement", "--lambda", "3"], "use --sparsity"),
    "block size": (["prune", "--model", "{d}/base", "--method", "block", "--block-size", "128"], "4..64"),
    "empty data": (["prune", "--model", "{d}/base", "--train-file", "{d}/empty.tsv", "--validation-file", "{d}/empty.tsv"], "empty"),
    "bad labels": (["prune", "--model", "{d}/base", "--train-file", "{d}/badlabel.tsv", "--validation-file", "{d}/badlabel.tsv"], "outside 0..1"),
    "missing column": (["prune", "--model", "{d}/base", "--train-file", "{d}/nocol.tsv", "--validation-file", "{d}/nocol.tsv"], "lacks column"),
    "unknown task": (["prune", "--model", "{d}/base", "--task", "cola"], "unknown task"),
    "teacher labels": (["prune", "--model", "{d}/base", "--teacher", "{d}/teacher3"], "teacher has 3 labels"),
    "corrupt weights": (["prune", "--model", "{d}/corrupt"], "corrupt or truncated"),
    "output not empty": (["prune", "--model", "{d}/base", "--method", "movement", "--sparsity", "0.5"], "not empty"),
    "resume without checkpoint": (["prune", "--model", "{d}/base", "--resume"], "no checkpoint"),
    "hybrid-filled without source": (["prune", "--model", "{d}/base", "--method", "hybrid-filled"], "needs --source"),
    "stale compression.json": (["eval", "{d}/pruned"], "checksum"),
    "eval corrupt onnx": (["eval", "{d}/bad.onnx"], "onnx"),
    "head lr": (["prune", "--model", "{d}/base", "--method", "smp-l", "--head-lr", "0"], "--head-lr"),
    "negative fill steps": (["run", "--teacher", "{d}/base", "--fill-steps", "-1", "-o", "{d}/out-negative-fill-steps"],
                            "--fill-steps"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(ws, name, capsys):
    args, message = CASES[name]
    args = [a.format(d=ws) for a in args]
    out = ws / "occupied" if name == "output not empty" else ws / f"out-{name.replace(' ', '-')}"
    if args[0] == "prune":
        args += ["--data-dir", str(ws / "data"), "--max-steps", "2", "--batch-size", "4", "--no-progress", "-o", str(out)]
    else:
        args += ["--data-dir", str(ws / "data")]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars may precede it
    assert code == 2, err
    assert message.lower() in err.lower(), err
    assert err.startswith("error: ") and "Traceback" not in err
    if name != "output not empty":
        assert not out.exists()
        assert not list(ws.glob(f".{out.name}.tmp-*"))


def test_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--sparsity", "lots", "-o", "x"])
    assert e.value.code == 2
    assert "invalid float value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["prune", "--score-init", "uniform", "-o", "x"])
    assert e.value.code == 2
    assert "neither a number nor 'magnitude'" in capsys.readouterr().err
