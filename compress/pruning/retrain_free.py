"""Retrain-free structured pruning (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for
Transformers"): no SGD, minutes on a CPU.

1. Fisher information of the head masks and FFN-neuron masks, from per-example mask gradients on a
   small sample (default 2,048 examples) labelled by the model's own predictions (or the data's).
2. Mask search under a cost budget: with heads ranked globally by Fisher importance, every possible
   number of kept heads is tried; the rest of the budget goes to the best FFN neurons; the
   combination that keeps the most importance wins. The cost model is duck-typed
   (`predict_ms(heads_per_layer, ffn_per_layer)`, `dense_ms`), so a FLOPs table and a measured
   latency table both work (the paper's latency-aware search).
3. Mask rearrangement: per layer, the block-diagonal Fisher (full Fisher among that layer's heads, and
   among its neurons) captures interactions the diagonal ignores; greedy swaps of a pruned and a kept
   unit that lower (1-m)^T F (1-m) keep each layer's count (so the cost) unchanged.
4. Mask tuning: layer by layer, the kept units' mask values are solved by linear least squares so
   that each sub-layer's pre-LayerNorm output (residual + projection) of the pruned model reproduces
   the dense model's on the sample. The tuned values are folded into the O-projection columns / FFN
   W2 columns, dead structure is zeroed: the result is a plain checkpoint, other weights untouched.

Masks act through forward pre-hooks on the O projection and FFN W2 inputs (per-head column groups and
per-neuron columns): no transformers code is patched. The hooks exist only while this module works.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.core.config import RetrainFreeConfig
from compress.core.errors import InvalidConfigError
from compress.core.structure import encoder_layers, geometry, layer_linears, spec_for


# ------------------------------------------------------------------ cost model
def dense_cost(cost) -> float:
    """The dense structure's cost under `cost` (compress.speed.LatencyTable, or any object with predict_ms and
    dense_ms): predicted from the table itself, so fractions compare like with like."""
    d = getattr(cost, "predicted_dense_ms", None)
    if d is None:
        d = cost.dense_ms
    return float(d() if callable(d) else d)


# ------------------------------------------------------------------ mask hooks
class StructureMasks:
    """Head and FFN-neuron mask values applied through forward pre-hooks on each layer's O projection
    (input columns of head h: [h*d, (h+1)*d)) and FFN W2 (input column j = neuron j).

    `head` is [L, H] and `ffn` is [L, N]; either may be given per example as [B, L, H] / [B, L, N] (used
    for per-example Fisher gradients). `capture` collects the (unmasked) inputs of those projections.
    """

    def __init__(self, model: nn.Module):
        geo = geometry(model.config)
        self.geo = geo
        self.lin = layer_linears(model)
        self.head = torch.ones(geo.num_layers, geo.num_heads)
        self.ffn = torch.ones(geo.num_layers, geo.intermediate_size)
        self.captured: dict[tuple[int, str], torch.Tensor] = {}
        self.capture_layers: set[tuple[int, str]] = set()
        self._handles = []

    def _hook(self, i: int, kind: str):
        d = self.geo.head_size

        def pre(module, args):
            x = args[0]
            if (i, kind) in self.capture_layers:
                self.captured[(i, kind)] = x.detach()
            m = self.head if kind == "attn" else self.ffn
            m = m[:, i] if m.dim() == 3 else m[i]
            if kind == "attn":
                m = m.repeat_interleave(d, dim=-1)
            m = m.to(x.dtype)
            return (x * (m[:, None, :] if m.dim() == 2 else m),) + tuple(args[1:])

        return pre

    def __enter__(self):
        for i, lin in enumerate(self.lin):
            self._handles.append(lin["attn_out"].register_forward_pre_hook(self._hook(i, "attn")))
            self._handles.append(lin["ffn_out"].register_forward_pre_hook(self._hook(i, "ffn")))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()


# Pre-LayerNorm sums (residual + sub-layer output) are the reconstruction targets of mask tuning.
# MERGE: these two paths belong in structure.EncoderSpec once the layout refactor has landed.
_NORMS = {"distilbert": ("sa_layer_norm", "output_layer_norm")}
_BERT_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


def _norm_modules(model) -> list[dict[str, nn.Module]]:
    spec_for(model.config)  # unsupported families fail here with the usual message
    attn_path, ffn_path = _NORMS.get(model.config.model_type, _BERT_NORMS)
    return [
        {"attn": layer.get_submodule(attn_path), "ffn": layer.get_submodule(ffn_path)}
        for layer in encoder_layers(model)
    ]


class _Stop(Exception):
    """Raised by a capture hook once the needed activation is in hand: the rest of the forward is waste."""


# ------------------------------------------------------------------ data
def _batches(dataset, tokenizer, model, n: int, batch_size: int, seed: int):
    """Tokenized batches of `n` examples drawn at random (deterministic for a seed), sorted by length."""
    import inspect

    from transformers import DataCollatorWithPadding

    takes = set(inspect.signature(model.forward).parameters)
    ds = dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))
    # Length-sorted batches: far less padding; per-example gradients and token sums do not depend on batching.
    lengths = [len(x) for x in ds["input_ids"]]
    ds = ds.select(sorted(range(len(ds)), key=lengths.__getitem__))
    cols = [
        c
        for c in ("input_ids", "attention_mask", "token_type_ids", "labels")
        if c in ds.column_names and (c in takes or c == "labels")
    ]
    ds = ds.select_columns(cols)
    collate = DataCollatorWithPadding(tokenizer)
    out = []
    for s in range(0, len(ds), batch_size):
        b = collate([ds[j] for j in range(s, min(s + batch_size, len(ds)))])
        out.append(dict(b))
    return out


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


# ------------------------------------------------------------------ 1. Fisher information
def fisher_gradients(
    model, batches, labels: str = "model", output: str = "logits", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients of the loss w.r.t. the head masks [n, L, H] and FFN masks [n, L, N] at m = 1.

    One backward per batch: each example gets its own copy of the masks, so the gradient w.r.t. that
    copy is the example's own gradient (the empirical Fisher needs per-example gradients, not their sum).

    `output="logits"`: the classifier's cross-entropy (at its own predictions, or the data's labels).
    Any other output (an embedding) has no labels, and any loss toward the dense model's own output has a
    zero gradient at m = 1; its Fisher is that of a Gaussian likelihood on the output, diag(J^T J) with J
    the output's Jacobian in the masks, estimated with one random direction r ~ N(0, I) per example:
    E_r[(d(r . e) / dm)^2] = diag(J^T J).
    """
    g = torch.Generator().manual_seed(seed)
    geo = geometry(model.config)
    model.eval()
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only mask gradients are needed
    heads, ffns = [], []
    try:
        with StructureMasks(model) as sm:
            for b in batches:
                n = b["input_ids"].shape[0]
                sm.head = torch.ones(n, geo.num_layers, geo.num_heads, requires_grad=True)
                sm.ffn = torch.ones(n, geo.num_layers, geo.intermediate_size, requires_grad=True)
                out = model(**_inputs(b))[output]
                if output == "logits":
                    y = out.argmax(-1) if labels == "model" or "labels" not in b else b["labels"]
                    loss = F.cross_entropy(out, y, reduction="sum")
                else:
                    loss = (out * torch.randn(out.shape, generator=g)).sum()
                gh, gf = torch.autograd.grad(loss, [sm.head, sm.ffn])
                heads.append(gh)
                ffns.append(gf)
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
    return torch.cat(heads), torch.cat(ffns)


# ------------------------------------------------------------------ 2. search under a budget
@dataclass
class SearchResult:
    head_mask: torch.Tensor  # [L, H] of 0/1
    ffn_mask: torch.Tensor  # [L, N] of 0/1
    cost: float
    budget: float
    importance_kept: float


def search(head_imp: torch.Tensor, ffn_imp: torch.Tensor, cost, budget: float) -> SearchResult:
    """Keep the most total Fisher importance whose predicted cost fits `budget`.

    For every number of kept heads nh (the nh most important, globally), the largest number of the most
    important FFN neurons that still fits is found by bisection on the cost model (cost grows with each
    neuron added); the best (nh, nf) by importance kept wins. Works for FLOPs (uniform unit costs, the
    paper's FLOPs search) and for per-layer latency tables (its latency-aware search).
    """
    L, H = head_imp.shape
    N = ffn_imp.shape[1]
    h_order = torch.argsort(head_imp.flatten(), descending=True, stable=True)
    f_order = torch.argsort(ffn_imp.flatten(), descending=True, stable=True)
    h_cum = torch.cat([torch.zeros(1, dtype=torch.float64), head_imp.flatten()[h_order].double().cumsum(0)])
    f_cum = torch.cat([torch.zeros(1, dtype=torch.float64), ffn_imp.flatten()[f_order].double().cumsum(0)])
    h_layer, f_layer = h_order // H, f_order // N

    def counts(layer_of, k, n_layers):
        return torch.bincount(layer_of[:k], minlength=n_layers).tolist()

    best = None
    for nh in range(L * H + 1):
        hc = counts(h_layer, nh, L)
        if cost.predict_ms(hc, [0] * L) > budget:
            continue
        lo, hi = 0, L * N  # largest nf with cost <= budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost.predict_ms(hc, counts(f_layer, mid, L)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        score = float(h_cum[nh] + f_cum[lo])
        if best is None or score > best[0]:
            best = (score, nh, lo)
    if best is None:
        raise InvalidConfigError(
            f"no structure fits the budget ({budget:.3g} of a dense {dense_cost(cost):.3g}); "
            "ask for a smaller speedup / larger FLOPs fraction"
        )
    score, nh, nf = best
    hm = torch.zeros(L * H)
    hm[h_order[:nh]] = 1
    fm = torch.zeros(L * N)
    fm[f_order[:nf]] = 1
    # With unequal per-layer costs (latency tables) the next neuron in global order may not fit while a
    # cheaper layer's still does: spend what is left on the remaining neurons in importance order.
    hc, fc = counts(h_layer, nh, L), counts(f_layer, nf, L)
    for u in f_order[nf:].tolist():
        fc[u // N] += 1
        if cost.predict_ms(hc, fc) <= budget:
            fm[u] = 1
            score += float(ffn_imp.flatten()[u])
        else:
            fc[u // N] -= 1
    hm, fm = hm.view(L, H), fm.view(L, N)
    c = cost.predict_ms(hm.sum(1).int().tolist(), fm.sum(1).int().tolist())
    return SearchResult(hm, fm, float(c), float(budget), score)


# ------------------------------------------------------------------ 3. rearrangement
def rearrange(mask: torch.Tensor, grads: torch.Tensor, max_swaps: int) -> tuple[torch.Tensor, float, float]:
    """Greedy swaps within one layer that lower the block-diagonal Fisher loss (1-m)^T F (1-m).

    mask: [U] 0/1 for one layer's units; grads: [n, U] per-example gradients (F = G^T G / n). Swapping
    pruned unit i for kept unit j changes the loss by
        -2 (Fz)_i + F_ii + 2 (Fz)_j + F_jj - 2 F_ij     (z = 1 - m),
    evaluated for all pairs at once; the best improving swap is taken until none is left. The count of
    kept units, hence the layer's cost, never changes. Returns (mask, loss before, loss after).
    """
    G = grads.double()
    Fm = G.T @ G / G.shape[0]
    z = 1.0 - mask.double()
    before = float(z @ Fm @ z)
    diag = Fm.diagonal()
    for _ in range(max_swaps):
        pruned = torch.nonzero(z > 0.5).flatten()
        kept = torch.nonzero(z < 0.5).flatten()
        if len(pruned) == 0 or len(kept) == 0:
            break
        Fz = Fm @ z
        a = -2 * Fz[pruned] + diag[pruned]
        b = 2 * Fz[kept] + diag[kept]
        delta = a[:, None] + b[None, :] - 2 * Fm[pruned][:, kept]
        k = int(torch.argmin(delta))
        if float(delta.flatten()[k]) >= -1e-12 * max(before, 1e-30):
            break
        i, j = pruned[k // len(kept)], kept[k % len(kept)]
        z[i], z[j] = 0.0, 1.0
    after = float(z @ Fm @ z)
    return (1.0 - z).to(mask.dtype), before, after


# ------------------------------------------------------------------ 4. layer-wise mask tuning
@torch.no_grad()
def _dense_targets(model, batches, norms) -> list[dict]:
    """The dense model's pre-LayerNorm sums at every sub-layer, valid tokens only, per batch."""
    out = []
    for b in batches:
        valid = b["attention_mask"].bool()
        got = {}
        hooks = [
            m.register_forward_pre_hook(lambda mod, args, key=(i, k): got.__setitem__(key, args[0][valid].clone()))
            for i, layer in enumerate(norms)
            for k, m in layer.items()
        ]
        try:
            model(**_inputs(b))
        finally:
            for h in hooks:
                h.remove()
        out.append(got)
    return out


@torch.no_grad()
def _normal_equations(
    model, sm: StructureMasks, batches, targets, norm: nn.Module, i: int, kind: str, kept: torch.Tensor
):
    """A^T A, A^T b and b^T b for one sub-layer: columns of A are the kept units' contributions to the
    pre-LN sum, b is the dense target minus everything in the pruned model's sum that no mask scales."""
    lin = sm.lin[i]
    d = sm.geo.head_size
    k = len(kept)
    AtA = torch.zeros(k, k, dtype=torch.float64)
    Atb = torch.zeros(k, dtype=torch.float64)
    btb = 0.0
    got = {}

    def grab(mod, args):
        got["z"] = args[0]
        raise _Stop

    handle = norm.register_forward_pre_hook(grab)
    sm.capture_layers = {(i, kind)}
    try:
        for b, tgt in zip(batches, targets):
            try:
                model(**_inputs(b))
            except _Stop:
                pass
            valid = b["attention_mask"].bool()
            z = got["z"][valid].double()  # [T, hidden], current masks applied
            x = sm.captured[(i, kind)][valid].double()  # unmasked input of the projection
            if kind == "attn":
                W = lin["attn_out"].weight.double()  # [hidden, H*d]
                U = torch.stack(
                    [x[:, h * d : (h + 1) * d] @ W[:, h * d : (h + 1) * d].T for h in kept.tolist()], 1
                )  # [T, k, hidden]
                m = sm.head[i, kept].double()
                rest = z - torch.einsum("tkh,k->th", U, m)
                r = tgt[(i, kind)].double() - rest
                AtA += torch.einsum("tkh,tlh->kl", U, U)
                Atb += torch.einsum("tkh,th->k", U, r)
            else:
                W = lin["ffn_out"].weight.double()[:, kept]  # [hidden, k]
                X = x[:, kept]  # [T, k]
                m = sm.ffn[i, kept].double()
                rest = z - (X * m) @ W.T
                r = tgt[(i, kind)].double() - rest
                AtA += (X.T @ X) * (W.T @ W)
                Atb += (X * (r @ W)).sum(0)
            btb += float((r * r).sum())
    finally:
        handle.remove()
        sm.capture_layers = set()
        sm.captured.clear()
    return AtA, Atb, btb


def _residual(AtA, Atb, btb, m) -> float:
    return float(m @ AtA @ m - 2 * m @ Atb + btb)


def _solve(AtA, Atb, btb, m0, cfg: RetrainFreeConfig):
    """min ||A m - b||^2 + lam ||m - m0||^2 by least squares on the normal equations. The ridge pulls toward
    the untuned masks, so the tuned error is never above the untuned one; lam starts at `damping` x the mean
    diagonal of A^T A and grows tenfold while a value leaves [-max_mask_value, max_mask_value] (a badly
    conditioned sub-layer, e.g. many correlated FFN dims on a 512-example sample)."""
    eye = torch.eye(len(m0), dtype=AtA.dtype)
    scale = float(AtA.diagonal().mean()) + 1e-12
    lam = cfg.damping * scale
    for _ in range(8):
        sol = torch.linalg.lstsq(AtA + lam * eye, (Atb + lam * m0).unsqueeze(1)).solution.squeeze(1)
        if bool(torch.isfinite(sol).all()) and float(sol.abs().max()) <= cfg.max_mask_value:
            return sol, _residual(AtA, Atb, btb, sol), lam / scale
        lam *= 10
    return None, float("inf"), lam / scale


@torch.no_grad()
def tune_masks(model, sm: StructureMasks, batches, cfg: RetrainFreeConfig) -> list[dict]:
    """Solve each sub-layer's kept mask values in order (layer 0 attention, layer 0 FFN, layer 1 ...),
    each against the dense model's pre-LN sum given the already-tuned pruned model's own input.
    Returns the reconstruction error (sum of squares over the sample) before and after, per sub-layer."""
    norms = _norm_modules(model)
    saved_head, saved_ffn = sm.head.clone(), sm.ffn.clone()
    sm.head, sm.ffn = torch.ones_like(saved_head), torch.ones_like(saved_ffn)
    targets = _dense_targets(model, batches, norms)
    sm.head, sm.ffn = saved_head, saved_ffn
    report = []
    for i in range(sm.geo.num_layers):
        for kind in ("attn", "ffn"):
            masks = sm.head if kind == "attn" else sm.ffn
            kept = torch.nonzero(masks[i] != 0).flatten()
            if len(kept) == 0:
                report.append({"layer": i, "sublayer": kind, "kept": 0})
                continue
            AtA, Atb, btb = _normal_equations(model, sm, batches, targets, norms[i][kind], i, kind, kept)
            m0 = masks[i, kept].double()
            before = _residual(AtA, Atb, btb, m0)
            sol, after, damp = _solve(AtA, Atb, btb, m0, cfg)
            ok = sol is not None and after < before
            if ok:
                masks[i, kept] = sol.to(masks.dtype)
            report.append(
                {
                    "layer": i,
                    "sublayer": kind,
                    "kept": len(kept),
                    "error_before": before,
                    "error_after": after if ok else before,
                    "applied": ok,
                    "damping": damp,
                }
            )
    return report


@torch.no_grad()
def fold_masks(model, head_mask: torch.Tensor, ffn_mask: torch.Tensor) -> None:
    """Scale the O-projection columns of each head and the W2 column of each neuron by its mask value
    (0 for pruned units), then zero the dead structure everywhere (sparsity.fold_dead_structure)."""
    from compress.core.sparsity import fold_dead_structure

    d = geometry(model.config).head_size
    for i, lin in enumerate(layer_linears(model)):
        o = lin["attn_out"].weight
        o.mul_(head_mask[i].repeat_interleave(d).to(o.dtype)[None, :])
        w2 = lin["ffn_out"].weight
        w2.mul_(ffn_mask[i].to(w2.dtype)[None, :])
    fold_dead_structure(model)


# ------------------------------------------------------------------ the whole method
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # progress of a multi-minute job, visible at once in a redirected log


def retrain_free(
    model,
    dataset,
    tokenizer,
    cost,
    budget: float,
    cfg: RetrainFreeConfig | None = None,
    seed: int = 42,
    log=_log,
    output: str = "logits",
) -> dict:
    """Prune `model` in place to fit `budget` under `cost`; returns what was done (for compression.json).
    `output`: the model output the Fisher information is taken of (fisher_gradients)."""
    cfg = cfg or RetrainFreeConfig()
    cfg.validate()
    geo = geometry(model.config)
    model.eval()
    t0 = time.time()
    fb = _batches(dataset, tokenizer, model, cfg.fisher_samples, cfg.batch_size, seed)
    gh, gf = fisher_gradients(model, fb, cfg.fisher_labels, output, seed)
    t_fisher = time.time() - t0
    log(f"retrain-free: Fisher information from {gh.shape[0]} examples in {t_fisher:.0f} s")

    head_imp, ffn_imp = (gh**2).mean(0), (gf**2).mean(0)
    res = search(head_imp, ffn_imp, cost, budget)
    log(
        f"retrain-free: search kept {int(res.head_mask.sum())}/{geo.num_layers * geo.num_heads} heads, "
        f"{int(res.ffn_mask.sum())}/{geo.num_layers * geo.intermediate_size} FFN dims; "
        f"cost {res.cost / dense_cost(cost):.3f} of dense (budget {budget / dense_cost(cost):.3f})"
    )

    t1 = time.time()
    rearr = {"heads": [0.0, 0.0], "ffn": [0.0, 0.0]}
    hm, fm = res.head_mask.clone(), res.ffn_mask.clone()
    if cfg.rearrange_swaps:
        for i in range(geo.num_layers):
            for key, m, g in (("heads", hm, gh), ("ffn", fm, gf)):
                m[i], b, a = rearrange(m[i], g[:, i], cfg.rearrange_swaps)
                rearr[key][0] += b
                rearr[key][1] += a
    t_rearrange = time.time() - t1

    t2 = time.time()
    tb = _batches(dataset, tokenizer, model, cfg.tune_samples, cfg.batch_size, seed + 1)
    with StructureMasks(model) as sm:
        sm.head, sm.ffn = hm.clone(), fm.clone()
        tuning = tune_masks(model, sm, tb, cfg)
        tuned_head, tuned_ffn = sm.head.clone(), sm.ffn.clone()
    fold_masks(model, tuned_head, tuned_ffn)
    t_tune = time.time() - t2
    errs = [r for r in tuning if r.get("kept")]
    tot_b = sum(r["error_before"] for r in errs)
    tot_a = sum(r["error_after"] for r in errs)
    log(
        f"retrain-free: mask tuning on {sum(b['input_ids'].shape[0] for b in tb)} examples in {t_tune:.0f} s; "
        f"layer reconstruction error {tot_b:.4g} -> {tot_a:.4g}"
    )
    return {
        "budget_fraction": budget / dense_cost(cost),
        "predicted_cost_fraction": cost.predict_ms(hm.sum(1).int().tolist(), fm.sum(1).int().tolist())
        / dense_cost(cost),
        "cost_model": type(cost).__name__,
        "fisher_examples": int(gh.shape[0]),
        "tune_examples": int(sum(b["input_ids"].shape[0] for b in tb)),
        "importance_kept": res.importance_kept,
        "rearrangement_fisher_loss": {k: {"before": v[0], "after": v[1]} for k, v in rearr.items()},
        "tuning": tuning,
        "seconds": {
            "fisher": round(t_fisher, 2),
            "rearrange": round(t_rearrange, 2),
            "tune": round(t_tune, 2),
            "total": round(time.time() - t0, 2),
        },
    }
