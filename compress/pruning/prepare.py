"""What each method does between loading the models and training: the `prepare` hook of its Method.

A hook takes the PruneRun the driver has built (models, data, tokenizer, speed plan) and adjusts it
in place: fixed masks, frozen weights, the training config, entries for compression.json. The driver
then runs the same steps for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from compress.core.config import PruneConfig, TrainConfig
from compress.core.sparsity import sparsity_report
from compress.core.structure import geometry, layer_linears

SMP_NOTE = (
    "Static Model Pruning here trains the mask scores plus a fresh classifier head only; the encoder "
    "weights are the unchanged pre-trained ones (the authors' head-free mode reads label words from an "
    "MLM head, which this model does not have)."
)


@dataclass
class PruneRun:
    """The state one `compress prune` shares between its steps."""

    cfg: PruneConfig
    method: Any  # compress.pruning.methods.Method
    model_name: str
    train: TrainConfig  # as the method adjusts it (SMP's head lr, retrain-free's fill steps)
    tokenizer: Any
    data: Any  # compress.training.data.TaskData
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    speed_plan: Any  # compress.speed.plan.SpeedPlan, or None without a speed target
    source_info: dict | None = None  # hybrid-filled: the compression.json of the run it starts from
    template: str | None = None  # head-free SMP: the prompt the label words are read in
    fixed_masks: dict[str, torch.Tensor] | None = None  # for Binarizer.FIXED: the structure held
    trains: bool = True  # False: no SGD at all (retrain-free without fill steps)
    budget_during_training: bool = True  # a speed target steers the masks while training
    record: dict = field(default_factory=dict)  # extra compression.json entries
    task: Any = None  # compress.training.tasks.TaskType


def nothing(run: PruneRun) -> None:
    """Methods that learn or rank their masks while training need no preparation."""


def frozen_encoder(run: PruneRun) -> None:
    """Static Model Pruning: the pre-trained encoder stays frozen and only mask scores learn, with a
    fresh classifier head, or (head-free, --label-words) reading label words from the MLM head."""
    cfg = run.cfg
    if cfg.label_words:
        for p in run.student.parameters():  # head-free: only the mask scores learn
            p.requires_grad_(False)
        run.record.update(head="mlm-label-words", label_words=list(cfg.label_words), template=run.template)
        return
    # The pre-trained encoder (embeddings included) stays frozen; only the head trains.
    for p in run.student.base_model.parameters():
        p.requires_grad_(False)
    pooler = getattr(run.student.base_model, "pooler", None)
    for p in pooler.parameters() if pooler is not None else []:
        p.requires_grad_(True)
    # Only the fresh head trains with the frozen encoder; at a fine-tuning lr it stays near its random
    # init for a whole short run (SMP-S at 50% stayed at the majority class with lr 3e-5).
    run.train = replace(run.train, lr=cfg.head_lr)
    run.record["smp_note"] = SMP_NOTE


def filled(run: PruneRun) -> None:
    """Hybrid Filled: hold the heads / FFN dims of the source run and re-initialise the zeroed weights
    inside them, so fine-tuning can use them again."""
    kept = run.source_info["layers"] if run.source_info else sparsity_report(run.student)["layers"]
    run.fixed_masks = fixed_struct_masks(run.student, kept)
    fill_heads(run.student, kept, run.train.seed)


def retrain_free(run: PruneRun) -> None:
    """Kwon et al. 2022: choose and tune the structure after training, with no SGD; --fill-steps then
    distils with that structure held fixed (from the teacher, else the dense model it started from)."""
    from compress.pruning.retrain_free import retrain_free as select

    cfg = run.cfg
    task = run.task.name if run.task is not None else "sequence-classification"
    # The Fisher information is that of the classifier's cross-entropy, or of the embedding under a
    # Gaussian likelihood (compress.pruning.retrain_free.fisher_gradients); span and per-token heads have
    # neither here.
    output = {"sequence-classification": "logits", "embedding": "sentence_embedding"}.get(task)
    if output is None:
        from compress.core.errors import InvalidConfigError

        raise InvalidConfigError(
            f"--method retrain-free prunes sentence classifiers and embedding models, not {task}; use --method "
            "struct with the same --target-speedup / --target-flops"
        )
    if cfg.fill_steps and run.teacher is None:
        import copy

        run.teacher = copy.deepcopy(run.student).eval()
    plan = run.speed_plan
    selection = select(
        run.student,
        run.data.train,
        run.tokenizer,
        plan.table,
        plan.budget,
        cfg.retrain_free,
        seed=cfg.train.seed,
        output=output,
    )
    run.fixed_masks = fixed_struct_masks(run.student, sparsity_report(run.student)["layers"])
    run.train = replace(run.train, max_steps=cfg.fill_steps)
    run.trains = bool(cfg.fill_steps)
    run.budget_during_training = False  # the structure is chosen already: held fixed
    run.record["retrain_free"] = selection


# ------------------------------------------------------------------ helpers
@torch.no_grad()
def fill_heads(model, kept: list[dict], seed: int) -> None:
    """Hybrid Filled: re-initialise the zeroed weights inside surviving heads / FFN dims uniformly at
    random, with the standard deviation of the model's initialiser (U(-a, a), a = std * sqrt(3))."""
    geo = geometry(model.config)
    d = geo.head_size
    a = getattr(model.config, "initializer_range", 0.02) * math.sqrt(3)
    g = torch.Generator().manual_seed(seed)

    def fill(w):
        zero = w == 0
        w[zero] = (torch.rand(int(zero.sum()), generator=g) * 2 - 1) * a

    for lin, k in zip(layer_linears(model), kept):
        for h in k["heads_kept"]:
            sl = slice(h * d, (h + 1) * d)
            for role in ("query", "key", "value"):
                fill(lin[role].weight[sl])
            fill(lin["attn_out"].weight[:, sl])
        idx = torch.tensor(k["ffn_dims_kept"], dtype=torch.long)
        if len(idx):
            w1 = lin["ffn_in"].weight[idx]
            fill(w1)
            lin["ffn_in"].weight[idx] = w1
            w2 = lin["ffn_out"].weight[:, idx]
            fill(w2)
            lin["ffn_out"].weight[:, idx] = w2


def fixed_struct_masks(model, kept: list[dict]) -> dict[str, torch.Tensor]:
    """Head and FFN-dim masks (1 kept, 0 removed) per layer, named like the struct groups."""
    geo = geometry(model.config)
    out = {}
    for i, k in enumerate(kept):
        h = torch.zeros(geo.num_heads)
        h[k["heads_kept"]] = 1
        f = torch.zeros(geo.intermediate_size)
        f[k["ffn_dims_kept"]] = 1
        out[f"layer.{i}.heads"], out[f"layer.{i}.ffn_dim"] = h, f
    return out
