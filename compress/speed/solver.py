"""Choose the kept structure (heads and FFN dims per layer) that meets a latency / FLOPs budget.

Inputs are non-negative importances, one per head and one per FFN dim of every layer, and a
LatencyTable. Within a layer the cost depends only on how many heads / dims are kept, so a layer
keeps its most important ones and the problem is to choose the counts: maximise the summed
importance of what is kept subject to fixed + sum_l attn[h_l] + ffn[f_l] <= budget.

Method (pure functions, deterministic):
  1. Lagrangian relaxation: for a price mu per ms every layer's attention and FFN independently pick
     the count maximising value - mu * cost; bisection on mu finds the cheapest price whose choice fits
     the budget. Each choice lies on the upper convex hull of value vs cost, which handles the
     non-convex costs plain greedy-by-ratio trips on (the first head of a layer carries the fixed cost
     of the attention block: softmax, reshapes).
  2. Greedy fill: while the slack allows, add the next head or the next FFN block (ffn_block dims) with
     the best importance per marginal cost. It stops when nothing more fits, so the result is within
     one head or one FFN block of the budget.
FFN widths are multiples of ffn_block (or the full width): the kept width stays a multiple of the
GEMM tile sizes, and the budget is met to within one such block.

With hidden importances (one per hidden dim, --prune-hidden) the number of kept hidden dims k is chosen
too: every layer's costs depend on k, so for each candidate k (multiples of hidden_step from the table's
smallest measured hidden size up, and the full size) the per-layer problem above is solved on the table
at k (LatencyTable.at_hidden), and the k of the largest total importance (heads + FFN dims + the top-k
hidden dims) wins; ties keep the larger k. The kept hidden dims are the k most important. Without
hidden importances nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compress.core.errors import InvalidConfigError
from compress.speed.table import LatencyTable, hidden_multiple


@dataclass
class Target:
    """Exactly one of: a speedup over the dense deploy graph, an absolute latency, or the fraction of
    dense FLOPs to keep (hardware-free)."""

    speedup: float | None = None
    latency_ms: float | None = None
    flops: float | None = None

    def validate(self) -> None:
        given = [
            n
            for n, v in (
                ("--target-speedup", self.speedup),
                ("--target-latency-ms", self.latency_ms),
                ("--target-flops", self.flops),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise InvalidConfigError(
                f"give exactly one of --target-speedup, --target-latency-ms, --target-flops (got {given or 'none'})"
            )
        if self.speedup is not None and self.speedup < 1.0:
            raise InvalidConfigError(f"--target-speedup {self.speedup} must be >= 1 (e.g. 3 for 3x faster than dense)")
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise InvalidConfigError(f"--target-latency-ms {self.latency_ms} must be > 0")
        if self.flops is not None and not 0.0 < self.flops <= 1.0:
            raise InvalidConfigError(
                f"--target-flops {self.flops} is the fraction of dense FLOPs to keep; give a value in (0, 1]"
            )

    @property
    def kind(self) -> str:
        return "speedup" if self.speedup is not None else "latency" if self.latency_ms is not None else "flops"

    def describe(self) -> str:
        if self.kind == "speedup":
            return f"{self.speedup:g}x"
        return f"{self.latency_ms:g} ms" if self.kind == "latency" else f"{self.flops:g} of dense FLOPs"


def hidden_candidates(table: LatencyTable, step: int | None = None) -> list[int]:
    """The kept hidden sizes the solver tries, increasing: multiples of `step` (default hidden_multiple)
    from the table's smallest measured hidden size, and the full size."""
    full = table.hidden_size
    if not table.hidden_rows:
        return [full] if full else []
    step = max(1, step or hidden_multiple(full))
    return [k for k in range(step, full, step) if k >= table.min_hidden] + [full]


def least_cost(table: LatencyTable, ffn_block: int = 32, hidden: bool = False, hidden_step: int | None = None) -> float:
    """The cost of the cheapest structure that keeps anything: the fixed part plus one head or one FFN
    block (the solver keeps FFN widths in multiples of ffn_block) in one layer, whichever costs less;
    with `hidden`, at the smallest hidden size the solver may choose."""
    if hidden:
        table = table.at_hidden(hidden_candidates(table, hidden_step)[0] if table.hidden_rows else None)
    units = []
    if table.num_heads:
        units.append(table.attn_cost(1))
    if table.intermediate_size:
        units.append(table.ffn_cost(min(max(1, ffn_block), table.intermediate_size)))
    return table.fixed_ms + min(units, default=0.0)


def _reachable(target: Target, table: LatencyTable, least: float) -> str:
    """The advice of an unreachable target: the most it can ask for, rounded to stay reachable."""
    if target.kind == "speedup":
        return f"ask for at most {math.floor(table.baseline_ms / least * 100) / 100:.2f}x on this deployment"
    if target.kind == "latency":
        return f"ask for --target-latency-ms >= {math.ceil(least * 1000) / 1000:g}"
    fraction = least / table.dense_ms
    digits = 3 - math.floor(math.log10(fraction))  # 3 significant digits, rounded up
    return f"ask for --target-flops >= {math.ceil(fraction * 10**digits) / 10**digits:g} (at most {1 / fraction:.1f}x fewer FLOPs)"


def resolve_target(
    target: Target, table: LatencyTable, ffn_block: int = 32, hidden: bool = False, hidden_step: int | None = None
) -> float:
    """The budget in the table's unit; InvalidConfigError when it would remove every head and FFN dim
    (a model with nothing left to prune or deploy), naming the most that can be asked for instead.
    `hidden`: the hidden dimension is pruned too (the least cost is at the smallest hidden size)."""
    target.validate()
    if target.kind == "flops" and table.unit != "MFLOP":
        raise InvalidConfigError(
            "--target-flops needs the FLOPs table; it cannot be combined with a measured latency table"
        )
    if target.kind == "latency" and table.unit != "ms":
        raise InvalidConfigError("--target-latency-ms needs a measured latency table, not the FLOPs table")
    budget = {
        "speedup": lambda: table.baseline_ms / target.speedup,
        "latency": lambda: target.latency_ms,
        "flops": lambda: target.flops * table.dense_ms,
    }[target.kind]()
    least = least_cost(table, ffn_block, hidden, hidden_step)
    if budget < least * (1 - 1e-9):
        block = min(max(1, ffn_block), table.intermediate_size)
        fixed = (
            f", {table.fixed_ms:.4g} {table.unit} of it embeddings, LayerNorms and the classifier"
            if table.fixed_ms > 0
            else ""
        )
        raise InvalidConfigError(
            f"target {target.describe()} means {budget:.4g} {table.unit}, less than the {least:.4g} {table.unit} of "
            f"the smallest structure that keeps anything (one head or {block} FFN dims in one layer{fixed}), so it "
            f"would remove every head and FFN dim; {_reachable(target, table, least)}"
        )
    return budget


@dataclass
class BudgetResult:
    heads: list[list[int]]  # kept head indices per layer, sorted
    ffn_dims: list[list[int]]  # kept FFN dim indices per layer, sorted
    predicted: float  # table cost of the structure
    budget: float
    value: float  # summed importance kept
    hidden: list[int] | None = None  # kept hidden dims, sorted; None when the hidden dimension is not pruned

    @property
    def heads_per_layer(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def ffn_per_layer(self) -> list[int]:
        return [len(f) for f in self.ffn_dims]

    def layers(self) -> list[dict]:
        """compression.json's `layers` form."""
        return [{"heads_kept": h, "ffn_dims_kept": f} for h, f in zip(self.heads, self.ffn_dims)]


def _as_matrix(values, width: int, what: str) -> np.ndarray:
    rows = [
        np.asarray(
            getattr(v, "detach", lambda: v)().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float64
        ).reshape(-1)
        for v in values
    ]
    if any(r.size != width for r in rows):
        raise InvalidConfigError(
            f"{what} importances must have {width} entries per layer, got {[r.size for r in rows]}"
        )
    m = np.stack(rows) if rows else np.zeros((0, width))
    if not np.all(np.isfinite(m)) or (m < 0).any():
        raise InvalidConfigError(f"{what} importances must be finite and >= 0 (e.g. sigmoid of the mask scores)")
    return m


def _cumulative(imp: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order of items by decreasing importance per layer, summed importance of the top-k for k in counts)."""
    order = np.argsort(-imp, axis=1, kind="stable")
    srt = np.take_along_axis(imp, order, axis=1)
    cum = np.concatenate([np.zeros((imp.shape[0], 1)), np.cumsum(srt, axis=1)], axis=1)
    return order, cum[:, counts]


def solve_budget(
    head_importance,
    ffn_importance,
    table: LatencyTable,
    budget: float,
    ffn_block: int = 32,
    hidden_importance=None,
    hidden_step: int | None = None,
) -> BudgetResult:
    """Kept structure of maximal importance whose table cost is <= budget (see the module docstring).
    `hidden_importance`: one non-negative value per hidden dim to choose the kept hidden dims too (the
    result's `hidden`); `hidden_step`: the kept hidden count is a multiple of it (default hidden_multiple)."""
    L, H, F = table.num_layers, table.num_heads, table.intermediate_size
    if len(head_importance) != L or len(ffn_importance) != L:
        raise InvalidConfigError(
            f"importances for {len(head_importance)}/{len(ffn_importance)} layers do not fit a {L}-layer table"
        )
    hi = _as_matrix(head_importance, H, "head")
    fi = _as_matrix(ffn_importance, F, "FFN-dim")
    if hidden_importance is not None:
        return _solve_with_hidden(hi, fi, hidden_importance, table, budget, ffn_block, hidden_step)
    if budget < table.fixed_ms - 1e-12:
        raise InvalidConfigError(
            f"budget {budget:.4g} {table.unit} is below the fixed cost {table.fixed_ms:.4g}; nothing fits"
        )
    return _solve(hi, fi, table, budget, ffn_block)


def _solve_with_hidden(hi, fi, hidden_importance, table: LatencyTable, budget: float, ffn_block: int, step):
    full = table.hidden_size or np.asarray(hidden_importance).size
    imp = _as_matrix([hidden_importance], full, "hidden-dim")[0]
    order = np.argsort(-imp, kind="stable")
    top = np.r_[0.0, np.cumsum(imp[order])]  # summed importance of the k most important dims
    best: tuple[float, int, BudgetResult] | None = None
    for k in reversed(hidden_candidates(table, step) or [full]):  # ties keep the larger k
        t = table.at_hidden(None if k == full else k)
        if budget < t.fixed_ms - 1e-12:
            continue
        r = _solve(hi, fi, t, budget, ffn_block)
        total = r.value + float(top[k])
        if best is None or total > best[0]:
            best = (total, k, r)
    if best is None:
        raise InvalidConfigError(
            f"budget {budget:.4g} {table.unit} is below the fixed cost at every hidden size the table has; nothing fits"
        )
    total, k, r = best
    r.hidden, r.value, r.budget = sorted(int(i) for i in order[:k]), total, budget
    return r


def _solve(hi: np.ndarray, fi: np.ndarray, table: LatencyTable, budget: float, ffn_block: int) -> BudgetResult:
    """The per-layer problem at the table's hidden size (the module docstring's steps 1 and 2)."""
    L, H, F = table.num_layers, table.num_heads, table.intermediate_size
    h_counts = np.arange(H + 1)
    f_counts = np.unique(np.r_[np.arange(0, F, max(1, ffn_block)), F])
    h_order, hv = _cumulative(hi, h_counts)  # (L, H+1)
    f_order, fv = _cumulative(fi, f_counts)  # (L, nF)
    hc = np.asarray(table.attn_ms, dtype=np.float64)[h_counts]
    fc = table.ffn_costs()[f_counts]
    room = budget - table.fixed_ms

    def choose(mu: float) -> tuple[np.ndarray, np.ndarray]:
        # argmax of value - mu * cost; ties go to the cheaper option (argmax returns the first)
        return np.argmax(hv - mu * hc, axis=1), np.argmax(fv - mu * fc, axis=1)

    def cost(hk, fk) -> float:
        return float(hc[hk].sum() + fc[fk].sum())

    hk, fk = choose(0.0)
    if cost(hk, fk) > room:
        lo, hi_mu = 0.0, 1.0
        while cost(*choose(hi_mu)) > room and hi_mu < 1e18:
            hi_mu *= 4.0
        for _ in range(80):
            mid = (lo + hi_mu) / 2
            if cost(*choose(mid)) > room:
                lo = mid
            else:
                hi_mu = mid
        hk, fk = choose(hi_mu)
        if cost(hk, fk) > room:  # only possible if even the zero structure does not fit
            hk, fk = np.zeros(L, int), np.zeros(L, int)
    # Greedy fill of the slack: next head or next FFN block, best importance per marginal cost first.
    # Also after mu = 0, whose ties (e.g. importances all 0 before the first gradient) go to the cheaper option.
    slack = room - cost(hk, fk)
    while True:
        best, pick = -1.0, None
        for l in range(L):
            if hk[l] < H:
                dc, dv = hc[hk[l] + 1] - hc[hk[l]], hv[l, hk[l] + 1] - hv[l, hk[l]]
                if dc <= slack + 1e-12:
                    r = np.inf if dc <= 0 else dv / dc
                    if r > best:
                        best, pick = r, ("h", l, dc)
            if fk[l] < len(f_counts) - 1:
                dc, dv = fc[fk[l] + 1] - fc[fk[l]], fv[l, fk[l] + 1] - fv[l, fk[l]]
                if dc <= slack + 1e-12:
                    r = np.inf if dc <= 0 else dv / dc
                    if r > best:
                        best, pick = r, ("f", l, dc)
        if pick is None:
            break
        kind, l, dc = pick
        if kind == "h":
            hk[l] += 1
        else:
            fk[l] += 1
        slack -= dc
    heads = [sorted(int(x) for x in h_order[l, : h_counts[hk[l]]]) for l in range(L)]
    dims = [sorted(int(x) for x in f_order[l, : f_counts[fk[l]]]) for l in range(L)]
    value = float(hv[np.arange(L), hk].sum() + fv[np.arange(L), fk].sum())
    predicted = table.predict_ms([len(h) for h in heads], [len(d) for d in dims])
    return BudgetResult(heads, dims, predicted, budget, value)


def marginal_step(table: LatencyTable, ffn_block: int = 32) -> float:
    """The largest cost of one head or one FFN block in the table: how close to a budget the solver
    is guaranteed to land."""
    h = np.diff(np.asarray(table.attn_ms, dtype=np.float64))
    F = table.intermediate_size
    counts = np.unique(np.r_[np.arange(0, F, max(1, ffn_block)), F])
    f = np.diff(table.ffn_costs()[counts])
    return float(max(h.max(initial=0.0), f.max(initial=0.0)))
