"""Shared by the zoo generator scripts (each runs in its own venv; only torch, transformers and the
standard library are assumed here)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

VOCAB = 100
# Tiny but not degenerate: 2 layers, 4 heads, hidden 32-64, so each graph is a few hundred KB at most.
SIZES = {
    "bert": dict(hidden=64, ffn=128, heads=4, layers=2),
    "roberta": dict(hidden=32, ffn=64, heads=4, layers=2),
    "distilbert": dict(hidden=48, ffn=96, heads=4, layers=2),
}


def tiny_config(model_type: str, num_labels: int = 2, **overrides):
    from transformers import AutoConfig

    s = {**SIZES[model_type], **overrides}
    if model_type == "distilbert":
        return AutoConfig.for_model(
            "distilbert",
            vocab_size=VOCAB,
            dim=s["hidden"],
            n_layers=s["layers"],
            n_heads=s["heads"],
            hidden_dim=s["ffn"],
            max_position_embeddings=64,
            num_labels=num_labels,
            pad_token_id=0,
        )
    extra = (
        {"max_position_embeddings": 66, "bos_token_id": 2, "eos_token_id": 3}
        if model_type == "roberta"
        else {"max_position_embeddings": 64}
    )
    return AutoConfig.for_model(
        model_type,
        vocab_size=VOCAB,
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        intermediate_size=s["ffn"],
        num_labels=num_labels,
        pad_token_id=0,
        **extra,
    )


def randomize(model, seed: int = 0):
    """Replace HF's init (std 0.02 weights, zero biases) by larger random values: zero biases would hide
    every bias-folding mistake of the surgery, and tiny weights make outputs nearly input-independent,
    so a 1e-4 comparison would prove little."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "LayerNorm" in name or "layer_norm" in name.lower() or name.endswith("ln.weight"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    return model


def versions(*modules: str) -> dict:
    import importlib

    out = {"python": platform.python_version()}
    for m in modules:
        try:
            out[m] = importlib.import_module(m).__version__
        except Exception as e:  # recorded, not hidden
            out[m] = f"not importable ({type(e).__name__})"
    return out


def write_meta(onnx_path: Path, **meta) -> None:
    """The JSON beside each zoo graph: how it was made (what the zoo table shows) and what the harness needs."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    meta.setdefault("opset", next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")))
    meta["inputs"] = [i.name for i in m.graph.input]
    meta["outputs"] = [o.name for o in m.graph.output]
    meta["file"] = onnx_path.name
    onnx_path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size // 1024} KB)")
