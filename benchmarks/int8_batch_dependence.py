"""Why dynamic-int8 accuracy depends on the evaluation batch size.

ONNX Runtime's DynamicQuantizeLinear computes ONE (scale, zero point) per tensor, from the min and
max over every element of the activation: all rows of the batch and all positions, padded ones too.
So a row's int8 result depends on (a) which other rows share its batch and (b) how much padding the
batch carries. This script separates the two on a real model and measures one candidate fix
(zeroing padded positions before each DynamicQuantizeLinear: the quantizer always widens the range
to include 0, so zeros cannot move it).

Measured, for the fp32 graph and the int8 graph, on the task's dev set:
- accuracy at eval batch sizes 1, 8, 32, 64 (rows sorted by length, as `compress eval` batches them)
  and 64 in file order (more padding);
- composition effect: each row alone vs inside a batch of rows of exactly its length (no padding);
- padding effect: each batch as `compress eval` builds it vs the same batch with 32 extra pad columns;
- the same for the int8 graph with padded positions zeroed before each DynamicQuantizeLinear.

Run: python benchmarks/int8_batch_dependence.py FP32_DIR INT8_DIR [--task sst2] [--threads 1]
(FP32_DIR from `compress export --onnx`, INT8_DIR from `compress quantize FP32_DIR -o INT8_DIR`).
Writes benchmarks/results/int8_batch_dependence.{json,md} with the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def mask_padded_activations(model):
    """Multiply the input of each DynamicQuantizeLinear that has a [batch, seq, hidden] shape by the
    attention mask, so padded positions hold exact zeros (which never widen a range containing 0)."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    mask = "attention_mask"
    g.node.extend(
        [
            helper.make_node("Cast", [mask], ["_m_f"], to=TensorProto.FLOAT, name="_mask_cast"),
            helper.make_node("Unsqueeze", ["_m_f", "_m_axes"], ["_m_3d"], name="_mask_unsq"),
        ]
    )
    g.initializer.append(helper.make_tensor("_m_axes", TensorProto.INT64, [1], [-1]))
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.graph.value_info) + list(g.input)}
    added, n = [], 0
    for node in list(g.node):
        if node.op_type != "DynamicQuantizeLinear" or ranks.get(node.input[0]) != 3:
            continue
        masked = f"{node.input[0]}_masked{n}"
        added.append(helper.make_node("Mul", [node.input[0], "_m_3d"], [masked], name=f"_mask_mul{n}"))
        node.input[0] = masked
        n += 1
    g.node.extend(added)
    # Topological order: the two mask nodes and Muls first is not valid (Muls read activations); sort.
    order, ready, pending = [], {i.name for i in g.input} | {t.name for t in g.initializer}, list(g.node)
    while pending:
        rest = []
        for nd in pending:
            if all(not x or x in ready for x in nd.input):
                order.append(nd)
                ready.update(nd.output)
            else:
                rest.append(nd)
        if len(rest) == len(pending):
            raise RuntimeError("cycle while sorting")
        pending = rest
    del g.node[:]
    g.node.extend(order)
    return model, n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32")
    ap.add_argument("int8")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "int8_batch_dependence"))
    a = ap.parse_args()

    import onnx

    from compress.core.models import load_tokenizer
    from compress.ort.evaluate import onnx_logits, pad_batch, session_inputs
    from compress.training.data import compute_metrics, load_task_data
    from exporters.files import resolve_onnx
    from exporters.sessions import make_session

    fp32, int8 = resolve_onnx(a.fp32), resolve_onnx(a.int8)
    tok = load_tokenizer(str(fp32.parent))
    td = load_task_data(a.task, tok, splits=("dev",), max_length=a.max_length)
    dev = td.dev
    labels = np.asarray(dev["labels"])
    tmp = Path(tempfile.mkdtemp(prefix="int8dep-"))
    masked_model, n_masked = mask_padded_activations(onnx.load(str(int8)))
    masked = tmp / "model.onnx"
    onnx.save(masked_model, str(masked))
    sessions = {
        "fp32": make_session(fp32, "cpu", a.threads),
        "int8": make_session(int8, "cpu", a.threads),
        "int8 padded positions zeroed": make_session(masked, "cpu", a.threads, check=False),
    }

    rows = {c: dev[c] for c in dev.column_names if c != "labels"}
    report = {
        "command": "python " + shlex.join(sys.argv),
        "fp32": str(fp32),
        "int8": str(int8),
        "task": a.task,
        "dev_rows": len(dev),
        "threads": a.threads,
        "masked_quantize_nodes": n_masked,
        "models": {},
    }
    for name, s in sessions.items():
        r: dict = {"accuracy": {}}
        ref = onnx_logits(s, dev, batch_size=1)
        ref_pred = ref.argmax(-1)
        r["accuracy"]["b1"] = compute_metrics(td.spec, ref, labels)["accuracy"]
        for b in (8, 32, 64):
            lg = onnx_logits(s, dev, batch_size=b)
            r["accuracy"][f"b{b} sorted"] = compute_metrics(td.spec, lg, labels)["accuracy"]
            r.setdefault("rows_changed_vs_b1", {})[f"b{b} sorted"] = int((lg.argmax(-1) != ref_pred).sum())
            r.setdefault("max_logit_diff_vs_b1", {})[f"b{b} sorted"] = float(np.abs(lg - ref).max())
        lg = onnx_logits_unsorted(s, dev, 64)
        r["accuracy"]["b64 file order"] = compute_metrics(td.spec, lg, labels)["accuracy"]
        r["rows_changed_vs_b1"]["b64 file order"] = int((lg.argmax(-1) != ref_pred).sum())
        r["max_logit_diff_vs_b1"]["b64 file order"] = float(np.abs(lg - ref).max())

        # (a) composition alone: batches of rows that all have the same length (no padding at all).
        inputs = session_inputs(s)
        out = s.get_outputs()[0].name
        lengths = np.array([len(x) for x in rows["input_ids"]])
        comp = []
        for L in np.unique(lengths):
            idx = np.flatnonzero(lengths == L)[:16]
            if len(idx) < 2:
                continue
            together = s.run([out], pad_batch({c: [rows[c][i] for i in idx] for c in rows}, inputs))[0]
            comp.append(float(np.abs(together - ref[idx]).max()))
        r["composition_max_logit_diff"] = max(comp)
        # (b) padding alone: the same sorted batch of 32, with 32 extra pad columns.
        order = np.argsort(lengths, kind="stable")
        pad = []
        for start in range(0, len(order), 32):
            sel = order[start : start + 32]
            feeds = pad_batch({c: [rows[c][i] for i in sel] for c in rows}, inputs)
            base = s.run([out], feeds)[0]
            wide = {k: np.pad(v, ((0, 0), (0, 32)), constant_values=0) for k, v in feeds.items()}
            pad.append(float(np.abs(s.run([out], wide)[0] - base).max()))
        r["padding_max_logit_diff"] = max(pad)
        report["models"][name] = r
        print(name, json.dumps(r), flush=True)

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# int8 batch dependence ({a.task} dev, {len(dev)} rows, {a.threads} thread(s))",
        "",
        f"Command: `{report['command']}`",
        "",
        "| graph | b1 | b8 | b32 | b64 | b64 file order | rows changed vs b1 (b64) | composition diff | padding diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        acc = r["accuracy"]
        lines.append(
            f"| {name} | {100 * acc['b1']:.2f} | {100 * acc['b8 sorted']:.2f} | {100 * acc['b32 sorted']:.2f} | "
            f"{100 * acc['b64 sorted']:.2f} | {100 * acc['b64 file order']:.2f} | {r['rows_changed_vs_b1']['b64 sorted']} | "
            f"{r['composition_max_logit_diff']:.3g} | {r['padding_max_logit_diff']:.3g} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


def onnx_logits_unsorted(session, dataset, batch_size):
    from compress.ort.evaluate import iter_batches, session_inputs

    out = session.get_outputs()[0].name
    idx, chunks = [], []
    for sel, feeds in iter_batches(dataset, session_inputs(session), batch_size, sort=False):
        idx.append(sel)
        chunks.append(session.run([out], feeds)[0])
    lg = np.concatenate(chunks)
    res = np.empty_like(lg)
    res[np.concatenate(idx)] = lg
    return res


if __name__ == "__main__":
    sys.exit(main())
