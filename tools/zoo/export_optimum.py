"""Zoo: `optimum-cli export onnx` (transformers 4.57 + optimum-onnx), plain and after
`optimum-cli onnxruntime optimize -O2` (fused com.microsoft Attention with packed QKV weights,
SkipLayerNormalization, BiasGelu / FastGelu). optimum needs a model directory, so the tiny random
model is saved first. Run by make_zoo.sh in /tmp/zoo-optimum (optimum-cli on PATH)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zoo_common import randomize, tiny_config, versions, write_meta

OUT = Path(sys.argv[1])
VERS = versions("torch", "transformers", "optimum", "onnx", "onnxruntime")
try:
    from importlib.metadata import version

    VERS["optimum-onnx"] = version("optimum-onnx")
except Exception as e:
    VERS["optimum-onnx"] = f"unknown ({type(e).__name__})"


def save_model(model_type: str, head: str, d: Path, seed: int) -> None:
    import transformers
    from transformers import BertTokenizerFast

    cls = transformers.AutoModelForSequenceClassification if head == "cls" else transformers.AutoModel
    model = randomize(cls.from_config(tiny_config(model_type)), seed)
    model.save_pretrained(str(d))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    # A BERT WordPiece tokenizer for every family: optimum only needs one to exist to save it alongside.
    BertTokenizerFast(str(d / "vocab.txt")).save_pretrained(str(d))


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    entries = [  # name, model_type, head, task, optimize
        ("bert_optimum", "bert", "cls", "text-classification", False),
        ("bert_optimum_O2", "bert", "cls", "text-classification", True),
        ("roberta_optimum", "roberta", "model", "feature-extraction", False),
        ("roberta_optimum_O2", "roberta", "model", "feature-extraction", True),
        ("distilbert_optimum_O2", "distilbert", "model", "feature-extraction", True),
    ]
    for seed, (name, mt, head, task, opt) in enumerate(entries, start=20):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            save_model(mt, head, tmp / "model", seed)
            sh("optimum-cli", "export", "onnx", "--model", str(tmp / "model"), "--task", task, str(tmp / "onnx"))
            src = tmp / "onnx" / "model.onnx"
            cmd = f"optimum-cli export onnx --model DIR --task {task}"
            if opt:
                sh("optimum-cli", "onnxruntime", "optimize", "--onnx_model", str(tmp / "onnx"), "-O2", "-o", str(tmp / "opt"))
                src = next((tmp / "opt").glob("*.onnx"))
                cmd += " && optimum-cli onnxruntime optimize -O2"
            dst = OUT / f"{name}.onnx"
            shutil.copyfile(src, dst)
            import onnx

            m = onnx.load(str(dst))
            fused = sorted({n.op_type for n in m.graph.node if n.domain == "com.microsoft"})
            write_meta(dst, exporter="optimum-cli export onnx" + (" + onnxruntime optimize -O2" if opt else ""),
                       command=cmd, versions=VERS, fused=fused or False, int8=None, model_type=mt, head=head,
                       num_heads=4, hidden=tiny_config(mt).to_dict().get("hidden_size", tiny_config(mt).to_dict().get("dim")),
                       external_data=False, attn_implementation="optimum default")


if __name__ == "__main__":
    main()
