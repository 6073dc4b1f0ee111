"""The pruning methods of both papers, one registered function each.

A method is data (`Method`: binarizer, what trains, defaults) plus two functions: `build` lays mask
groups over the encoder linears, `prepare` (compress.pruning.prepare) adjusts the run before training.
Nothing else in the code branches on a method's name.

Block Pruning paper (Lagunas et al. 2021), Table 1; SMP paper (Wang et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from compress.core.config import PruneConfig
from compress.core.errors import InvalidConfigError
from compress.core.structure import ATTN_ROLES, FFN_ROLES, geometry, layer_linears
from compress.pruning import prepare as hooks
from compress.pruning.masks import Binarizer, Group, Layout


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    build: Callable  # (model, PruneConfig) -> list[Group]
    binarizer: Binarizer
    train_weights: bool = True  # False: SMP, encoder weights frozen
    default_sparsity: float | None = None  # top-k methods: target fraction of zeros
    default_lambda: float | None = None  # soft methods: final regularisation weight
    score_lr: float = 1e-2
    needs_source: bool = False  # hybrid-filled starts from a hybrid result (--source)
    needs_budget: bool = False  # retrain-free: its structure is chosen for a speed target, after training
    # a speed target (--target-speedup/-latency-ms/-flops) chooses its structure like this method's
    budget_as: str | None = None
    prunes_hidden: bool = False  # can add the hidden-dimension mask (--prune-hidden)
    prepare: Callable = hooks.nothing  # (compress.pruning.prepare.PruneRun) -> None, before training

    @property
    def targets_sparsity(self) -> bool:
        return self.binarizer.top_k and not self.needs_budget

    @property
    def regularised(self) -> bool:
        return self.binarizer.regularised


METHODS: dict[str, Method] = {}


def register(name: str, help: str, binarizer: Binarizer, **kw):
    def deco(fn):
        METHODS[name] = Method(name=name, help=help, build=fn, binarizer=binarizer, **kw)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InvalidConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)} (see `compress methods`)")
    return METHODS[name]


# ------------------------------------------------------------------ group layouts
def _per_matrix(model, layout_for_role) -> list[Group]:
    groups = []
    for i, lin in enumerate(layer_linears(model)):
        for role in ATTN_ROLES + FFN_ROLES:
            kind = "attn" if role in ATTN_ROLES else "ffn"
            groups.append(Group(f"layer.{i}.{role}", kind, role, i, [(lin[role], layout_for_role(role))]))
    return groups


def _ffn_dims(i: int, lin) -> Group:
    """FFN "Dim": row j of W1 and column j of W2 share one score."""
    return Group(
        f"layer.{i}.ffn_dim", "ffn", "ffn_dim", i, [(lin["ffn_in"], Layout("rows")), (lin["ffn_out"], Layout("cols"))]
    )


def _heads(i: int, lin, head_size: int) -> Group:
    """One score per head across Q/K/V (output rows) and O (input columns)."""
    rows, cols = Layout("rows", rows=head_size), Layout("cols", cols=head_size)
    members = [(lin["query"], rows), (lin["key"], rows), (lin["value"], rows), (lin["attn_out"], cols)]
    return Group(f"layer.{i}.heads", "attn", "heads", i, members)


def _unstructured(model, cfg: PruneConfig) -> list[Group]:
    return _per_matrix(model, lambda role: Layout("full"))


def _hybrid_groups(model, cfg: PruneConfig) -> list[Group]:
    groups = []
    for i, lin in enumerate(layer_linears(model)):
        for role in ATTN_ROLES:
            groups.append(Group(f"layer.{i}.{role}", "attn", role, i, [(lin[role], Layout("block", 32, 32))]))
        groups.append(_ffn_dims(i, lin))
    return groups


def _struct_groups(model, cfg: PruneConfig) -> list[Group]:
    d = geometry(model.config).head_size
    groups = []
    for i, lin in enumerate(layer_linears(model)):
        groups += [_heads(i, lin, d), _ffn_dims(i, lin)]
    return groups


# ------------------------------------------------------------------ Block Pruning paper, Table 1
@register(
    "magnitude",
    "gradual magnitude pruning baseline: keep the largest |W| per matrix, cubic schedule",
    Binarizer.MAGNITUDE,
    default_sparsity=0.5,
)
def magnitude(model, cfg):
    return _unstructured(model, cfg)


@register(
    "movement",
    "movement pruning (Sanh et al.): hard top-k of learned scores per matrix, weights fine-tuned",
    Binarizer.TOPK,
    default_sparsity=0.5,
)
def movement(model, cfg):
    return _unstructured(model, cfg)


@register(
    "soft-movement",
    "soft movement: mask = sigmoid(S) > tau (STE), loss + lambda * mean sigmoid(S); sparsity set by lambda",
    Binarizer.THRESHOLD,
    default_lambda=1.0,
)
def soft_movement(model, cfg):
    return _unstructured(model, cfg)


@register(
    "block",
    "soft movement on square N x N blocks (--block-size) of every encoder linear",
    Binarizer.THRESHOLD,
    default_lambda=1.0,
)
def block(model, cfg):
    n = cfg.block_size
    return _per_matrix(model, lambda role: Layout("block", n, n))


@register(
    "hybrid",
    "32x32 blocks on attention Q/K/V/O + FFN Dim (row of W1 and column of W2 share a score); "
    "the paper's main method (use --teacher; without it this is Hybrid NT)",
    Binarizer.THRESHOLD,
    default_lambda=1.0,
    prunes_hidden=True,
)
def hybrid(model, cfg):
    return _hybrid_groups(model, cfg)


@register(
    "struct",
    "one score per attention head across Q/K/V/O + FFN Dim: removes whole heads directly",
    Binarizer.THRESHOLD,
    default_lambda=1.0,
    prunes_hidden=True,
)
def struct(model, cfg):
    return _struct_groups(model, cfg)


@register(
    "hybrid-filled",
    "takes a hybrid result (--source), re-initialises zeroed weights inside surviving heads "
    "and fine-tunes with the heads/FFN-dim structure frozen: same speed, better accuracy",
    Binarizer.FIXED,
    needs_source=True,
    prepare=hooks.filled,
)
def hybrid_filled(model, cfg):
    return _struct_groups(model, cfg)


# ------------------------------------------------------------------ Static Model Pruning
@register(
    "smp-l",
    "SMP-L: encoder weights frozen, only mask scores (+ classifier) train; top-k per matrix at one keep ratio",
    Binarizer.TOPK,
    train_weights=False,
    default_sparsity=0.5,
    score_lr=2e-2,
    prepare=hooks.frozen_encoder,
)
def smp_l(model, cfg):
    return _unstructured(model, cfg)


@register(
    "smp-s",
    "SMP-S: frozen weights, per-layer budgets from mean sigmoid(S) per matrix type, "
    "regulariser lambda * mean sigmoid(S)",
    Binarizer.SMP_S,
    train_weights=False,
    default_sparsity=0.5,
    default_lambda=1.0,
    score_lr=2e-2,
    prepare=hooks.frozen_encoder,
)
def smp_s(model, cfg):
    return _unstructured(model, cfg)


@register(
    "smp-struct",
    "SMP with structure (the SMP authors' future work): encoder frozen, one mask score per head "
    "(Q/K/V/O) and per FFN Dim + the classifier train; hard top-k at the scheduled keep ratio, so the result "
    "is physically smaller; with --target-speedup/--target-flops the speed budget solver picks heads/dims",
    Binarizer.TOPK,
    train_weights=False,
    default_sparsity=0.5,
    score_lr=2e-2,
    budget_as="struct",
    prepare=hooks.frozen_encoder,
    prunes_hidden=True,
)
def smp_struct(model, cfg):
    return _struct_groups(model, cfg)


# ------------------------------------------------------------------ Kwon et al. 2022
@register(
    "retrain-free",
    "post-training pruning (Kwon et al. 2022), no SGD: Fisher information of head/FFN-dim masks on a "
    "small sample, search under the --target-speedup/--target-flops budget, rearrangement, least-squares mask tuning; "
    "--fill-steps N then distils with the structure frozen",
    Binarizer.FIXED,
    needs_budget=True,
    budget_as="struct",
    prepare=hooks.retrain_free,
)
def retrain_free(model, cfg):
    return _struct_groups(model, cfg)
