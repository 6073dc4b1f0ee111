"""Speed targets for structured pruning (issue 14): latency tables of the deployment target and a
budget solver that picks the kept heads / FFN dims meeting a latency or FLOPs budget.

  latency.py  LatencyTable (measured with ONNX Runtime on graphs our own export + surgery produce),
              flops_table (hardware-free, same interface), build/cache (load_or_build_table)
  budget.py   solve_budget: importance per head / FFN dim + a table -> kept structure under a budget
"""

from compress.speed.budget import BudgetResult, Target, resolve_target, solve_budget
from compress.speed.latency import DeployConfig, LatencyTable, flops_table, load_or_build_table

__all__ = [
    "BudgetResult",
    "DeployConfig",
    "LatencyTable",
    "Target",
    "flops_table",
    "load_or_build_table",
    "resolve_target",
    "solve_budget",
]
