"""Pictures and tables people can look at: the pruning pattern of every matrix (like Figure 1 of
the Block Pruning paper), heads / FFN dims kept per layer, and accuracy against speedup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.core.structure import geometry, layer_linears


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def plot_pattern(model, path: str | Path, title: str = "") -> Path:
    """One row per layer: Q, K, V, O, FFN-in (transposed), FFN-out; kept weights dark, heads delimited."""
    plt = _plt()
    geo = geometry(model.config)
    lins = layer_linears(model)
    cols = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
    fig, axes = plt.subplots(
        len(lins),
        len(cols),
        figsize=(2.2 * len(cols) + 4, 1.9 * len(lins)),
        gridspec_kw={"width_ratios": [1, 1, 1, 1, 4, 4]},
        squeeze=False,
    )
    for i, lin in enumerate(lins):
        for j, role in enumerate(cols):
            w = lin[role].weight.detach()
            kept = (w != 0).float()
            # FFN-in is [ffn, hidden]: transpose so both FFN matrices show FFN dims along x.
            img = kept.T if role == "ffn_in" else kept
            img = _downsample(img.numpy(), 96 if role.startswith("ffn") else 48)
            ax = axes[i][j]
            ax.imshow(img, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if role in ("query", "key", "value"):  # heads are row blocks
                for h in range(1, geo.num_heads):
                    ax.axhline(h * img.shape[0] / geo.num_heads - 0.5, color="tab:red", lw=0.4)
            if role == "attn_out":  # heads are column blocks
                for h in range(1, geo.num_heads):
                    ax.axvline(h * img.shape[1] / geo.num_heads - 0.5, color="tab:red", lw=0.4)
            if i == 0:
                ax.set_title(role, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"layer {i}", fontsize=9)
            ax.set_xlabel(f"{float(kept.mean()):.0%} kept", fontsize=7)
    fig.suptitle(title or "pruning pattern (dark = kept; red lines delimit heads)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _downsample(a: np.ndarray, target: int) -> np.ndarray:
    """Average-pool a 0/1 matrix to at most `target` cells a side so large matrices stay readable."""
    fr, fc = max(1, a.shape[0] // target), max(1, a.shape[1] // target)
    r, c = a.shape[0] // fr * fr, a.shape[1] // fc * fc
    return a[:r, :c].reshape(r // fr, fr, c // fc, fc).mean(axis=(1, 3))


def plot_kept(layers: list[dict], geo: dict, path: str | Path) -> Path:
    plt = _plt()
    idx = np.arange(len(layers))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(idx, [len(l["heads_kept"]) for l in layers], color="tab:blue")
    a.axhline(geo["num_heads"], color="grey", ls="--", lw=0.8)
    a.set_title("attention heads kept")
    a.set_xlabel("layer")
    b.bar(idx, [len(l["ffn_dims_kept"]) for l in layers], color="tab:orange")
    b.axhline(geo["intermediate_size"], color="grey", ls="--", lw=0.8)
    b.set_title("FFN dims kept")
    b.set_xlabel("layer")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(points: list[dict], path: str | Path, x: str = "speedup", y: str = "accuracy") -> Path:
    """points: [{label, speedup, accuracy}]; a scatter with labels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in points:
        ax.scatter(p[x], p[y])
        ax.annotate(p["label"], (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("ORT CPU speedup vs dense fp32 (batch 32 x 128)" if x == "speedup" else x)
    ax.set_ylabel("dev " + y)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
