"""The Pruner: owns the mask scores of a model, turns them into masks at the scheduled level, and
supplies the regularisation term. One instance per run; it is a submodule of the training wrapper
(so the optimizer, DDP and Trainer checkpoints see the scores) and never of the Hugging Face model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.core import hidden
from compress.core.config import PruneConfig
from compress.core.structure import layer_linears
from compress.pruning import masks as M
from compress.pruning.methods import Method
from compress.pruning.schedule import cubic

HIDDEN = "hidden"  # name, kind and role of the hidden-dimension group


class Pruner(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        method: Method,
        cfg: PruneConfig,
        fixed_masks: dict[str, torch.Tensor] | None = None,
        budget=None,
    ):
        super().__init__()
        self.method = method
        self.cfg = cfg
        self.groups = method.build(model, cfg)
        if cfg.prune_hidden:
            self.groups.append(hidden_group(model))
        self.sparsity = cfg.sparsity if cfg.sparsity is not None else (method.default_sparsity or 0.0)
        self.lam_final = cfg.lambda_reg if cfg.lambda_reg is not None else (method.default_lambda or 0.0)
        # With a speed target the structure comes from a budget solver over the scores, not from a
        # threshold: no regulariser, and the budget follows the cubic schedule. `budget` is a callable
        # groups -> object with masks(scores) (compress.speed.plan.StructureBudget, built by the driver).
        self.budget = budget(self.groups) if budget is not None else None
        if self.budget is not None:
            self.lam_final = 0.0
        self.scores = nn.ParameterDict()
        if method.binarizer.learned:
            for g in self.groups:
                self.scores[_key(g.name)] = nn.Parameter(_initial_scores(g, method.binarizer, cfg.score_init))
        for g in self.groups:
            if method.binarizer is M.Binarizer.FIXED:
                self.register_buffer(f"fixed_{_key(g.name)}", fixed_masks[g.name].float().clone())
        # Schedule state (derived from the step, so a resumed run recomputes it exactly).
        self.keep = 1.0
        self.keep_hidden = 1.0
        self.tau = 0.0
        self.lam = 0.0
        self._cache: dict[str, torch.Tensor] = {}
        M.attach(self.groups, self._mask_getter)
        if cfg.prune_hidden:
            hidden.attach(model, self._mask_getter(HIDDEN))

    # ------------------------------------------------------------ schedule
    def set_step(self, step: int, total: int, warmup: int) -> None:
        c = self.cfg
        ramp = lambda a, b: cubic(step, total, warmup, c.initial_warmup, c.final_warmup, a, b)  # noqa: E731
        self.keep = ramp(1.0, 1.0 - self.sparsity)
        self.keep_hidden = ramp(1.0, 1.0 - c.hidden_sparsity)
        self.tau = ramp(0.0, c.tau)
        self.lam = ramp(0.0, self.lam_final)
        if self.budget is not None:
            self.budget.set_level(ramp(self.budget.start, self.budget.plan.budget))
        self.invalidate()

    def finalize(self) -> None:
        """Jump to the end of the schedule (final keep ratio / threshold)."""
        self.set_step(1, 1, 0)

    def invalidate(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------ masks
    def _mask_getter(self, name: str):
        return lambda: self.group_mask(name)

    def group_mask(self, name: str) -> torch.Tensor:
        if name not in self._cache or (torch.is_grad_enabled() and not self._cache[name].requires_grad and self.scores):
            self._compute_all()
        return self._cache[name]

    def _compute_all(self) -> None:
        if self.budget is not None:
            self._cache.update(self.budget.masks(self.scores))
            return
        self._cache.update(MASKS[self.method.binarizer](self))

    @torch.no_grad()
    def _smp_s_ratios(self) -> dict[str, float]:
        """SMP-S: within each matrix type, layer l keeps v * L * m_l / sum(m), m_l = mean sigmoid(S_l).

        Budget moves to the layers whose scores stay high; the overall keep ratio of the type stays v.
        """
        by_role: dict[str, list] = {}
        for g in self.groups:
            by_role.setdefault(g.role, []).append(g)
        ratios = {}
        for gs in by_role.values():
            means = torch.stack([torch.sigmoid(self.scores[_key(g.name)]).mean() for g in gs])
            r = self.keep * len(gs) * means / means.sum().clamp_min(1e-12)
            for g, ri in zip(gs, r.tolist()):
                ratios[g.name] = min(1.0, ri)
        return ratios

    def regularization(self) -> torch.Tensor | float:
        """lambda * (lambda_att * mean over attn groups + lambda_ffn * mean over ffn groups [+ lambda_hidden *
        the hidden group]) of mean sigmoid(S)."""
        if not self.method.regularised or self.lam == 0.0:
            return 0.0
        terms = {"attn": [], "ffn": [], HIDDEN: []}
        for g in self.groups:
            terms[g.kind].append(torch.sigmoid(self.scores[_key(g.name)]).mean())
        weights = {"attn": self.cfg.lambda_att, "ffn": self.cfg.lambda_ffn, HIDDEN: self.cfg.lambda_hidden}
        reg = sum(weights[k] * torch.stack(v).mean() for k, v in terms.items() if v)
        return self.lam * reg

    # ------------------------------------------------------------ stats
    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Current fraction of zeros over all masked weights (and the schedule values)."""
        total = zeros = 0
        for g in self.groups:
            mask = self.group_mask(g.name).detach()
            for linear, layout in g.members:
                shape = _raw_weight(linear).shape
                full = layout.expand(mask, shape)
                n = shape[0] * shape[1]
                total += n
                zeros += n - float(full.sum()) * (n / full.numel())
        out = {"mask_sparsity": zeros / max(total, 1), "keep": self.keep, "tau": self.tau, "lambda": self.lam}
        if self.budget is not None:
            out["budget"] = self.budget.level
            out["predicted"] = self.budget.last.predicted if self.budget.last else float("nan")
        return out


# ------------------------------------------------------------ masks per binarizer: pruner -> {group name: mask}
def _magnitude_masks(p: Pruner) -> dict[str, torch.Tensor]:
    return {g.name: M.topk_mask(_raw_weight(g.members[0][0]).detach().abs(), p.keep) for g in p.groups}


def _topk_masks(p: Pruner) -> dict[str, torch.Tensor]:
    return {g.name: M.topk_ste(p.scores[_key(g.name)], p.keep_hidden if g.kind == HIDDEN else p.keep) for g in p.groups}


def _threshold_masks(p: Pruner) -> dict[str, torch.Tensor]:
    out = {g.name: M.threshold_ste(p.scores[_key(g.name)], p.tau) for g in p.groups}
    if HIDDEN in out and not out[HIDDEN].detach().any():
        # Heads and FFN dims may all go (the sublayer is skipped), but a residual stream of width 0 would
        # make a constant model: the best-scored dim stays.
        keep = torch.zeros_like(out[HIDDEN])
        keep[p.scores[_key(HIDDEN)].detach().argmax()] = 1
        out[HIDDEN] = out[HIDDEN] + keep
    return out


def _smp_s_masks(p: Pruner) -> dict[str, torch.Tensor]:
    ratios = p._smp_s_ratios()
    return {g.name: M.topk_ste(p.scores[_key(g.name)], ratios[g.name]) for g in p.groups}


def _fixed_masks(p: Pruner) -> dict[str, torch.Tensor]:
    return {g.name: getattr(p, f"fixed_{_key(g.name)}") for g in p.groups}


MASKS = {
    M.Binarizer.MAGNITUDE: _magnitude_masks,
    M.Binarizer.TOPK: _topk_masks,
    M.Binarizer.THRESHOLD: _threshold_masks,
    M.Binarizer.SMP_S: _smp_s_masks,
    M.Binarizer.FIXED: _fixed_masks,
}


def _initial_scores(g, binarizer: M.Binarizer, init: float | str | None) -> torch.Tensor:
    """Initial mask scores of one group.

    Top-k scores per weight start at |W| / mean|W| of their matrix ("magnitude", the default) unless a
    constant is given. The papers start from a constant, which assumes tens of thousands of steps:
    Adam moves every score by about one score-lr per step whatever its gradient, so after a few hundred
    steps the top-k of constant-initialised scores is close to random. Measured on MiniLM-L6 / SST-2,
    600 steps: movement at 70% and SMP-S at 50% collapsed to the majority class (50.9%) from a constant
    init. The magnitude prior keeps the first masks sensible and consistent score movement (a few units
    over a run at lr 1e-2) still re-ranks weights. Soft (threshold) scores stay constant: their mask
    is 1[sigmoid(S) > tau] and tau ramps up from 0, so they never start random.
    """
    linear, layout = g.members[0]
    if binarizer == M.Binarizer.TOPK and layout.kind in ("rows", "cols") and (init is None or init == "magnitude"):
        # Structured top-k (smp-struct): a constant would tie and keep heads/dims by index.
        return _unit_magnitude(g)
    if binarizer not in (M.Binarizer.TOPK, M.Binarizer.SMP_S) or layout.kind != "full":
        return torch.full(g.score_shape, float(init) if isinstance(init, (int, float)) else 0.0)
    w = linear.weight.detach().abs()
    relative = (w / w.mean().clamp_min(1e-12)).float()
    if init is None or init == "magnitude":
        return relative
    # Constant scores tie and torch.topk would then keep weights by index; a tiny |W| term breaks ties.
    return float(init) + 1e-6 * relative


def _unit_magnitude(g) -> torch.Tensor:
    """Per structural unit (head, FFN dim): mean |W| over its rows/columns in each member matrix, relative
    to the matrix's mean over units, averaged over members (Q/K/V/O for a head, W1/W2 for an FFN dim)."""
    total = 0
    for linear, layout in g.members:
        w = linear.weight.detach().abs().float()
        if layout.kind == "cols":
            w = w.T.contiguous()
        per_unit = layout.rows if layout.kind == "rows" else layout.cols
        u = w.reshape(-1, per_unit * w.shape[1]).mean(1)
        total = total + u / u.mean().clamp_min(1e-12)
    return total / len(g.members)


def hidden_group(model) -> M.Group:
    """One score per hidden dim. Its members mask the stream's readers (input columns of Q/K/V/W1) and
    writers (output rows of O/W2), so the baked weights show the cut; what makes the cut exact is the
    masked LayerNorms (compress.core.hidden), which the pruner attaches over the same mask."""
    cols, rows = M.Layout("cols"), M.Layout("rows")
    members = []
    for lin in layer_linears(model):
        members += [(lin[r], cols) for r in ("query", "key", "value", "ffn_in")]
        members += [(lin[r], rows) for r in ("attn_out", "ffn_out")]
    return M.Group(HIDDEN, HIDDEN, HIDDEN, -1, members)


def _key(name: str) -> str:
    return name.replace(".", "_")


def _raw_weight(linear: nn.Linear) -> torch.Tensor:
    return linear.parametrizations.weight.original
