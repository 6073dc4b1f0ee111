"""Training on the Hugging Face Trainer: the same code runs on one CPU, one GPU or under
torchrun / accelerate launch (DDP) unchanged.

The Trainer sees a small wrapper module holding the student, the Pruner (mask scores) and the
loss (task CE, optional logit distillation, regularisation). The teacher is kept out of the module
tree so DDP neither wraps nor checkpoints it.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compress.core.config import DistillConfig, TrainConfig
from compress.core.errors import InvalidConfigError


class StudentWithLoss(nn.Module):
    """The student, its mask scores and its task's loss (task term, optional distillation, regularisation)."""

    def __init__(
        self, student: nn.Module, pruner: nn.Module | None, teacher: nn.Module | None, distill: DistillConfig, task=None
    ):
        super().__init__()
        from compress.training.tasks import TASK_TYPES

        self.student = student
        self.pruner = pruner
        self._teacher = (teacher,)  # a tuple hides it from the module tree (no DDP, no checkpoint)
        self.distill = distill
        self.task = task or TASK_TYPES["sequence-classification"]
        self._student_args = set(inspect.signature(student.forward).parameters)
        self._teacher_args = set(inspect.signature(teacher.forward).parameters) if teacher is not None else set()
        self.layer_map = None
        if distill.layer_weight and teacher is not None:
            self.layer_map = _identity_map(student.config.hidden_size, teacher.config.hidden_size)

    @property
    def teacher(self):
        return self._teacher[0]

    # The Trainer keeps the dataset columns this signature names: every task's label columns are here.
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        teacher_logits=None,
        start_positions=None,
        end_positions=None,
    ):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._student_args:
            inputs["token_type_ids"] = token_type_ids
        if self.pruner is not None:
            self.pruner.invalidate()  # scores changed since the last step: recompute masks once
        layers = self.layer_map is not None and self.training
        out = self.student(**inputs, **({"output_hidden_states": True} if layers else {}))
        if not isinstance(out, Mapping):  # the label-word wrapper returns a plain namespace
            out = {name: getattr(out, name) for name in self.task.outputs}
        given = {"labels": labels, "start_positions": start_positions, "end_positions": end_positions}
        targets = {k: given[k] for k in self.task.label_columns if given[k] is not None}
        loss = None
        if len(targets) == len(self.task.label_columns) and (targets or self.teacher is not None):
            teacher_out = None
            if teacher_logits is not None and not layers:
                teacher_out = {"logits": teacher_logits}
            elif self.teacher is not None:
                teacher_out = self._teacher_forward(inputs, hidden_states=layers)
            loss = self.task.loss(out, {**inputs, **targets}, teacher_out, self.distill)
            if layers:
                loss = loss + self.distill.layer_weight * self._layer_loss(out, teacher_out, attention_mask)
            if self.pruner is not None and self.training:
                loss = loss + self.pruner.regularization()
        return {"loss": loss, **{name: out[name] for name in self.task.outputs}}

    @torch.no_grad()
    def _teacher_forward(self, inputs: dict, hidden_states: bool = False):
        if "token_type_ids" not in self._teacher_args:
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        return self.teacher(**inputs, **({"output_hidden_states": True} if hidden_states else {}))

    def _layer_loss(self, out, teacher_out, attention_mask) -> torch.Tensor:
        """Mean over the student's layers of the token-averaged MSE between the mapped student layer output
        and the teacher's layer at the same relative depth (CoFi's layer distillation with a fixed map;
        the depths are equal when the student is the teacher pruned)."""
        student, teacher = out["hidden_states"][1:], teacher_out["hidden_states"][1:]
        tokens = attention_mask.unsqueeze(-1).to(student[0].dtype)
        total = 0.0
        for i, s in enumerate(student):
            t = teacher[round((i + 1) * len(teacher) / len(student)) - 1]
            err = (self.layer_map(s) - t).pow(2).mean(-1, keepdim=True)
            total = total + (err * tokens).sum() / tokens.sum().clamp_min(1)
        return total / len(student)


def _identity_map(student_size: int, teacher_size: int) -> nn.Linear:
    """The learned student -> teacher map of layer distillation, starting as the identity (a pruned
    student's stream is the teacher's, minus what was cut)."""
    layer = nn.Linear(student_size, teacher_size)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(teacher_size, student_size))
        layer.bias.zero_()
    return layer


@torch.no_grad()
def add_teacher_logits(teacher: nn.Module, dataset, tokenizer, batch_size: int = 128, progress: bool = True):
    """Run the (frozen, eval-mode) teacher once over the training set and store its logits as a column.

    The teacher is deterministic in eval mode, so this gives the same targets as running it inside
    every step, at a fraction of the cost: batches are sorted by length (little padding), there is no
    autograd, and later epochs reuse the logits. This is what keeps distillation's step overhead low.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    teacher.eval()
    takes = set(inspect.signature(teacher.forward).parameters)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names and c in takes]
    order = np.argsort([len(x) for x in dataset["input_ids"]], kind="stable")
    loader = DataLoader(
        dataset.select(order).select_columns(cols), batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer)
    )
    device = next(teacher.parameters()).device
    chunks = [
        teacher(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu()
        for b in tqdm(loader, desc="teacher logits", disable=not progress)
    ]
    logits = torch.cat(chunks).numpy()
    out = np.empty_like(logits)
    out[order] = logits
    return dataset.add_column("teacher_logits", out.tolist())


def _trainer_classes():
    from transformers import Trainer, TrainerCallback

    class PruneTrainer(Trainer):
        """Two learning rates: weights at --lr, mask scores at the method's score lr (no decay)."""

        score_lr: float = 1e-2

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                wrapper = self.model
                scores = [p for n, p in wrapper.named_parameters() if n.startswith("pruner.") and p.requires_grad]
                score_ids = {id(p) for p in scores}
                decay, no_decay = [], []
                for n, p in wrapper.named_parameters():
                    if not p.requires_grad or id(p) in score_ids:
                        continue
                    (no_decay if p.ndim < 2 or "LayerNorm" in n or "layer_norm" in n else decay).append(p)
                groups = [
                    {"params": decay, "weight_decay": self.args.weight_decay},
                    {"params": no_decay, "weight_decay": 0.0},
                    {"params": scores, "weight_decay": 0.0, "lr": self.score_lr},
                ]
                groups = [g for g in groups if g["params"]]
                self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, betas=(0.9, 0.999), eps=1e-8)
            return self.optimizer

        def _save(self, output_dir=None, state_dict=None):
            # The wrapper is not a PreTrainedModel, so the Trainer would call safetensors.save_file on its
            # state dict, which refuses tied weights (an MLM decoder shares the word embeddings).
            # save_model de-duplicates them; resume loads the file back non-strictly.
            import safetensors.torch

            if not self.args.should_save:
                return
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            safetensors.torch.save_model(
                self.model, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"}
            )
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    class ScheduleCallback(TrainerCallback):
        """Set the pruning schedule from the global step (so --resume reproduces it) and log sparsity."""

        def __init__(self, pruner, warmup_ratio: float):
            self.pruner = pruner
            self.warmup_ratio = warmup_ratio

        def _set(self, state):
            total = state.max_steps
            self.pruner.set_step(state.global_step, total, int(self.warmup_ratio * total))

        def on_train_begin(self, args, state, control, **kw):
            self._set(state)

        def on_step_begin(self, args, state, control, **kw):
            self._set(state)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs is not None and "loss" in logs:
                logs.update({k: round(v, 4) for k, v in self.pruner.stats().items()})
                logs["rss_mb"] = _rss_mb()  # to see that memory stays flat over long runs

    return PruneTrainer, ScheduleCallback


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _checkpoint_step(checkpoint: str) -> int:
    """global_step saved in a Trainer checkpoint (trainer_state.json)."""
    import json

    try:
        return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError) as e:
        raise InvalidConfigError(
            f"--resume: {checkpoint} has no readable trainer_state.json ({e.__class__.__name__}); "
            "remove that checkpoint folder to resume from the one before"
        ) from e


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """Periodic Trainer checkpoints live beside the output (the output itself is written atomically)."""
    p = Path(output_dir)
    return p.with_name(p.name + ".checkpoints")


def train(
    student: nn.Module,
    tokenizer,
    train_dataset,
    cfg: TrainConfig,
    output_dir: str | os.PathLike,
    *,
    pruner: nn.Module | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    score_lr: float = 1e-2,
    callbacks: list | None = None,
    task=None,
) -> dict:
    """Run the Trainer on `task` (a compress.training.tasks.TaskType; default sequence classification);
    returns {'seconds_per_step', 'steps', 'train_loss'}."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_utils import get_last_checkpoint

    from compress.training.tasks import TASK_TYPES

    task = task or TASK_TYPES["sequence-classification"]

    PruneTrainer, ScheduleCallback = _trainer_classes()
    ckpt = checkpoint_dir(output_dir)
    resume = None
    if cfg.resume:
        resume = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
        if resume is None:
            raise InvalidConfigError(f"--resume: no checkpoint found in {ckpt}; run without --resume to start fresh")
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        planned = cfg.max_steps if cfg.max_steps > 0 else math.ceil(len(train_dataset) / cfg.batch_size) * cfg.epochs
        # Precompute only when the run sees most of the data; a short run is cheaper on the fly.
        small = len(train_dataset) <= 1.5 * planned * cfg.batch_size
        # Layer distillation runs the teacher every step anyway, so its logits come from there.
        cache = task.teacher_cache and not (distill and distill.layer_weight)
        if cache and "teacher_logits" not in train_dataset.column_names and small:
            train_dataset = add_teacher_logits(teacher, train_dataset, tokenizer, progress=cfg.progress)
    wrapper = StudentWithLoss(student, pruner, teacher, distill or DistillConfig(), task)
    args = _training_arguments(cfg, ckpt, list(task.label_columns))
    if teacher is not None:
        teacher.to(args.device)
    callbacks = ([ScheduleCallback(pruner, cfg.warmup_ratio)] if pruner is not None else []) + list(callbacks or [])
    trainer = PruneTrainer(
        model=wrapper,
        args=args,
        train_dataset=train_dataset,
        data_collator=task.collator(tokenizer) if task.collator else DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
    )
    trainer.score_lr = score_lr
    start = _checkpoint_step(resume) if resume else 0
    result = trainer.train(resume_from_checkpoint=resume)
    # train_runtime times this process only; after --resume it ran global_step - start steps.
    run_steps = result.global_step - start
    runtime = result.metrics.get("train_runtime", float("nan"))
    if teacher is not None:
        teacher.to("cpu")
    return {
        "steps": result.global_step,
        "resumed_from_step": start,
        "steps_this_run": run_steps,
        "train_loss": result.training_loss,
        "train_seconds": runtime,
        "seconds_per_step": runtime / max(run_steps, 1),
        "is_main_process": trainer.is_world_process_zero(),
    }


def _training_arguments(cfg: TrainConfig, ckpt: Path, label_names: list[str] | None = None):
    """The Trainer's arguments for a TrainConfig; periodic checkpoints go to `ckpt`."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=not cfg.progress,
        remove_unused_columns=True,
        label_names=["labels"] if label_names is None else label_names,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )


@torch.no_grad()
def predict(model: nn.Module, dataset, tokenizer, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Logits of a classifier over a tokenized dataset, in order."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    model.eval()
    device = next(model.parameters()).device
    takes = set(inspect.signature(model.forward).parameters)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names and c in takes]
    loader = DataLoader(
        dataset.select_columns(cols), batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer)
    )
    out = []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, total=math.ceil(len(dataset) / batch_size)):
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    return np.concatenate(out)
