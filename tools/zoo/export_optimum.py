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


def quantize_fused(src: Path, dst: Path) -> str:
    """Dynamic int8 of the fused graph (Attention -> QAttention). Tries optimum's CLI first and records
    why it had to fall back, so the zoo table says what happened."""
    out = dst.parent / "optimum_q"
    proc = subprocess.run(
        ["optimum-cli", "onnxruntime", "quantize", "--onnx_model", str(src.parent), "--avx2", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        shutil.copyfile(next(out.glob("*.onnx")), dst)
        return "optimum-cli onnxruntime quantize --avx2"
    last = [line for line in proc.stderr.splitlines() if "Error" in line][-1:]
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = onnx.load(str(src))
    del m.graph.value_info[:]
    onnx.save(m, str(dst.parent / "clean.onnx"))
    quantize_dynamic(
        str(dst.parent / "clean.onnx"),
        str(dst),
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return (
        "optimum-cli onnxruntime quantize --avx2 failed on this graph ("
        + (last[0][:200] if last else "no message")
        + "); made with onnxruntime.quantization.quantize_dynamic(extra_options={'DefaultTensorType': FLOAT}) instead"
    )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    entries = [  # name, model_type, head, task, optimize level, quantize
        ("bert_optimum", "bert", "cls", "text-classification", None, False),
        ("bert_optimum_O2", "bert", "cls", "text-classification", "O2", False),
        ("roberta_optimum", "roberta", "model", "feature-extraction", None, False),
        ("roberta_optimum_O2", "roberta", "model", "feature-extraction", "O2", False),
        ("distilbert_optimum_O2", "distilbert", "model", "feature-extraction", "O2", False),
        # -O3 adds the GELU approximation (FastGelu); `quantize --avx2` on the fused graph gives QAttention
        ("bert_optimum_O3", "bert", "model", "feature-extraction", "O3", False),
        ("bert_optimum_O2_int8_dynamic", "bert", "model", "feature-extraction", "O2", True),
    ]
    for seed, (name, mt, head, task, opt, quant) in enumerate(entries, start=20):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            save_model(mt, head, tmp / "model", seed)
            sh("optimum-cli", "export", "onnx", "--model", str(tmp / "model"), "--task", task, str(tmp / "onnx"))
            src = tmp / "onnx" / "model.onnx"
            cmd = f"optimum-cli export onnx --model DIR --task {task}"
            if opt:
                sh(
                    "optimum-cli",
                    "onnxruntime",
                    "optimize",
                    "--onnx_model",
                    str(tmp / "onnx"),
                    f"-{opt}",
                    "-o",
                    str(tmp / "opt"),
                )
                src = next((tmp / "opt").glob("*.onnx"))
                cmd += f" && optimum-cli onnxruntime optimize -{opt}"
            note, source = None, None
            if quant:
                # the fp32 graph it is quantized from: the harness measures the int8 graph's own rounding against it
                source = f"sources/{name}.fp32"
                (OUT / "sources").mkdir(exist_ok=True)
                shutil.copyfile(src, OUT / f"{source}.onnx")
                # `optimum-cli onnxruntime quantize --avx2` on the -O2 graph fails with onnxruntime 1.23.2
                # ("Unable to find data type for weight_name=... You may use extra_options
                # `DefaultTensorType`"); what its message suggests is what a user then runs:
                note = quantize_fused(src, tmp / "q.onnx")
                src = tmp / "q.onnx"
                cmd += " && quantize_dynamic(extra_options={'DefaultTensorType': FLOAT})"
            dst = OUT / f"{name}.onnx"
            shutil.copyfile(src, dst)
            import onnx

            m = onnx.load(str(dst))
            fused = sorted({n.op_type for n in m.graph.node if n.domain == "com.microsoft"})
            write_meta(
                dst,
                exporter="optimum-cli export onnx"
                + (f" + onnxruntime optimize -{opt}" if opt else "")
                + (" + onnxruntime.quantization.quantize_dynamic" if quant else ""),
                note=note,
                source=source,
                command=cmd,
                versions=VERS,
                fused=fused or False,
                int8="dynamic QOperator (fused graph)" if quant else None,
                model_type=mt,
                head=head,
                num_heads=4,
                hidden=tiny_config(mt).to_dict().get("hidden_size", tiny_config(mt).to_dict().get("dim")),
                external_data=False,
                attn_implementation="optimum default",
            )


if __name__ == "__main__":
    main()
