"""`compress prune` and `compress finetune`: load, (mask,) train, bake, evaluate, save."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from compress.core.artifacts import check_output_dir, read_compression_json
from compress.training.checkpoint import save_model_dir
from compress.core.config import PruneConfig, TrainConfig
from compress.training.data import TaskData, compute_metrics, load_task_data
from compress.core.errors import InvalidConfigError
from compress.pruning.masks import bake
from compress.pruning.methods import get_method
from compress.training.models import check_teacher, load_classifier, load_config, load_tokenizer, resolve_model
from compress.pruning.label_words import DEFAULT_TEMPLATES, LabelWordClassifier, label_word_ids, load_mlm
from compress.pruning.pruner import Pruner
from compress.core.sparsity import fold_dead_structure, sparsity_report
from compress.core.structure import geometry, layer_linears
from compress.training.loop import checkpoint_dir, predict, train

SMP_NOTE = ("Static Model Pruning here trains the mask scores plus a fresh classifier head only; the encoder "
            "weights are the unchanged pre-trained ones (the authors' head-free mode reads label words from an "
            "MLM head, which this model does not have).")


@dataclass
class DataArgs:
    task: str | None = "sst2"
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    num_labels: int | None = None


def _load_data(data: DataArgs, tokenizer, t: TrainConfig, splits=("train", "dev"), template: str | None = None) -> TaskData:
    return load_task_data(
        data.task, tokenizer, data_dir=data.data_dir, train_file=data.train_file, validation_file=data.validation_file,
        text_column=data.text_column, text_pair_column=data.text_pair_column, label_column=data.label_column,
        num_labels=data.num_labels, max_length=t.max_length, eval_max_length=t.eval_max_length, max_train_samples=t.max_train_samples,
        max_eval_samples=t.max_eval_samples, splits=splits, template=template,
    )


def _evaluate(model, td: TaskData, tokenizer, t: TrainConfig) -> dict:
    dev = td.dev
    labels = dev["labels"]
    logits = predict(model, dev, tokenizer, batch_size=t.eval_batch_size, progress=t.progress)
    return {k: round(v, 6) for k, v in compute_metrics(td.spec, logits, labels).items()}


def _sample_batch(td: TaskData, tokenizer, model) -> dict:
    import inspect

    takes = set(inspect.signature(model.forward).parameters)
    rows = td.dev.select(range(min(4, len(td.dev))))
    feats = [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in r and k in takes} for r in rows]
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


def prune(cfg: PruneConfig, data: DataArgs, model_name: str | None = None, callbacks: list | None = None) -> dict:
    """Run one pruning method end to end; returns the compression.json content."""
    cfg.validate()
    method = get_method(cfg.method)
    t = cfg.train
    if not t.resume:
        check_output_dir(t.output_dir, t.overwrite)
    if method.needs_source and not cfg.source:
        raise InvalidConfigError(f"--method {method.name} needs --source DIR, the output of `compress prune --method hybrid`")
    if method.targets_sparsity is False and cfg.sparsity is not None and method.binarizer != "fixed":
        raise InvalidConfigError(f"--method {method.name} sets sparsity through --lambda, not --sparsity")
    if method.binarizer in ("magnitude", "topk") and cfg.lambda_reg is not None:
        raise InvalidConfigError(f"--method {method.name} is a top-k method: use --sparsity, not --lambda")

    source_info = None
    if method.needs_source:
        source_info = read_compression_json(cfg.source)
        model_name = cfg.source
    model_name = resolve_model(model_name)
    # Cheap checks first (config files, flags), so bad input fails before any data work.
    load_config(model_name)
    if cfg.distill.teacher:
        load_config(resolve_model(cfg.distill.teacher))
    if t.resume:
        _require_checkpoint(t)
    tokenizer = load_tokenizer(model_name)
    template = None
    if cfg.label_words:
        if method.train_weights:
            raise InvalidConfigError("--label-words is SMP's head-free mode: use it with --method smp-l or smp-s")
        if tokenizer.mask_token is None:
            raise InvalidConfigError(f"{model_name}'s tokenizer has no mask token; --label-words needs an MLM tokenizer")
        template = DEFAULT_TEMPLATES[_is_pair(data)]
    td = _load_data(data, tokenizer, t, template=template)
    torch.manual_seed(t.seed)
    if cfg.label_words:
        if len(cfg.label_words) != td.num_labels:
            raise InvalidConfigError(f"--label-words gives {len(cfg.label_words)} words for a task with {td.num_labels} labels")
        student = LabelWordClassifier(load_mlm(model_name), label_word_ids(tokenizer, cfg.label_words), tokenizer.mask_token_id)
    else:
        student = load_classifier(model_name, td.num_labels)
    teacher = None
    if cfg.distill.teacher:
        teacher = load_classifier(resolve_model(cfg.distill.teacher))
        check_teacher(student, teacher)

    fixed = None
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
        for p in (pooler.parameters() if pooler is not None else []):
            p.requires_grad_(True)
    pruner = Pruner(student, method, cfg, fixed_masks=fixed)
    score_lr = cfg.score_lr or method.score_lr
    if not method.train_weights and not cfg.label_words:
        # Only the fresh head trains with the frozen encoder; at a fine-tuning lr it stays near its random
        # init for a whole short run (SMP-S at 50% stayed at the majority class with lr 3e-5).
        t = replace(t, lr=cfg.head_lr)
    stats = train(student, tokenizer, td.train, t, pruner=pruner, teacher=teacher, distill=cfg.distill, score_lr=score_lr,
                  callbacks=callbacks)

    pruner.finalize()
    bake(student)
    fold_dead_structure(student)
    student.eval()
    metrics = _evaluate(student, td, tokenizer, t)
    rep = sparsity_report(student)
    info = {
        "method": method.name,
        "base_model": model_name,
        "teacher": cfg.distill.teacher,
        "task": td.spec.name,
        "recipe": {"binarizer": method.binarizer, "train_weights": method.train_weights,
                   "score_lr": score_lr, "sparsity_target": pruner.sparsity if method.targets_sparsity else None,
                   "lambda_final": pruner.lam_final if method.regularised else None, **cfg.to_dict()},
        **rep,
        "metrics": metrics,
        "training": {k: v for k, v in stats.items() if k != "is_main_process"},
    }
    if cfg.label_words:
        info.update(head="mlm-label-words", label_words=list(cfg.label_words), template=template)
    elif not method.train_weights:
        info["smp_note"] = SMP_NOTE
    if stats["is_main_process"]:  # under DDP only rank 0 writes
        save_model_dir(student, tokenizer, t.output_dir, info, overwrite=t.overwrite or t.resume,
                       sample=_sample_batch(td, tokenizer, student), reload=_reloader(info))
        _cleanup_checkpoints(t)
    return info


def _is_pair(data: DataArgs) -> bool:
    from compress.training.data import TASKS

    return bool(data.text_pair_column or (data.task in TASKS and TASKS[data.task].text_pair_column))


def _reloader(info: dict):
    """How to load a saved result as a classifier: a plain HF classifier, or the label-word wrapper."""
    if info.get("head") != "mlm-label-words":
        return None

    def load(path):
        from transformers import AutoModelForMaskedLM

        tok = load_tokenizer(str(path))
        return LabelWordClassifier(AutoModelForMaskedLM.from_pretrained(path), label_word_ids(tok, info["label_words"]),
                                   tok.mask_token_id)

    return load


def finetune(t: TrainConfig, data: DataArgs, model_name: str | None = None) -> dict:
    """Dense fine-tuning (a teacher or a baseline) with the same data plumbing."""
    if not t.resume:
        check_output_dir(t.output_dir, t.overwrite)
    model_name = resolve_model(model_name)
    load_config(model_name)
    if t.resume:
        _require_checkpoint(t)
    tokenizer = load_tokenizer(model_name)
    td = _load_data(data, tokenizer, t)
    torch.manual_seed(t.seed)
    model = load_classifier(model_name, td.num_labels)
    stats = train(model, tokenizer, td.train, t)
    metrics = _evaluate(model, td, tokenizer, t)
    info = {"method": None, "base_model": model_name, "task": td.spec.name, "recipe": {"train": vars(t)},
            **sparsity_report(model), "metrics": metrics,
            "training": {k: v for k, v in stats.items() if k != "is_main_process"}}
    if stats["is_main_process"]:
        save_model_dir(model, tokenizer, t.output_dir, info, overwrite=t.overwrite or t.resume,
                       sample=_sample_batch(td, tokenizer, model))
        _cleanup_checkpoints(t)
    return info


def _require_checkpoint(t: TrainConfig) -> None:
    ckpt = checkpoint_dir(t.output_dir)
    if not (ckpt.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt.iterdir())):
        raise InvalidConfigError(f"--resume: no checkpoint found in {ckpt}; run without --resume to start fresh")


def _cleanup_checkpoints(t: TrainConfig) -> None:
    import shutil

    ckpt = checkpoint_dir(t.output_dir)
    if ckpt.is_dir() and not getattr(t, "keep_checkpoints", False):
        shutil.rmtree(ckpt, ignore_errors=True)


def evaluate_checkpoint(path: str, data: DataArgs, batch_size: int = 64, max_length: int = 128,
                        max_eval_samples: int | None = None, progress: bool = True) -> dict:
    """Dev metrics of a PyTorch checkpoint (compression.json checksums verified when present)."""
    info = read_compression_json(path) or {}
    tokenizer = load_tokenizer(path)
    t = TrainConfig(eval_batch_size=batch_size, max_length=max_length, eval_max_length=max_length, max_eval_samples=max_eval_samples, progress=progress)
    td = _load_data(data, tokenizer, t, splits=("dev",), template=info.get("template"))
    reload = _reloader(info)
    model = reload(path) if reload else load_classifier(path, td.num_labels)
    return _evaluate(model, td, tokenizer, t)
