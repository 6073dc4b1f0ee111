"""Speed targets for structured pruning: latency tables of the deployment target and a budget solver
that picks the kept heads / FFN dims meeting a latency or FLOPs budget.

  deploy_graph.py  DeployConfig, DeployGraphs (our export + surgery + fusion + int8 of any kept structure)
                   and time_graphs (those graphs timed against the dense one, as deployed)
  table.py         LatencyTable (measured on deploy graphs), flops_table (hardware-free, same interface),
                   build/cache (load_or_build_table)
  solver.py        solve_budget: importance per head / FFN dim + a table -> kept structure under a budget
  plan.py          the speed plan prune() makes before training and the budget schedule that turns
                   importances into masks during training
  calibrate.py     the table's budget checked against one real deploy graph before training
"""

from compress.speed.deploy_graph import DeployConfig
from compress.speed.solver import BudgetResult, Target, resolve_target, solve_budget
from compress.speed.table import LatencyTable, flops_table, load_or_build_table

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
