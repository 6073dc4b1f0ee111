"""`compress prune` and `compress finetune`: check, load, (mask,) train, bake, evaluate, save.

prune runs the same named steps for every method; what differs per method is data on its Method and
its `prepare` hook (compress.pruning.prepare). The random draws happen in one fixed order: the seed is
set after the data is loaded, then the student is built (its fresh head), then the teacher, then the
method's preparation (Hybrid Filled's re-initialisation, retrain-free's sampling), then training.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from compress.core import hidden
from compress.core.artifacts import check_output_dir, read_compression_json
from compress.core.config import DataConfig, PruneConfig, TrainConfig
from compress.core.errors import ArtifactError, InvalidConfigError
from compress.core.models import (
    check_max_length,
    check_teacher,
    load_classifier,
    load_config,
    load_tokenizer,
    resolve_model,
)
from compress.core.sparsity import fold_dead_structure, sparsity_report
from compress.core.structure import geometry
from compress.pruning.label_words import DEFAULT_TEMPLATES, LabelWordClassifier, label_word_ids, load_mlm
from compress.pruning.masks import bake
from compress.pruning.methods import METHODS, Method, get_method
from compress.pruning.prepare import PruneRun
from compress.pruning.pruner import Pruner
from compress.training.checkpoint import save_model_dir
from compress.training.data import TaskData, compute_metrics, label_names_of
from compress.training.loop import checkpoint_dir, predict, train
from compress.training.tasks import TaskType, default_teacher, task_of, task_type

# What training reports when a method trains nothing (retrain-free without --fill-steps).
NO_TRAINING = {"steps": 0, "train_loss": None, "train_seconds": 0.0, "seconds_per_step": 0.0, "is_main_process": True}


# ------------------------------------------------------------------ prune
def prune(
    cfg: PruneConfig,
    data: DataConfig,
    model_name: str | None = None,
    *,
    output: str | os.PathLike,
    callbacks: list | None = None,
) -> dict:
    """Run one pruning method end to end, writing the checkpoint to `output`; returns the compression.json content."""
    method = _check_inputs(cfg, data, model_name, output)
    run = _load(cfg, method, data, model_name, output)
    method.prepare(run)
    pruner, stats = _train(run, output, callbacks)
    info = _finish(run, pruner, stats, output)
    _save(run.task, run.student, run.tokenizer, run.data, info, stats, run.train, output, reload=_reloader(info))
    return info


def _check_inputs(cfg: PruneConfig, data: DataConfig, model_name: str | None, output) -> Method:
    """The config, the output folder and the flags the method takes, before anything is loaded."""
    cfg.validate()
    data.validate()
    method = get_method(cfg.method)
    if not cfg.train.resume:
        check_output_dir(
            output,
            cfg.train.overwrite,
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
    if not method.needs_budget and cfg.fill_steps:
        raise InvalidConfigError(
            "--fill-steps follows --method retrain-free; for other methods use --method hybrid-filled --source DIR"
        )
    if cfg.label_words and method.train_weights:
        raise InvalidConfigError("--label-words is SMP's head-free mode: use it with --method smp-l or smp-s")
    if cfg.label_words and data.kind != "sequence-classification":
        raise InvalidConfigError(f"--label-words reads a class from the MLM head; it does not apply to {data.kind}")
    if cfg.prune_hidden:
        _check_hidden(cfg, method, data)
    if cfg.distill.layer_weight and (data.kind == "embedding" or cfg.label_words):
        raise InvalidConfigError(
            "--layer-weight needs the student's layer outputs: for --task embedding use --hidden-weight, "
            "and --label-words models do not expose them"
        )
    return method


def _check_hidden(cfg: PruneConfig, method: Method, data: DataConfig) -> None:
    supported = ", ".join(m.name for m in METHODS.values() if m.prunes_hidden)
    if not method.prunes_hidden:
        why = (
            " (hybrid-filled keeps the hidden dims of its --source run)"
            if method.needs_source
            else " (retrain-free's least-squares mask tuning assumes a fixed residual width)"
            if method.needs_budget
            else ""
        )
        raise InvalidConfigError(f"--prune-hidden works with {supported}, not --method {method.name}{why}")
    if data.kind == "embedding":
        raise InvalidConfigError(
            "--prune-hidden would shrink the sentence embedding itself (a new vector size for every index); "
            "prune heads and FFN dims only for --task embedding"
        )
    if cfg.label_words:
        raise InvalidConfigError("--prune-hidden cannot cut the MLM head that --label-words reads; drop one of them")


def _load(cfg: PruneConfig, method: Method, data: DataConfig, model_name: str | None, output) -> PruneRun:
    """Config files and the speed plan first (cheap, so bad input fails before any data work), then the
    tokenizer and data, then the seeded models."""
    task = task_type(data.kind)
    cfg = replace(cfg, train=cfg.train.for_task(task.name))
    t = cfg.train
    source_info = None
    if method.needs_source:
        source_info = read_compression_json(cfg.source)
        model_name = cfg.source
    model_name = resolve_model(model_name)
    config = load_config(model_name)
    _check_lengths(t, config, model_name)
    if cfg.distill.teacher:
        load_config(resolve_model(cfg.distill.teacher))
    if t.resume:
        _require_checkpoint(output)
    # A speed target: check it and get the latency table (cached, or measured now) before any data work.
    from compress.speed.plan import plan_for

    cfg, shape_record = _deploy_shape(cfg, task, data, model_name, config)
    # retrain-free and smp-struct keep whole heads and FFN dims exactly like struct: same tables and solver.
    speed_plan = plan_for(cfg, model_name, method.budget_as or method.name, progress=t.progress)
    if speed_plan is not None:
        speed_plan.shape_from_data = shape_record
    if method.needs_budget and speed_plan is None:
        raise InvalidConfigError(
            f"--method {method.name} needs a budget: --target-speedup X, --target-latency-ms MS or "
            "--target-flops FRACTION (e.g. 0.5)"
        )
    tokenizer = load_tokenizer(model_name, config, **task.tokenizer_kwargs(config))
    template = _label_word_template(cfg, data, tokenizer, model_name)
    td = _load_data(task, data, tokenizer, t, template=template, label_names=_label_names(task, config))
    torch.manual_seed(t.seed)
    student = _student(cfg, task, data, model_name, tokenizer, td)
    teacher = _teacher(cfg, task, data, student, tokenizer, config, td)
    return PruneRun(
        cfg, method, model_name, t, tokenizer, td, student, teacher, speed_plan, source_info, template, task=task
    )


def _deploy_shape(cfg: PruneConfig, task: TaskType, data: DataConfig, model_name: str, config):
    """(cfg with a concrete --deploy-shape, how it was read; compress.speed.plan.concrete_deploy_shape), so
    that the latency table and the solver see a number."""
    from compress.speed.plan import concrete_deploy_shape

    def tokenizer():
        return load_tokenizer(model_name, config, **task.tokenizer_kwargs(config))

    shape, record = concrete_deploy_shape(cfg, task.name, data, tokenizer, cfg.train.eval_max_length)
    return replace(cfg, deploy_shape=shape), record


def _label_word_template(cfg: PruneConfig, data: DataConfig, tokenizer, model_name: str) -> str | None:
    """Head-free SMP reads its label words at the mask of a prompt; None without --label-words."""
    if not cfg.label_words:
        return None
    if tokenizer.mask_token is None:
        raise InvalidConfigError(f"{model_name}'s tokenizer has no mask token; --label-words needs an MLM tokenizer")
    return DEFAULT_TEMPLATES[_is_pair(data)]


def _student(cfg: PruneConfig, task: TaskType, data: DataConfig, model_name: str, tokenizer, td: TaskData):
    """The model to prune: the task's model (a classifier with a fresh head, a span head, an encoder with
    its pooling), or (--label-words) the MLM wrapped to read label words."""
    if not cfg.label_words:
        return task.load_student(model_name, td, data)
    if len(cfg.label_words) != td.num_labels:
        raise InvalidConfigError(
            f"--label-words gives {len(cfg.label_words)} words for a task with {td.num_labels} labels"
        )
    return LabelWordClassifier(
        load_mlm(model_name), label_word_ids(tokenizer, cfg.label_words), tokenizer.mask_token_id
    )


def _teacher(cfg: PruneConfig, task: TaskType, data: DataConfig, student, tokenizer, config, td: TaskData):
    """The distillation teacher (None without one; the dense student itself for embeddings), checked
    against the student's vocabulary and labels."""
    if not cfg.distill.teacher:
        return default_teacher(task, student)
    teacher_name = resolve_model(cfg.distill.teacher)
    teacher = task.load_teacher(teacher_name, td, data)
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
    return teacher


def _train(run: PruneRun, output, callbacks) -> tuple[Pruner, dict]:
    """Masks over the student (steered by the speed budget, if any) and the training loop."""
    cfg, method = run.cfg, run.method
    budget = None
    if run.speed_plan is not None and run.budget_during_training:
        from compress.speed.plan import budget_for

        budget = budget_for(
            run.student, method.budget_as or method.name, run.speed_plan, cfg.ffn_block, cfg.budget_importance
        )
    pruner = Pruner(run.student, method, cfg, fixed_masks=run.fixed_masks, budget=budget)
    if not run.trains:
        return pruner, dict(NO_TRAINING)
    stats = train(
        run.student,
        run.tokenizer,
        run.data.train,
        run.train,
        output,
        pruner=pruner,
        teacher=run.teacher,
        distill=cfg.distill,
        score_lr=_score_lr(run),
        callbacks=callbacks,
        task=run.task,
    )
    return pruner, stats


def _score_lr(run: PruneRun) -> float:
    return run.cfg.score_lr or run.method.score_lr


def _finish(run: PruneRun, pruner: Pruner, stats: dict, output) -> dict:
    """Bake the final masks into the weights, evaluate, and build the compression.json record."""
    cfg, method, student = run.cfg, run.method, run.student
    pruner.finalize()
    bake(student)
    fold_dead_structure(student)
    hidden_record = _hold_hidden(student)
    student.eval()
    metrics = _evaluate(run.task, student, run.data, run.tokenizer, run.train, run.teacher)
    rep = sparsity_report(student)
    info = {
        "method": method.name,
        # hybrid-filled: the model it all started from, not the intermediate hybrid result
        "base_model": (run.source_info or {}).get("base_model", run.model_name),
        "teacher": cfg.distill.teacher,
        "task": run.data.name,
        "task_type": run.task.name,
        **_task_record(run.task, student),
        "recipe": {
            "binarizer": method.binarizer.value,
            "train_weights": method.train_weights,
            "score_lr": _score_lr(run),
            "sparsity_target": pruner.sparsity if method.targets_sparsity else None,
            "lambda_final": pruner.lam_final if method.regularised else None,
            **_recorded(cfg, output),
        },
        **rep,
        **({"hidden": hidden_record} if hidden_record else {}),
        "metrics": metrics,
        "training": _training_record(stats),
        **run.record,
    }
    _save_label_names(student, run.data)
    if run.speed_plan is not None:
        from compress.speed.plan import measure_speedup, speed_info

        kept_hidden = hidden_record["kept"] if hidden_record else None
        info["speed"] = speed_info(run.speed_plan, rep["layers"], hidden=kept_hidden)
        if run.speed_plan.deploy is not None and cfg.measure_speed and stats["is_main_process"]:
            info["speed"]["measured"] = measure_speedup(
                student, rep["layers"], run.speed_plan.deploy, hidden=kept_hidden
            )
    return info


def _hold_hidden(student) -> dict | None:
    """Freeze a trained hidden mask at its final value and zero what it prunes (compression.json's
    `hidden` record), or None when the model has no hidden mask."""
    kept = hidden.kept_dims(student)
    if kept is None:
        return None
    hidden.fix(student, kept)
    hidden.zero_pruned(student, kept)
    return hidden.record(kept, geometry(student.config).hidden_size)


def _recorded(cfg: PruneConfig, output) -> dict:
    """The config as recorded in compression.json: a --source beside the output is written relative to
    the output folder, so the record stays true after the folder (or its parent) is moved or renamed."""
    d = cfg.to_dict()
    if cfg.source:
        d["source"] = os.path.relpath(os.path.abspath(cfg.source), os.path.abspath(output))
    return d


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


# ------------------------------------------------------------------ finetune
def finetune(t: TrainConfig, data: DataConfig, model_name: str | None = None, *, output: str | os.PathLike) -> dict:
    """Dense fine-tuning (a teacher or a baseline) with the same data plumbing, written to `output`."""
    t.validate()
    data.validate()
    task = task_type(data.kind)
    if task.default_teacher_is_student:
        raise InvalidConfigError(
            f"{task.name} has no labels to fine-tune on; prune the model directly (the dense model is the teacher)"
        )
    t = t.for_task(task.name)
    if not t.resume:
        check_output_dir(output, t.overwrite, inputs=(model_name, data.train_file, data.validation_file))
    model_name = resolve_model(model_name)
    config = load_config(model_name)
    _check_lengths(t, config, model_name)
    if t.resume:
        _require_checkpoint(output)
    tokenizer = load_tokenizer(model_name, config, **task.tokenizer_kwargs(config))
    td = _load_data(task, data, tokenizer, t, label_names=_label_names(task, config))
    torch.manual_seed(t.seed)
    model = task.load_student(model_name, td, data)
    stats = train(model, tokenizer, td.train, t, output, task=task)
    metrics = _evaluate(task, model, td, tokenizer, t)
    _save_label_names(model, td)
    info = {
        "method": None,
        "base_model": model_name,
        "task": td.name,
        "task_type": task.name,
        "recipe": {"train": vars(t)},
        **sparsity_report(model),
        "metrics": metrics,
        "training": _training_record(stats),
    }
    _save(task, model, tokenizer, td, info, stats, t, output)
    return info


# ------------------------------------------------------------------ shared steps
def _load_data(
    task: TaskType,
    data: DataConfig,
    tokenizer,
    t: TrainConfig,
    splits=("train", "dev"),
    template: str | None = None,
    label_names: list[str] | None = None,
) -> TaskData:
    return task.load_data(data, tokenizer, t, splits, label_names, template=template)


def _label_names(task: TaskType, config) -> list[str] | None:
    """The label names a model's head already has (string labels in the data are mapped through them)."""
    if task.name == "token-classification":
        from compress.tasks.token_classification import head_labels

        return head_labels(config)
    return label_names_of(config)


def _task_record(task: TaskType, model) -> dict:
    """compression.json entries a task's later stages need (an embedding model's pooling)."""
    pooling = getattr(model, "pooling", None)
    if task.name != "embedding" or pooling is None:
        return {}
    return {"pooling": {"mode": pooling.mode, "normalize": pooling.normalize}}


def _check_lengths(t: TrainConfig, config, where) -> None:
    check_max_length(t.max_length, config, where)
    check_max_length(t.eval_max_length, config, where)


def _evaluate(task: TaskType, model, td: TaskData, tokenizer, t: TrainConfig, teacher=None) -> dict:
    """Dev metrics of a PyTorch model: the classifier's own path, else the task's evaluate over the
    model's outputs (the same code that scores its ONNX graph)."""
    if task.evaluate is None:
        dev = td.dev
        labels = dev["labels"]
        logits = predict(model, dev, tokenizer, batch_size=t.eval_batch_size, progress=t.progress)
        return {k: round(v, 6) for k, v in compute_metrics(td.spec, logits, labels).items()}
    from compress.tasks.batching import torch_predict

    model.eval()
    if task.name == "embedding":
        td.extra.update(tokenizer=tokenizer, teacher_predict=torch_predict(teacher, task.outputs) if teacher else None)
    if tokenizer.pad_token_id is None:
        raise InvalidConfigError(
            f"the tokenizer of {model.config.name_or_path} has no pad token; batches cannot be padded"
        )
    metrics = task.evaluate(torch_predict(model, task.outputs), td, tokenizer.pad_token_id, t.eval_batch_size)
    return rounded(metrics)


def rounded(metrics: dict) -> dict:
    """Metrics rounded to 6 decimals, nested ones (per entity type) too."""
    return {
        k: rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()
    }


def _training_record(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "is_main_process"}


def _save_label_names(model, td: TaskData) -> None:
    """String labels learned from the training file become the model's id2label/label2id (config.json,
    copied into the ONNX folder), so every later file is mapped the same way."""
    config = getattr(getattr(model, "mlm", model), "config", None)
    if td.label_names and config is not None:
        config.id2label = dict(enumerate(td.label_names))
        config.label2id = {n: i for i, n in enumerate(td.label_names)}


def _save(
    task: TaskType, model, tokenizer, td: TaskData, info: dict, stats: dict, t: TrainConfig, output, reload=None
) -> None:
    """Write the checkpoint (under DDP only rank 0 writes) and drop the periodic training checkpoints."""
    if not stats["is_main_process"]:
        return
    save_model_dir(
        model,
        tokenizer,
        output,
        info,
        overwrite=t.overwrite or t.resume,
        sample=_sample_batch(td, tokenizer, model),
        reload=reload or task.reload,
        output_name=task.outputs[0],
        save=task.save,
    )
    _cleanup_checkpoints(output)


def _sample_batch(td: TaskData, tokenizer, model) -> dict:
    import inspect

    takes = set(inspect.signature(model.forward).parameters)
    rows = td.dev if td.dev is not None else td.train
    rows = rows.select(range(min(4, len(rows))))
    feats = [
        {k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r and k in takes} for r in rows
    ]
    return dict(tokenizer.pad(feats, return_tensors="pt"))


def _require_checkpoint(output) -> None:
    ckpt = checkpoint_dir(output)
    if not (ckpt.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt.iterdir())):
        raise InvalidConfigError(f"--resume: no checkpoint found in {ckpt}; run without --resume to start fresh")


def _cleanup_checkpoints(output) -> None:
    import shutil

    ckpt = checkpoint_dir(output)
    if ckpt.is_dir():
        shutil.rmtree(ckpt, ignore_errors=True)


# ------------------------------------------------------------------ evaluate
def evaluate_checkpoint(
    path: str,
    data: DataConfig,
    batch_size: int = 64,
    max_length: int | None = None,
    max_eval_samples: int | None = None,
    progress: bool = True,
) -> dict:
    """Dev metrics of a PyTorch checkpoint (compression.json checksums verified when present)."""
    info = read_compression_json(path) or {}
    config = load_config(path)
    task = task_type(data.kind) if (data.task_type or data.task) else task_of(info, config)
    t = TrainConfig.for_evaluation(task.name, batch_size, max_length, max_eval_samples, progress)
    _check_lengths(t, config, path)
    tokenizer = load_tokenizer(path, config, **task.tokenizer_kwargs(config))
    td = _load_data(
        task, data, tokenizer, t, splits=("dev",), template=info.get("template"), label_names=_label_names(task, config)
    )
    reload = _reloader(info)
    if reload:
        model = reload(path)
    elif task.name == "sequence-classification":
        model = load_classifier(path, td.num_labels)
    else:
        model = task.reload(path)
    teacher = None
    if task.name == "embedding" and info.get("base_model"):
        teacher = task.load_teacher(resolve_model(info.get("teacher") or info["base_model"]), td, data)
    return _evaluate(task, model, td, tokenizer, t, teacher)
