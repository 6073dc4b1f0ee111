"""Writing a pruned/fine-tuned model: a plain Hugging Face checkpoint (masks baked in as zeros),
its tokenizer, compression.json and a short model card, atomically, and validated by reloading."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from compress.core import hidden
from compress.core.artifacts import COMPRESSION_JSON, FORMAT_VERSION, atomic_dir, record_checksums, write_json
from compress.core.errors import ValidationError
from compress.core.structure import geometry
from compress.core.version import __version__


def versions() -> dict:
    import transformers

    out = {
        "compress": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    for mod in ("datasets", "accelerate", "onnx", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional at this stage
            pass
    return out


def save_model_dir(
    model,
    tokenizer,
    output_dir,
    info: dict,
    overwrite: bool = False,
    sample: dict | None = None,
    reload=None,
    output_name: str = "logits",
    save=None,
) -> Path:
    """Save `model` + tokenizer + compression.json (`info` + geometry + checksums) + README.md.

    `sample`: a tokenized batch; the saved checkpoint is reloaded with plain transformers and must
    predict the same logits (within 1e-5) or nothing is written. `reload(dir)` loads it back as a
    classifier (default: AutoModelForSequenceClassification); a wrapper model saves its `.mlm`.
    `output_name`: the output compared; `save(model, tokenizer, folder)` replaces save_pretrained (an
    embedding model is written as a sentence-transformers folder).
    """
    from transformers import AutoModelForSequenceClassification

    geo = geometry(model.config)
    data = {
        "format_version": FORMAT_VERSION,
        **info,
        "model_type": model.config.model_type,
        "geometry": {
            "num_layers": geo.num_layers,
            "num_heads": geo.num_heads,
            "head_size": geo.head_size,
            "hidden_size": geo.hidden_size,
            "intermediate_size": geo.intermediate_size,
        },
        "versions": versions(),
    }
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        if save is not None:
            save(model, tokenizer, tmp)
        else:
            getattr(model, "mlm", model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if sample is not None:
            reloaded = (reload or AutoModelForSequenceClassification.from_pretrained)(tmp).eval()
            hidden.apply_record(reloaded, data)  # as compress's loaders do (compression.json is not written yet)
            # Compared on the CPU, where the reloaded copy is: same kernels, so the tight bound holds.
            # A model trained on a GPU is left on the CPU (every later stage runs there).
            model.eval().to("cpu")
            with torch.no_grad():
                a = getattr(model(**sample), output_name)
                b = getattr(reloaded(**sample), output_name)
            diff = float((a - b).abs().max())
            if diff > 1e-5:
                raise ValidationError(
                    f"saved checkpoint predicts differently from the in-memory model (max |diff| {diff:.2e} > "
                    "1e-5); nothing was written: its config.json or saved weights do not rebuild the model "
                    "(a config field changed after the model was built, or a weight save_pretrained skips)"
                )
        record_checksums(tmp, data, ["model.safetensors", "config.json"])
        write_json(tmp / COMPRESSION_JSON, data)
        (tmp / "README.md").write_text(model_card(data))
    return Path(output_dir)


def _target_text(sp: dict) -> str:
    t = sp["target"]
    if t["kind"] == "speedup":
        return f"{t['speedup']:g}x faster than dense"
    if t["kind"] == "latency":
        return f"{t['latency_ms']:g} ms"
    return f"{t['flops_fraction']:g} of dense FLOPs"


# How each task type's checkpoint loads without compress, for the model card.
LOADERS = {
    "sequence-classification": "`AutoModelForSequenceClassification.from_pretrained(dir)`",
    "question-answering": "`AutoModelForQuestionAnswering.from_pretrained(dir)`",
    "token-classification": "`AutoModelForTokenClassification.from_pretrained(dir)`",
    "embedding": "a sentence-transformers folder: `SentenceTransformer(dir)`",
}


def model_card(d: dict) -> str:
    geo = d["geometry"]
    lines = [f"# {d.get('method', 'model')} — compressed with compress {d['versions']['compress']}", ""]
    if d.get("method"):
        lines.append(
            f"Pruned with `compress prune --method {d['method']}` from `{d.get('base_model')}`"
            + (f", distilled from `{d['teacher']}`." if d.get("teacher") else ".")
        )
    else:
        lines.append(f"Fine-tuned with `compress finetune` from `{d.get('base_model')}`.")
    lines += ["", "| | |", "|---|---|"]
    sp = d.get("sparsity", {})
    params = d.get("params", {})
    if sp:
        lines.append(f"| encoder-linear sparsity | {sp['encoder_linear']:.1%} |")
    if params:
        lines.append(
            f"| encoder-linear params (dense / non-zero / after removing dead heads and dims) | "
            f"{params['encoder_linear_dense']:,} / {params['encoder_linear_nonzero']:,} / "
            f"{params['encoder_linear_after_removal']:,} |"
        )
    for k, v in (d.get("metrics") or {}).items():
        lines.append(f"| dev {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    sp = d.get("speed")
    if sp:
        lines.append(f"| speed target | {_target_text(sp)} |")
        where = sp.get("deploy")
        on = (
            (
                f" ({where['precision']} {where['shape']}, {where['threads']} threads, {where['provider']}; "
                f"vs dense fp32)"
            )
            if where
            else " (FLOPs)"
        )
        lines.append(f"| predicted speedup{on} | {sp['predicted_speedup']:.2f}x |")
        if sp.get("measured"):
            lines.append(
                f"| measured speedup (shrunk ONNX graph vs dense export, ORT) | {sp['measured']['speedup']:.2f}x |"
            )
    if d.get("layers"):
        lines += ["", "| layer | heads kept | FFN dims kept |", "|---|---|---|"]
        for i, l in enumerate(d["layers"]):
            lines.append(
                f"| {i} | {len(l['heads_kept'])}/{geo['num_heads']} | {len(l['ffn_dims_kept'])}/{geo['intermediate_size']} |"
            )
    if d.get("hidden"):
        lines += [
            "",
            f"The hidden dimension is pruned to {d['hidden']['kept_count']} of {d['hidden']['size']} dims: the "
            "LayerNorms normalise over the kept dims only, which plain transformers does not do. Load this folder "
            "with compress (`compress eval`, `compress export --onnx`, which cuts the dims out) or ship the ONNX "
            "graph; `from_pretrained` alone gives different predictions.",
        ]
    lines += [
        "",
        "The weights are a plain Hugging Face checkpoint with the masks baked in as zeros "
        f"({LOADERS.get(d.get('task_type'), LOADERS['sequence-classification'])}). `compress export --onnx DIR` "
        "removes the dead heads and FFN dims for a faster ONNX graph.",
        "",
    ]
    if d.get("smp_note"):
        lines += [d["smp_note"], ""]
    return "\n".join(lines)
