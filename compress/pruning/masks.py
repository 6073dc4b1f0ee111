"""Mask scores, binarizers and the parametrization that applies a mask to an nn.Linear weight.

A *group* owns one score tensor and one binary mask; its *members* are (linear, layout) pairs that
expand the group mask to their weight shape. Sharing a group is how methods tie weights together:
a Struct head group masks the head's Q/K/V rows and O columns; an FFN "Dim" group masks row i of W1
and column i of W2. Masks are applied with torch.nn.utils.parametrize, so the Hugging Face modules
are untouched and `bake()` leaves a plain checkpoint with zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn as nn
from torch.nn.utils import parametrize


class Binarizer(StrEnum):
    """How a method turns its scores (or weights) into a 0/1 mask. Owned by the method (Method.binarizer);
    the pruner and the flag checks ask these properties instead of comparing names."""

    MAGNITUDE = "magnitude"  # top-k of |W|, no learned scores
    TOPK = "topk"  # top-k of learned scores (hard movement, SMP-L)
    THRESHOLD = "threshold"  # 1[sigmoid(S) > tau] (soft movement, block, hybrid, struct)
    SMP_S = "smp-s"  # top-k with per-layer budgets from mean sigmoid(S)
    FIXED = "fixed"  # a frozen structure (hybrid-filled)

    @property
    def learned(self) -> bool:
        """Has mask scores that train."""
        return self in (Binarizer.TOPK, Binarizer.THRESHOLD, Binarizer.SMP_S)

    @property
    def top_k(self) -> bool:
        """The keep ratio is scheduled directly (set with --sparsity)."""
        return self in (Binarizer.MAGNITUDE, Binarizer.TOPK, Binarizer.SMP_S)

    @property
    def regularised(self) -> bool:
        """Trains with lambda * mean sigmoid(S)."""
        return self in (Binarizer.THRESHOLD, Binarizer.SMP_S)


# ---------------------------------------------------------------- binarizers (straight-through)
class _TopK(torch.autograd.Function):
    """1 for the ceil(keep * n) largest scores, 0 elsewhere; gradient passes straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: float) -> torch.Tensor:
        return topk_mask(scores.detach(), keep)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Threshold(torch.autograd.Function):
    """1[sigmoid(S) > tau]; gradient passes straight to S (as in soft movement pruning)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, tau: float) -> torch.Tensor:
        return (torch.sigmoid(scores) > tau).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def topk_mask(values: torch.Tensor, keep: float) -> torch.Tensor:
    n = values.numel()
    k = min(n, max(0, math.ceil(keep * n - 1e-9)))
    mask = torch.zeros(n, dtype=values.dtype, device=values.device)
    if k > 0:
        # torch.topk ties break by index, which is deterministic on CPU and across DDP ranks.
        mask[torch.topk(values.flatten(), k, sorted=False).indices] = 1
    return mask.view_as(values)


def topk_ste(scores: torch.Tensor, keep: float) -> torch.Tensor:
    return _TopK.apply(scores, keep)


def threshold_ste(scores: torch.Tensor, tau: float) -> torch.Tensor:
    return _Threshold.apply(scores, tau)


# ---------------------------------------------------------------- layouts: group mask -> weight mask
@dataclass(frozen=True)
class Layout:
    """How a group's mask covers one weight [out, in].

    kind: "full" (one score per weight), "block" (rows x cols blocks), "rows" (one score per `rows`
    output rows), "cols" (one score per `cols` input columns).
    """

    kind: str
    rows: int = 1
    cols: int = 1

    def score_shape(self, weight_shape: torch.Size) -> tuple[int, ...]:
        out_f, in_f = weight_shape
        if self.kind == "full":
            return (out_f, in_f)
        if self.kind == "block":
            return (math.ceil(out_f / self.rows), math.ceil(in_f / self.cols))
        if self.kind == "rows":
            return (math.ceil(out_f / self.rows),)
        if self.kind == "cols":
            return (math.ceil(in_f / self.cols),)
        raise ValueError(self.kind)

    def expand(self, mask: torch.Tensor, weight_shape: torch.Size) -> torch.Tensor:
        out_f, in_f = weight_shape
        if self.kind == "full":
            return mask
        if self.kind == "block":
            return mask.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)[:out_f, :in_f]
        if self.kind == "rows":
            return mask.repeat_interleave(self.rows)[:out_f, None]
        return mask.repeat_interleave(self.cols)[None, :in_f]


@dataclass
class Group:
    """One score tensor shared by its members. `kind` is "attn" or "ffn" (regularisation weights);
    `role` is the matrix type (query, key, ..., or "heads"/"ffn_dim" for shared groups), used by
    SMP-S to move budget between layers of the same type."""

    name: str
    kind: str
    role: str
    layer: int
    members: list[tuple[nn.Linear, Layout]]
    score_shape: tuple[int, ...] = ()

    def __post_init__(self):
        linear, layout = self.members[0]
        self.score_shape = layout.score_shape(linear.weight.shape)


class MaskedWeight(nn.Module):
    """Parametrization W -> W * expand(mask of its group). The mask comes from a callback so the
    scores live in the Pruner (one place for the optimizer, DDP and checkpoints), not in the model."""

    def __init__(self, get_mask, layout: Layout):
        super().__init__()
        self._get_mask = get_mask  # a plain callable: not registered as a submodule
        self.layout = layout

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.layout.expand(self._get_mask(), weight.shape).to(weight.dtype)


def attach(groups: list[Group], get_mask_for) -> None:
    """Register a MaskedWeight parametrization on every member weight."""
    for g in groups:
        for linear, layout in g.members:
            parametrize.register_parametrization(
                linear, "weight", MaskedWeight(get_mask_for(g.name), layout), unsafe=True
            )


def bake(model: nn.Module) -> None:
    """Replace every masked weight by its masked value (zeros baked in) and drop the parametrizations."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            with torch.no_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
