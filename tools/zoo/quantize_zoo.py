"""Zoo: what ONNX Runtime's own tools make of the legacy fp32 BERT export: int8 graphs — dynamic
(QOperator: DynamicQuantizeLinear + MatMulInteger) and static QDQ (QuantizeLinear / DequantizeLinear
around the weights and activations), each per-tensor and per-channel, and static QOperator — and the
graph an InferenceSession saves with optimized_model_filepath (LayerNormalization, BiasGelu, FusedGemm).
Run by make_zoo.sh in /tmp/zoo-legacy (its pinned onnxruntime) after export_legacy.py."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from zoo_common import versions, write_meta

OUT = Path(sys.argv[1])
SOURCE = "bert_legacy_op14_tt"


class Reader(CalibrationDataReader):
    """A few batches of random ids with ragged padding: enough to set activation ranges on a random model."""

    def __init__(self, names):
        rng = np.random.default_rng(3)
        self.batches = []
        for b, length in ((2, 9), (4, 16), (3, 23)):
            feeds = {
                "input_ids": rng.integers(4, 100, (b, length)).astype(np.int64),
                "attention_mask": np.ones((b, length), np.int64),
                "token_type_ids": np.zeros((b, length), np.int64),
            }
            feeds["attention_mask"][1:, length // 2 :] = 0
            self.batches.append({k: v for k, v in feeds.items() if k in names})
        self.it = iter(self.batches)

    def get_next(self):
        return next(self.it, None)


def session_optimized(src: Path, meta: dict, vers: dict, name: str = "bert_legacy_op14_ort_extended") -> None:
    """Users save ORT's runtime-optimized graph to skip optimization at load time; EXTENDED is the
    highest level ORT says is portable across machines."""
    dst = OUT / f"{name}.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    fused = sorted({n.op_type for n in onnx.load(str(dst)).graph.node if n.domain == "com.microsoft"})
    write_meta(
        dst,
        exporter=meta["exporter"] + " + InferenceSession(optimized_model_filepath, ORT_ENABLE_EXTENDED)",
        versions=vers,
        fused=fused or False,
        int8=None,
        model_type="bert",
        head=meta["head"],
        num_heads=4,
        hidden=64,
        external_data=False,
        attn_implementation=meta["attn_implementation"],
    )


def main():
    src = OUT / f"{SOURCE}.onnx"
    meta = json.loads(src.with_suffix(".json").read_text())
    vers = {**meta["versions"], **versions("onnxruntime")}
    session_optimized(src, meta, vers)
    # eager attention (Div after MatMul(Q, K^T)): ORT fuses them into FusedMatMul(alpha, transB)
    eager = OUT / "bert_legacy_op17_nott_eager.onnx"
    eager_meta = json.loads(eager.with_suffix(".json").read_text())
    session_optimized(
        eager, eager_meta, {**eager_meta["versions"], **versions("onnxruntime")}, "bert_legacy_op17_eager_ort_extended"
    )
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "clean.onnx"
        m = onnx.load(str(src))
        del m.graph.value_info[:]  # stale shapes make quantize_* fail (DESIGN.md pitfall)
        onnx.save(m, str(clean))
        for per_channel in (False, True):
            tag = "pc" if per_channel else "pt"
            dst = OUT / f"bert_legacy_op14_int8_dynamic_{tag}.onnx"
            quantize_dynamic(str(clean), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
            write_meta(
                dst,
                exporter=meta["exporter"] + " + onnxruntime.quantization.quantize_dynamic",
                versions=vers,
                fused=False,
                int8=f"dynamic QOperator, {'per-channel' if per_channel else 'per-tensor'}",
                source=SOURCE,
                model_type="bert",
                head=meta["head"],
                num_heads=4,
                hidden=64,
                external_data=False,
                attn_implementation=meta["attn_implementation"],
            )
            dst = OUT / f"bert_legacy_op14_int8_qdq_{tag}.onnx"
            quantize_static(
                str(clean),
                str(dst),
                Reader(meta["inputs"]),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            write_meta(
                dst,
                exporter=meta["exporter"] + " + onnxruntime.quantization.quantize_static (QDQ)",
                versions=vers,
                fused=False,
                int8=f"static QDQ, {'per-channel' if per_channel else 'per-tensor'}",
                source=SOURCE,
                model_type="bert",
                head=meta["head"],
                num_heads=4,
                hidden=64,
                external_data=False,
                attn_implementation=meta["attn_implementation"],
            )
        # static QOperator (QLinearMatMul, QLinearAdd ...): every op in the integer domain
        dst = OUT / "bert_legacy_op14_int8_qoperator_static.onnx"
        quantize_static(
            str(clean),
            str(dst),
            Reader(meta["inputs"]),
            quant_format=QuantFormat.QOperator,
            per_channel=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        write_meta(
            dst,
            exporter=meta["exporter"] + " + onnxruntime.quantization.quantize_static (QOperator)",
            versions=vers,
            fused=False,
            int8="static QOperator, per-tensor",
            source=SOURCE,
            model_type="bert",
            head=meta["head"],
            num_heads=4,
            hidden=64,
            external_data=False,
            attn_implementation=meta["attn_implementation"],
        )


if __name__ == "__main__":
    main()
