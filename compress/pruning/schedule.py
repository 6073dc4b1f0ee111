"""Cubic sparsity schedule shared by every method (Zhu & Gupta style, as in both papers' code).

With W warm-up steps and T total steps the value holds `initial` for `initial_warmup * W` steps,
reaches `final` at `T - final_warmup * W` (the cool-down: the last steps train at the final mask),
and in between follows final + (initial - final) * (1 - progress) ** 3.
"""

from __future__ import annotations


def cubic(
    step: int, total: int, warmup: int, initial_warmup: float, final_warmup: float, initial: float, final: float
) -> float:
    start = initial_warmup * warmup
    end = total - final_warmup * warmup
    if step < start:
        return initial
    if step >= end or end <= start:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1 - progress) ** 3
