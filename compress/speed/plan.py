"""The speed plan of `compress prune --target-speedup ...` and the budget that enforces it in training.

Before any training, plan_for turns the flags into a SpeedPlan (latency or FLOPs table, target, budget,
optionally calibrated); speed_info and measure_speedup describe the result in compression.json.

In training the Pruner hands its mask scores to StructureBudget at every step. The kept budget follows
the cubic schedule from the dense cost to the target; at each step solve_budget re-chooses the structure
from an importance per head and per FFN dim, ranked per unit of latency. Two importances (--budget-importance):
  fisher (default): the squared gradient of the loss with respect to the head / FFN-dim mask, averaged
      over steps (an exponential average): the first-order estimate of how much the (distillation)
      loss rises when the unit is removed (Molchanov et al. 2019; Kwon et al. 2022 use the same
      Fisher information of masks). Heads and FFN dims are measured in the same unit, the loss, so
      they compare directly. The masks' straight-through gradient *is* that mask gradient, so it costs
      nothing extra. A removed unit's average is frozen at its last kept value: at mask 0 its gradient
      says nothing (for struct it is exactly 0, the mask enters squared), and the budget only shrinks.
      hybrid: a head's mask gradient is the sum over its column blocks of O (scaling those columns
      scales the head's output); FFN dims use their own scores' gradients.
  scores: sigmoid(score) x the number of weights the unit holds, the method's own movement scores.
      Measured on MiniLM-L6 / SST-2 at 3x it dropped heads first (11 of 72 kept, 82.57): every unit
      starts at the same density, so the per-ms ranking only sees that a head costs more per weight.
(float64 throughout: in float32 sigmoid rounds to exactly 1 from a score of about 17 up.)
With a "hidden" group among the Pruner's groups (--prune-hidden) the solver also chooses the kept hidden
dims (one mask over the residual stream, masks["hidden"]) by the same importance: the squared gradient of
its mask, or sigmoid(score) x the encoder weights a hidden dim holds (a row or column of every Q/K/V/O/W1/W2).
The masks pass gradients straight through to every score (kept or not), as in movement pruning, so the
network is distilled into the final shape instead of being cut at the end. No regulariser, no lambda.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from compress.core.errors import CompressError, InvalidConfigError
from compress.speed.deploy_graph import DeployConfig
from compress.speed.solver import BudgetResult, Target, resolve_target, solve_budget
from compress.speed.table import LatencyTable

BUDGET_METHODS = ("struct", "hybrid")
HIDDEN = "hidden"  # the name of the Pruner's hidden-dimension group (compress.pruning.pruner.HIDDEN)
IMPORTANCES = ("fisher", "scores")
TABLE_TOLERANCE = 0.10  # how far a table's parts may add up from its dense graph before speed_info warns


# Exponential average of squared mask gradients: a window of about 1 / (1 - 0.98) = 50 steps, long
# enough to average out batch noise, short enough to follow the network as it is distilled into shape.
FISHER_DECAY = 0.98


class _Chosen(torch.autograd.Function):
    """Returns a precomputed 0/1 mask; the gradient passes straight through to the scores (and, when
    given, to `sink`, which collects it for the Fisher importance)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, mask: torch.Tensor, sink=None) -> torch.Tensor:
        ctx.sink = sink
        return mask

    @staticmethod
    def backward(ctx, grad):
        if ctx.sink is not None:
            ctx.sink(grad.detach())
        return grad, None, None


@dataclass
class SpeedPlan:
    """What prune() decided before training: the table, the target and the final budget."""

    target: Target
    table: LatencyTable
    budget: float
    deploy: DeployConfig | None  # None for the FLOPs table
    cache_file: str | None = None
    from_cache: bool = False
    calibration: dict | None = None  # compress.speed.calibrate's record, when the budget was corrected
    shape_from_data: dict | None = None  # how a --deploy-shape BATCHxdata was read (deploy_shape_from_data)


class StructureBudget(torch.nn.Module):
    """Owns the budget schedule and turns importances into masks for the Pruner's groups. A module so
    the Fisher averages are buffers: saved in training checkpoints and restored on resume."""

    def __init__(
        self,
        groups,
        method_name: str,
        geometry,
        plan: SpeedPlan,
        ffn_block: int = 32,
        importance: str = "fisher",
        hidden_step: int | None = None,
    ):
        super().__init__()
        if importance not in IMPORTANCES:
            raise InvalidConfigError(f"--budget-importance {importance!r}: use one of {', '.join(IMPORTANCES)}")
        if method_name not in BUDGET_METHODS:
            raise InvalidConfigError(
                f"--target-* works with the structured methods {', '.join(BUDGET_METHODS)}, not --method {method_name}"
            )
        self.geo = geometry
        self.plan = plan
        self.table = plan.table
        self.ffn_block = ffn_block
        self.method = method_name
        self.by_name = {g.name: g for g in groups}
        d, h = geometry.head_size, geometry.hidden_size
        self.head_weights = 4 * h * d
        self.dim_weights = 2 * h
        # Hidden dims, when pruned: a dim is a column of Q/K/V/W1 and a row of O/W2 in every layer.
        self.has_hidden = HIDDEN in self.by_name
        self.hidden_weights = geometry.num_layers * (4 * geometry.num_heads * d + 2 * geometry.intermediate_size)
        self.hidden_step = hidden_step
        if method_name == "hybrid":
            rows = groups[0].members[0][1].rows  # block size of the attention groups
            if d % rows:
                raise InvalidConfigError(
                    f"hybrid with a speed target needs the head size ({d}) to be a multiple of its {rows}x{rows} "
                    "attention blocks, so a block belongs to one head; use --method struct for this model"
                )
            self.blocks_per_head = d // rows
        # Start from whatever the dense structure costs, so the first steps keep everything.
        self.start = max(self.table.predicted_dense_ms, plan.budget)
        self.level = self.start
        self.last: BudgetResult | None = None
        self.kind = importance
        L, H, F = geometry.num_layers, geometry.num_heads, geometry.intermediate_size
        self.register_buffer("head_fisher", torch.zeros(L, H, dtype=torch.float64))
        self.register_buffer("ffn_fisher", torch.zeros(L, F, dtype=torch.float64))
        self.register_buffer("fisher_updates", torch.zeros(L, 2, dtype=torch.float64))  # per layer: heads, ffn
        if self.has_hidden:  # only then: the state dict of a run without hidden pruning stays as it was
            self.register_buffer("hidden_fisher", torch.zeros(h, dtype=torch.float64))
            self.register_buffer("hidden_updates", torch.zeros(1, dtype=torch.float64))

    def set_level(self, level: float) -> None:
        self.level = level

    # ------------------------------------------------------------------ importance
    @torch.no_grad()
    def importance(self, scores) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.kind == "fisher":
            return list(self.head_fisher.cpu()), list(self.ffn_fisher.cpu())
        return self.score_importance(scores)

    @torch.no_grad()
    def hidden_importance(self, scores) -> torch.Tensor | None:
        """One importance per hidden dim (None without a hidden group)."""
        if not self.has_hidden:
            return None
        if self.kind == "fisher":
            return self.hidden_fisher.cpu()
        return torch.sigmoid(scores[_key(HIDDEN)].double()).cpu() * self.hidden_weights

    @torch.no_grad()
    def _collect(self, layer: int, which: int, kept: torch.Tensor, grad: torch.Tensor) -> None:
        """Fold one backward's mask gradient (per unit) into the average of the units that are kept."""
        buf = self.head_fisher if which == 0 else self.ffn_fisher
        n = self.fisher_updates[layer, which] + 1
        self.fisher_updates[layer, which] = n
        buf[layer] = _average(buf[layer], n, kept, grad)

    @torch.no_grad()
    def _collect_hidden(self, kept: torch.Tensor, grad: torch.Tensor) -> None:
        n = self.hidden_updates[0] + 1
        self.hidden_updates[0] = n
        self.hidden_fisher.copy_(_average(self.hidden_fisher, n, kept, grad))

    def _sink(self, layer: int, which: int, kept: torch.Tensor):
        if self.kind != "fisher":
            return None
        if which == 0 and self.method == "hybrid":  # O's column blocks of head j -> head j's output scale
            H = self.geo.num_heads
            return lambda g: self._collect(layer, 0, kept, g.sum(0).reshape(H, -1).sum(1))
        return lambda g: self._collect(layer, which, kept, g)

    @torch.no_grad()
    def score_importance(self, scores) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        heads, ffn = [], []
        for i in range(self.geo.num_layers):
            ffn.append(torch.sigmoid(scores[_key(f"layer.{i}.ffn_dim")].double()).cpu() * self.dim_weights)
            if self.method == "struct":
                density = torch.sigmoid(scores[_key(f"layer.{i}.heads")].double()).cpu()
            else:
                parts = []
                for role in ("query", "key", "value"):  # row blocks of head j: j*b .. (j+1)*b
                    s = torch.sigmoid(scores[_key(f"layer.{i}.{role}")].double()).cpu()
                    parts.append(s.reshape(self.geo.num_heads, -1))
                s = torch.sigmoid(scores[_key(f"layer.{i}.attn_out")].double()).cpu()  # column blocks
                parts.append(s.t().reshape(self.geo.num_heads, -1))
                density = torch.cat(parts, dim=1).mean(dim=1)
            heads.append(density * self.head_weights)
        return heads, ffn

    # ------------------------------------------------------------------ masks
    def masks(self, scores) -> dict[str, torch.Tensor]:
        hi, fi = self.importance(scores)
        hd = self.hidden_importance(scores)
        res = solve_budget(
            [h.numpy() for h in hi],
            [f.numpy() for f in fi],
            self.table,
            self.level,
            self.ffn_block,
            hidden_importance=None if hd is None else hd.numpy(),
            hidden_step=self.hidden_step,
        )
        self.last = res
        out = {}
        if self.has_hidden:
            s = scores[_key(HIDDEN)]
            kept_hidden = torch.zeros(s.shape, dtype=s.dtype, device=s.device)
            kept_hidden[res.hidden] = 1
            sink = (lambda g: self._collect_hidden(kept_hidden, g)) if self.kind == "fisher" else None
            out[HIDDEN] = _Chosen.apply(s, kept_hidden, sink)
        H, F = self.geo.num_heads, self.geo.intermediate_size
        for i in range(self.geo.num_layers):
            fname = f"layer.{i}.ffn_dim"
            s = scores[_key(fname)]
            f = torch.zeros(F, dtype=s.dtype, device=s.device)
            f[res.ffn_dims[i]] = 1
            out[fname] = _Chosen.apply(s, f, self._sink(i, 1, f))
            hm = torch.zeros(H, dtype=s.dtype, device=s.device)
            hm[res.heads[i]] = 1
            if self.method == "struct":
                out[f"layer.{i}.heads"] = _Chosen.apply(scores[_key(f"layer.{i}.heads")], hm, self._sink(i, 0, hm))
                continue
            per_block = hm.repeat_interleave(self.blocks_per_head)
            for role in ("query", "key", "value", "attn_out"):
                name = f"layer.{i}.{role}"
                sc = scores[_key(name)]
                m = per_block[:, None].expand(sc.shape) if role != "attn_out" else per_block[None, :].expand(sc.shape)
                sink = self._sink(i, 0, hm) if role == "attn_out" else None
                out[name] = _Chosen.apply(sc, m.contiguous(), sink)
        return out


def _key(name: str) -> str:
    return name.replace(".", "_")


def _average(buf: torch.Tensor, n, kept: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`buf` with one more squared gradient folded in where `kept` (the n-th update): a plain mean over the
    first steps, then exponential; a removed unit's average is frozen."""
    rate = max(1.0 - FISHER_DECAY, 1.0 / float(n))
    g2 = grad.to(buf.dtype).square().to(buf.device)
    keep = kept.to(buf.device).bool()
    return torch.where(keep, buf + rate * (g2 - buf), buf)


# ---------------------------------------------------------------------- prune() glue
def target_from(cfg) -> Target | None:
    """The speed target of a PruneConfig, or None."""
    if cfg.target_speedup is None and cfg.target_latency_ms is None and cfg.target_flops is None:
        return None
    t = Target(speedup=cfg.target_speedup, latency_ms=cfg.target_latency_ms, flops=cfg.target_flops)
    t.validate()
    return t


# A length read from the data is rounded up to a multiple of this: nearby requests share one table,
# and kernels are tiled in multiples of 8.
SEQ_MULTIPLE = 8


def deploy_shape_from_data(shape: str, data, tokenizer, max_length: int | None = None) -> tuple[str, dict | None]:
    """(`shape` with its length made concrete, a record of how it was read or None when it had a number).
    BATCHxdata: the p90 token length of the dev rows of `data` (a DataConfig) under `tokenizer` (the
    student's), truncated at `max_length` (default: the task's evaluation length), rounded up to a
    multiple of SEQ_MULTIPLE and at most `max_length`."""
    import math

    from compress.speed.deploy_graph import DATA_SEQ, parse_shape
    from compress.training.dev_rows import dev_features, eval_length, length_stats, row_lengths

    batch, _, seq = shape.lower().partition("x")
    if seq != DATA_SEQ:
        parse_shape(shape)  # a bad shape fails here, before any data work
        return shape, None
    if not batch.isdigit() or int(batch) < 1:
        raise InvalidConfigError(f"--deploy-shape {shape!r} needs a positive batch size; e.g. 32x{DATA_SEQ}")
    length = max_length or eval_length(data.kind)
    stats = length_stats(row_lengths(dev_features(data, tokenizer, length)))
    resolved = f"{int(batch)}x{min(math.ceil(stats['p90'] / SEQ_MULTIPLE) * SEQ_MULTIPLE, length)}"
    record = {
        "requested": shape,
        "resolved": resolved,
        "rule": f"p90 tokens of the dev rows under the student's tokenizer, rounded up to a multiple of {SEQ_MULTIPLE}",
        "data": data.validation_file or data.task,
        "max_length": length,
        "tokens": stats,
    }
    return resolved, record


def concrete_deploy_shape(cfg, kind: str, data, tokenizer, max_length: int | None = None) -> tuple[str, dict | None]:
    """(cfg.deploy_shape made concrete, how it was read): a shape left unset is the task type's default
    (32x384 for question answering, else 32x128); under a speed target BATCHxdata is read from the dev rows
    (deploy_shape_from_data) under `tokenizer()`, a callable so that no tokenizer is loaded otherwise."""
    from compress.core.config import default_deploy_shape
    from compress.speed.deploy_graph import DATA_SEQ

    shape = cfg.deploy_shape or default_deploy_shape(kind)
    if target_from(cfg) is None or shape.lower().partition("x")[2] != DATA_SEQ:
        return shape, None
    return deploy_shape_from_data(shape, data, tokenizer(), max_length)


def resolve_deploy_shape(shape: str, data, tokenizer, max_length: int | None = None) -> str:
    """`shape` with a concrete length: '32xdata' -> e.g. '32x40' (deploy_shape_from_data); '32x128' as is."""
    return deploy_shape_from_data(shape, data, tokenizer, max_length)[0]


def deploy_from(cfg) -> DeployConfig:
    """The deployment of a PruneConfig; a shape left unset is 32x128 here (the prune driver first sets
    the task's default, 32x384 for question answering)."""
    from compress.core.config import default_deploy_shape
    from compress.speed.deploy_graph import parse_shape

    batch, seq = parse_shape(cfg.deploy_shape or default_deploy_shape(None))
    d = DeployConfig(
        precision=cfg.deploy,
        batch=batch,
        seq=seq,
        threads=cfg.deploy_threads,
        provider=cfg.deploy_provider,
        hidden_axis=bool(getattr(cfg, "prune_hidden", False)),
    )
    d.validate()
    return d


def plan_for(cfg, model_name: str, method_name: str, progress: bool = True) -> SpeedPlan | None:
    """Check the flags, load or build the table, resolve the budget (fails before any training)."""
    target = target_from(cfg)
    if target is None:
        return None
    if method_name not in BUDGET_METHODS:
        raise InvalidConfigError(
            f"--target-speedup/--target-latency-ms/--target-flops choose heads and FFN dims, so they "
            f"need a structured method ({', '.join(BUDGET_METHODS)}), not --method {method_name}"
        )
    if cfg.lambda_reg is not None or cfg.sparsity is not None:
        raise InvalidConfigError("a speed target sets the final structure: drop --lambda / --sparsity")
    if target.kind == "flops":
        from compress.core.models import load_config

        d = deploy_from(cfg)
        table = flops_table_for(load_config(model_name), d)
        return SpeedPlan(target, table, resolve_target(target, table, cfg.ffn_block, cfg.prune_hidden), None)
    from compress.speed.table import load_or_build_table

    deploy = deploy_from(cfg)
    table, path, cached = on_rank_zero(lambda: load_or_build_table(model_name, deploy, progress=progress))
    budget = resolve_target(target, table, cfg.ffn_block, cfg.prune_hidden)
    plan = SpeedPlan(target, table, budget, deploy, str(path) if path else None, cached)
    if cfg.calibrate:
        import sys
        import tempfile

        from compress.speed.calibrate import calibrate_budget, deploy_measure

        def calibrate():
            with tempfile.TemporaryDirectory(prefix="compress-calibrate-") as tmp:
                return calibrate_budget(table, plan.budget, deploy_measure(model_name, deploy, tmp), cfg.ffn_block)

        plan.budget, plan.calibration = on_rank_zero(calibrate)
        if progress:
            for r in plan.calibration["rounds"]:
                print(
                    f"calibration: {r['heads_per_layer']} heads / {r['ffn_dims_per_layer']} FFN dims per layer: "
                    f"table {r['predicted_speedup']:.2f}x, measured {r['measured_speedup']:.2f}x",
                    file=sys.stderr,
                )
    return plan


def on_rank_zero(fn):
    """fn() on global rank 0 only and its result on every rank, under torchrun (else just fn()).

    Whatever decides the final structure must be the same on every rank: a latency table or a calibration
    timed by each rank would differ (each times its own graphs, all ranks on the same cores at once), so
    would the budgets, and the ranks would keep different heads. Rank 0 measures (or reads its cache)
    and broadcasts the result with accelerate, which starts the process group Trainer later reuses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return fn()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    box = [None]
    failure = None
    # cpu=True on machines without CUDA, as compress.training.loop's TrainingArguments(use_cpu=...) asks: only
    # then does accelerate start a gloo group for CPU ranks. The Trainer later joins the same process group.
    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        try:
            box = [("ok", fn())]
        except Exception as e:  # the other ranks must not wait forever for a result
            failure = e
            box = [("error", f"{type(e).__name__}: {e}")]
    broadcast_object_list(box, from_process=0)
    if failure is not None:
        raise failure
    kind, value = box[0]
    if kind == "error":
        raise CompressError(f"rank 0 failed: {value}")
    return value


def flops_table_for(config, deploy: DeployConfig) -> LatencyTable:
    from compress.core.structure import geometry
    from compress.speed.table import flops_table, model_key

    return flops_table(geometry(config), deploy.batch, deploy.seq, model_key(config))


def speed_info(plan: SpeedPlan, kept: list[dict], hidden=None) -> dict:
    """compression.json's `speed` section: target, table, prediction for the structure that was kept.
    `hidden`: the kept hidden dims (a list, or their count; None: all)."""
    from compress.speed.table import hidden_count

    t = plan.table
    predicted = t.predict_kept(kept, hidden)
    info = {
        "target": {
            "kind": plan.target.kind,
            "speedup": plan.target.speedup,
            "latency_ms": plan.target.latency_ms,
            "flops_fraction": plan.target.flops,
        },
        "budget": round(plan.budget, 4),
        "unit": t.unit,
        "predicted": round(predicted, 4),
        "dense": round(t.dense_ms, 4),
        "baseline_fp32": round(t.baseline_ms, 4),
        "predicted_speedup": round(t.baseline_ms / predicted, 4) if predicted > 0 else None,
        "table": {
            "key": t.key,
            "fixed": round(t.fixed_ms, 4),
            "cache_file": plan.cache_file,
            "from_cache": plan.from_cache,
        },
    }
    if hidden is not None:
        info["hidden_kept"] = hidden_count(hidden)
    if t.hidden_rows:
        info["table"]["hidden_sizes"] = t.hidden_sizes
    if plan.calibration:  # calibrate_budget records at least one round
        info["calibration"] = plan.calibration
        last = plan.calibration["rounds"][-1]
        # the table's prediction corrected by what the last calibration graph measured against it
        info["expected_speedup"] = round(
            info["predicted_speedup"] * last["measured_speedup"] / last["predicted_speedup"], 4
        )
    if t.unit == "ms" and t.dense_ms > 0:
        # Additivity check: the parts' sum for the dense structure vs the dense graph timed with them.
        # A table built on a busy machine drifts here first, and its predictions with it.
        err = t.predicted_dense_ms / t.dense_ms - 1
        info["table"]["parts_vs_dense"] = round(err, 4)
        if abs(err) > TABLE_TOLERANCE:
            info["warnings"] = [
                f"the latency table's parts add up to {abs(err):.0%} {'more' if err > 0 else 'less'} than the "
                f"dense graph timed with them, so its predictions are off by about as much; rebuild it on an "
                f"idle machine: compress latency-table MODEL --rebuild (same --deploy flags)"
            ]
    if plan.shape_from_data:
        info["shape_from_data"] = plan.shape_from_data
    if plan.deploy is not None:
        info["deploy"] = {
            "precision": plan.deploy.precision,
            "shape": plan.deploy.shape,
            "threads": plan.deploy.threads,
            "provider": plan.deploy.provider,
        }
    return info


def measure_speedup(
    model, kept: list[dict], deploy: DeployConfig, repeats: int = 9, progress: bool = False, hidden=None
) -> dict:
    """Measured speedup of the shrunk deploy graph of `model` (an in-memory, baked classifier) against
    the same export unshrunk (the dense graph's cost: zeros do not make dense kernels faster), both
    built and timed the way the latency table was, interleaved, in the same rounds. `hidden`: the kept
    hidden dims (a list; a count keeps the first ones, which costs the same); the pruned graph is then
    cut to them (compress.core.hidden.slice_hidden) before export, the dense one is not."""
    import copy
    import tempfile

    from compress.speed.deploy_graph import DeployGraphs, time_graphs

    d = copy.copy(deploy)
    d.repeats = repeats
    with tempfile.TemporaryDirectory(prefix="compress-speed-") as tmp:
        # An embedding model (an encoder with its pooling) is timed as its encoder: the pooling is a
        # mean over tokens, the same few ops in the dense and the pruned graph.
        encoder = getattr(model, "encoder", None) if not hasattr(model, "save_pretrained") else None
        graphs = DeployGraphs("in-memory", tmp, d, classifier=copy.deepcopy(encoder or model).cpu())
        if isinstance(hidden, int):
            hidden = list(range(hidden))
        paths = {"dense": graphs.build(None, "dense"), "pruned": graphs.build(kept, "pruned", hidden=hidden)}
        if d.precision != "fp32":
            paths["dense-fp32"] = graphs.build(None, "dense-fp32", precision="fp32")
        res = time_graphs(paths, d, reference="dense-fp32" if "dense-fp32" in paths else "dense")
    med = {k: v["ms"] for k, v in res.items()}
    base = med.get("dense-fp32", med["dense"])
    return {
        "baseline_fp32_ms": round(base, 4),
        "dense_ms": round(med["dense"], 4),
        "pruned_ms": round(med["pruned"], 4),
        "speedup": round(base / med["pruned"], 4),
        "speedup_vs_dense_same_precision": round(med["dense"] / med["pruned"], 4),
        "runs": res["pruned"]["runs"],
        "shape": d.shape,
        "precision": d.precision,
        "statistic": d.statistic,
        **({"hidden_kept": len(hidden)} if hidden is not None else {}),
        "note": "shrunk deploy graph vs the same export unshrunk (dense cost: zeros do not speed up dense kernels), "
        "interleaved rounds; speedup is against dense fp32",
    }


def budget_for(
    model, method_name: str, plan, ffn_block: int, importance: str = "fisher", hidden_step: int | None = None
):
    """What Pruner(budget=...) takes: groups -> StructureBudget for this model, method and plan. With a
    "hidden" group among the groups the budget chooses the kept hidden dims too (multiples of
    `hidden_step`, default compress.speed.table.hidden_multiple)."""
    from compress.core.structure import geometry

    geo = geometry(model.config)
    return lambda groups: StructureBudget(groups, method_name, geo, plan, ffn_block, importance, hidden_step)
