"""`compress prune` and `compress finetune`: load, (mask,) train, bake, evaluate, save."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import torch

from compress.core.artifacts import check_output_dir, read_compression_json
from compress.core.config import DataConfig, PruneConfig, TrainConfig
from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.sparsity import fold_dead_structure, sparsity_report
from compress.core.structure import geometry, layer_linears
from compress.pruning.label_words import DEFAULT_TEMPLATES, LabelWordClassifier, label_word_ids, load_mlm
from compress.pruning.masks import bake
from compress.pruning.methods import get_method
from compress.pruning.pruner import Pruner
from compress.training.checkpoint import save_model_dir
from compress.training.data import TaskData, compute_metrics, label_names_of, load_task_data
from compress.training.loop import checkpoint_dir, predict, train
from compress.training.models import (
    check_max_length,
    check_teacher,
    load_classifier,
    load_config,
    load_tokenizer,
    resolve_model,
)

SMP_NOTE = (
    "Static Model Pruning here trains the mask scores plus a fresh classifier head only; the encoder "
    "weights are the unchanged pre-trained ones (the authors' head-free mode reads label words from an "
    "MLM head, which this model does not have)."
)


def _load_data(
    data: DataConfig,
    tokenizer,
    t: TrainConfig,
    splits=("train", "dev"),
    template: str | None = None,
    label_names: list[str] | None = None,
) -> TaskData:
    return load_task_data(
        data.task,
        tokenizer,
        **data.source(),
        max_length=t.max_length,
        eval_max_length=t.eval_max_length,
        max_train_samples=t.max_train_samples,
        max_eval_samples=t.max_eval_samples,
        splits=splits,
        template=template,
        label_names=label_names,
    )


def _save_label_names(model, td: TaskData) -> None:
    """String labels learned from the training file become the model's id2label/label2id (config.json,
    copied into the ONNX folder), so every later file is mapped the same way."""
    config = getattr(getattr(model, "mlm", model), "config", None)
    if td.label_names and config is not None:
        config.id2label = dict(enumerate(td.label_names))
        config.label2id = {n: i for i, n in enumerate(td.label_names)}


def _check_lengths(t: TrainConfig, config, where) -> None:
    check_max_length(t.max_length, config, where)
    check_max_length(t.eval_max_length, config, where)


def _evaluate(model, td: TaskData, tokenizer, t: TrainConfig) -> dict:
    dev = td.dev
    labels = dev["labels"]
    logits = predict(model, dev, tokenizer, batch_size=t.eval_batch_size, progress=t.progress)
    return {k: round(v, 6) for k, v in compute_metrics(td.spec, logits, labels).items()}


def _sample_batch(td: TaskData, tokenizer, model) -> dict:
    import inspect

    takes = set(inspect.signature(model.forward).parameters)
    rows = td.dev.select(range(min(4, len(td.dev))))
    feats = [
        {k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r and k in takes} for r in rows
    ]
    return dict(tokenizer.pad(feats, return_tensors="pt"))


@torch.no_grad()
def _fill_heads(model, kept: list[dict], seed: int) -> None:
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


def _fixed_struct_masks(model, kept: list[dict]) -> dict[str, torch.Tensor]:
    geo = geometry(model.config)
    out = {}
    for i, k in enumerate(kept):
        h = torch.zeros(geo.num_heads)
        h[k["heads_kept"]] = 1
        f = torch.zeros(geo.intermediate_size)
        f[k["ffn_dims_kept"]] = 1
        out[f"layer.{i}.heads"], out[f"layer.{i}.ffn_dim"] = h, f
    return out


def prune(
    cfg: PruneConfig,
    data: DataConfig,
    model_name: str | None = None,
    *,
    output: str | os.PathLike,
    callbacks: list | None = None,
) -> dict:
    """Run one pruning method end to end, writing the checkpoint to `output`; returns the compression.json content."""
    cfg.validate()
    method = get_method(cfg.method)
    t = cfg.train
    if not t.resume:
        check_output_dir(
            output,
            t.overwrite,
            inputs=(model_name, cfg.source, cfg.distill.teacher, data.train_file, data.validation_file),
        )
    if method.needs_source and not cfg.source:
        raise InvalidConfigError(
            f"--method {method.name} needs --source DIR, the output of `compress prune --method hybrid`"
        )
    if not method.targets_sparsity and cfg.sparsity is not None and method.binarizer.learned:
        raise InvalidConfigError(f"--method {method.name} sets sparsity through --lambda, not --sparsity")
    if method.binarizer.top_k and not method.regularised and cfg.lambda_reg is not None:
        raise InvalidConfigError(f"--method {method.name} is a top-k method: use --sparsity, not --lambda")

    if method.select is None and cfg.fill_steps:
        raise InvalidConfigError(
            "--fill-steps follows --method retrain-free; for other methods use --method hybrid-filled --source DIR"
        )

    source_info = None
    if method.needs_source:
        source_info = read_compression_json(cfg.source)
        model_name = cfg.source
    model_name = resolve_model(model_name)
    # Cheap checks first (config files, flags), so bad input fails before any data work.
    config = load_config(model_name)
    _check_lengths(t, config, model_name)
    if cfg.distill.teacher:
        load_config(resolve_model(cfg.distill.teacher))
    if t.resume:
        _require_checkpoint(output)
    # A speed target: check it and get the latency table (cached, or measured now) before any data work.
    from compress.speed.budgeted import plan_for

    # retrain-free and smp-struct keep whole heads and FFN dims exactly like struct: same tables and solver.
    speed_plan = plan_for(cfg, model_name, method.budget_as or method.name, progress=t.progress)
    if method.select is not None and speed_plan is None:
        raise InvalidConfigError(
            f"--method {method.name} needs a budget: --target-speedup X, --target-latency-ms MS or "
            "--target-flops FRACTION (e.g. 0.5)"
        )
    tokenizer = load_tokenizer(model_name, config)
    template = None
    if cfg.label_words:
        if method.train_weights:
            raise InvalidConfigError("--label-words is SMP's head-free mode: use it with --method smp-l or smp-s")
        if tokenizer.mask_token is None:
            raise InvalidConfigError(
                f"{model_name}'s tokenizer has no mask token; --label-words needs an MLM tokenizer"
            )
        template = DEFAULT_TEMPLATES[_is_pair(data)]
    td = _load_data(data, tokenizer, t, template=template, label_names=label_names_of(config))
    torch.manual_seed(t.seed)
    if cfg.label_words:
        if len(cfg.label_words) != td.num_labels:
            raise InvalidConfigError(
                f"--label-words gives {len(cfg.label_words)} words for a task with {td.num_labels} labels"
            )
        student = LabelWordClassifier(
            load_mlm(model_name), label_word_ids(tokenizer, cfg.label_words), tokenizer.mask_token_id
        )
    else:
        student = load_classifier(model_name, td.num_labels)
    teacher = None
    if cfg.distill.teacher:
        teacher_name = resolve_model(cfg.distill.teacher)
        teacher = load_classifier(teacher_name)
        try:
            teacher_tokenizer = load_tokenizer(teacher_name)
        except ArtifactError:
            teacher_tokenizer = None  # no tokenizer saved with the teacher: only its size can be compared
        check_teacher(student, teacher, tokenizer, teacher_tokenizer)
        mine, theirs = label_names_of(config) or td.label_names, label_names_of(teacher.config)
        if mine and theirs and mine != theirs:
            # Logit k of the teacher must mean label k of the student, or distillation teaches the opposite.
            raise InvalidConfigError(
                f"the teacher's labels are {', '.join(theirs)} but the student's are {', '.join(mine)}; "
                "use a teacher trained with the same label names"
            )

    fixed = None
    selection = None
    if method.select is not None:
        if cfg.fill_steps and teacher is None:
            import copy

            teacher = copy.deepcopy(student).eval()  # the fill distils from the dense model it started from
        selection = method.select(student, td.train, tokenizer, speed_plan.table, speed_plan.budget, cfg)
        fixed = _fixed_struct_masks(student, sparsity_report(student)["layers"])
        t = replace(t, max_steps=cfg.fill_steps)
    if method.needs_source:
        kept = source_info["layers"] if source_info else sparsity_report(student)["layers"]
        fixed = _fixed_struct_masks(student, kept)
        _fill_heads(student, kept, t.seed)
    if cfg.label_words:
        for p in student.parameters():  # head-free: only the mask scores learn
            p.requires_grad_(False)
    elif not method.train_weights:
        # SMP: the pre-trained encoder (embeddings included) stays frozen; only the head trains.
        for p in student.base_model.parameters():
            p.requires_grad_(False)
        pooler = getattr(student.base_model, "pooler", None)
        for p in pooler.parameters() if pooler is not None else []:
            p.requires_grad_(True)
    budget = None
    if speed_plan is not None and not method.select:  # retrain-free chose its structure already: held fixed
        from compress.speed.budgeted import budget_for

        budget = budget_for(student, method.budget_as or method.name, speed_plan, cfg.ffn_block, cfg.budget_importance)
    pruner = Pruner(student, method, cfg, fixed_masks=fixed, budget=budget)
    score_lr = cfg.score_lr or method.score_lr
    if not method.train_weights and not cfg.label_words:
        # Only the fresh head trains with the frozen encoder; at a fine-tuning lr it stays near its random
        # init for a whole short run (SMP-S at 50% stayed at the majority class with lr 3e-5).
        t = replace(t, lr=cfg.head_lr)
    if method.select is not None and not cfg.fill_steps:
        stats = {"steps": 0, "train_loss": None, "train_seconds": 0.0, "seconds_per_step": 0.0, "is_main_process": True}
    else:
        stats = train(
            student,
            tokenizer,
            td.train,
            t,
            output,
            pruner=pruner,
            teacher=teacher,
            distill=cfg.distill,
            score_lr=score_lr,
            callbacks=callbacks,
        )

    pruner.finalize()
    bake(student)
    fold_dead_structure(student)
    student.eval()
    metrics = _evaluate(student, td, tokenizer, t)
    rep = sparsity_report(student)
    info = {
        "method": method.name,
        # hybrid-filled: the model it all started from, not the intermediate hybrid result
        "base_model": (source_info or {}).get("base_model", model_name),
        "teacher": cfg.distill.teacher,
        "task": td.spec.name,
        "recipe": {
            "binarizer": method.binarizer.value,
            "train_weights": method.train_weights,
            "score_lr": score_lr,
            "sparsity_target": pruner.sparsity if method.targets_sparsity else None,
            "lambda_final": pruner.lam_final if method.regularised else None,
            **_recorded(cfg, output),
        },
        **rep,
        "metrics": metrics,
        "training": {k: v for k, v in stats.items() if k != "is_main_process"},
    }
    if selection is not None:
        info["retrain_free"] = selection
    if cfg.label_words:
        info.update(head="mlm-label-words", label_words=list(cfg.label_words), template=template)
    elif not method.train_weights:
        info["smp_note"] = SMP_NOTE
    _save_label_names(student, td)
    if speed_plan is not None:
        from compress.speed.budgeted import measure_speedup, speed_info

        info["speed"] = speed_info(speed_plan, rep["layers"])
        if speed_plan.deploy is not None and cfg.measure_speed and stats["is_main_process"]:
            info["speed"]["measured"] = measure_speedup(student, rep["layers"], speed_plan.deploy)
    if stats["is_main_process"]:  # under DDP only rank 0 writes
        save_model_dir(
            student,
            tokenizer,
            output,
            info,
            overwrite=t.overwrite or t.resume,
            sample=_sample_batch(td, tokenizer, student),
            reload=_reloader(info),
        )
        _cleanup_checkpoints(output)
    return info


def _is_pair(data: DataConfig) -> bool:
    from compress.training.data import TASKS

    return bool(data.text_pair_column or (data.task in TASKS and TASKS[data.task].text_pair_column))


def _reloader(info: dict):
    """How to load a saved result as a classifier: a plain HF classifier, or the label-word wrapper."""
    if info.get("head") != "mlm-label-words":
        return None

    def load(path):
        from transformers import AutoModelForMaskedLM

        tok = load_tokenizer(str(path))
        return LabelWordClassifier(
            AutoModelForMaskedLM.from_pretrained(path), label_word_ids(tok, info["label_words"]), tok.mask_token_id
        )

    return load


def finetune(t: TrainConfig, data: DataConfig, model_name: str | None = None, *, output: str | os.PathLike) -> dict:
    """Dense fine-tuning (a teacher or a baseline) with the same data plumbing, written to `output`."""
    t.validate()
    if not t.resume:
        check_output_dir(output, t.overwrite, inputs=(model_name, data.train_file, data.validation_file))
    model_name = resolve_model(model_name)
    config = load_config(model_name)
    _check_lengths(t, config, model_name)
    if t.resume:
        _require_checkpoint(output)
    tokenizer = load_tokenizer(model_name, config)
    td = _load_data(data, tokenizer, t, label_names=label_names_of(config))
    torch.manual_seed(t.seed)
    model = load_classifier(model_name, td.num_labels)
    stats = train(model, tokenizer, td.train, t, output)
    metrics = _evaluate(model, td, tokenizer, t)
    _save_label_names(model, td)
    info = {
        "method": None,
        "base_model": model_name,
        "task": td.spec.name,
        "recipe": {"train": vars(t)},
        **sparsity_report(model),
        "metrics": metrics,
        "training": {k: v for k, v in stats.items() if k != "is_main_process"},
    }
    if stats["is_main_process"]:
        save_model_dir(
            model,
            tokenizer,
            output,
            info,
            overwrite=t.overwrite or t.resume,
            sample=_sample_batch(td, tokenizer, model),
        )
        _cleanup_checkpoints(output)
    return info


def _recorded(cfg: PruneConfig, output) -> dict:
    """The config as recorded in compression.json: a --source beside the output is written relative to
    the output folder, so the record stays true after the folder (or its parent) is moved or renamed."""
    d = cfg.to_dict()
    if cfg.source:
        d["source"] = os.path.relpath(os.path.abspath(cfg.source), os.path.abspath(output))
    return d


def _require_checkpoint(output) -> None:
    ckpt = checkpoint_dir(output)
    if not (ckpt.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt.iterdir())):
        raise InvalidConfigError(f"--resume: no checkpoint found in {ckpt}; run without --resume to start fresh")


def _cleanup_checkpoints(output) -> None:
    import shutil

    ckpt = checkpoint_dir(output)
    if ckpt.is_dir():
        shutil.rmtree(ckpt, ignore_errors=True)


def evaluate_checkpoint(
    path: str,
    data: DataConfig,
    batch_size: int = 64,
    max_length: int = 128,
    max_eval_samples: int | None = None,
    progress: bool = True,
) -> dict:
    """Dev metrics of a PyTorch checkpoint (compression.json checksums verified when present)."""
    t = TrainConfig(
        eval_batch_size=batch_size,
        max_length=max_length,
        eval_max_length=max_length,
        max_eval_samples=max_eval_samples,
        progress=progress,
    )
    t.validate()
    info = read_compression_json(path) or {}
    config = load_config(path)
    _check_lengths(t, config, path)
    tokenizer = load_tokenizer(path, config)
    td = _load_data(
        data, tokenizer, t, splits=("dev",), template=info.get("template"), label_names=label_names_of(config)
    )
    reload = _reloader(info)
    model = reload(path) if reload else load_classifier(path, td.num_labels)
    return _evaluate(model, td, tokenizer, t)
