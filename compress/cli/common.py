"""Flags shared by several verbs (data plumbing, training)."""

from __future__ import annotations

import argparse

from compress.core.config import TrainConfig
from compress.training.driver import DataArgs


def add_data_args(p: argparse.ArgumentParser, default_task: str | None = "sst2") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", help=f"built-in task: sst2, mrpc (default: {default_task}, unless data files are given)")
    g.add_argument("--data-dir", help="local GLUE folder holding <task>/train.tsv, dev.tsv (default: $COMPRESS_DATA_DIR)")
    g.add_argument("--train-file", help="generic training file (.tsv, .csv, .json, .jsonl); overrides --task files")
    g.add_argument("--validation-file", help="generic validation file")
    g.add_argument("--text-column")
    g.add_argument("--text-pair-column")
    g.add_argument("--label-column")
    g.add_argument("--num-labels", type=int)


def data_args(a) -> DataArgs:
    # With data files and no --task, the files define the task (generic columns).
    task = a.task or (None if a.train_file or a.validation_file else "sst2")
    return DataArgs(task=task, data_dir=a.data_dir, train_file=a.train_file, validation_file=a.validation_file,
                    text_column=a.text_column, text_pair_column=a.text_pair_column, label_column=a.label_column,
                    num_labels=a.num_labels)


def add_train_args(p: argparse.ArgumentParser, epochs: float = 1.0, lr: float = 3e-5) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--output", "-o", required=True, help="output directory (a Hugging Face checkpoint)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    g.add_argument("--epochs", type=float, default=epochs)
    g.add_argument("--max-steps", type=int, default=-1, help="> 0 overrides --epochs")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--max-length", type=int, default=64, help="training sequence length (eval uses 128)")
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="W = ratio * total steps (LR warm-up, schedule unit)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--save-steps", type=int, default=500, help="periodic checkpoint interval (for --resume)")
    g.add_argument("--logging-steps", type=int, default=25)
    g.add_argument("--max-train-samples", type=int)
    g.add_argument("--max-eval-samples", type=int)
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def train_config(a) -> TrainConfig:
    return TrainConfig(
        output_dir=a.output, epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size, max_length=a.max_length,
        lr=a.lr, weight_decay=a.weight_decay, warmup_ratio=a.warmup_ratio, seed=a.seed, save_steps=a.save_steps,
        logging_steps=a.logging_steps, max_train_samples=a.max_train_samples, max_eval_samples=a.max_eval_samples,
        resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress,
    )


def print_summary(info: dict, output: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{info.get('method') or 'finetune'} -> {output}")
    t.add_column("layer")
    t.add_column("heads kept", justify="right")
    t.add_column("FFN dims kept", justify="right")
    for i, l in enumerate(info.get("layers", [])):
        t.add_row(str(i), str(len(l["heads_kept"])), str(len(l["ffn_dims_kept"])))
    c = Console(stderr=False)
    c.print(t)
    p = info.get("params", {})
    c.print(f"encoder-linear sparsity {info['sparsity']['encoder_linear']:.1%}; params dense {p.get('encoder_linear_dense', 0):,}, "
            f"non-zero {p.get('encoder_linear_nonzero', 0):,}, after head/dim removal {p.get('encoder_linear_after_removal', 0):,}")
    c.print("dev " + ", ".join(f"{k} {v:.4f}" for k, v in info.get("metrics", {}).items())
            + f"; {info['training']['seconds_per_step']:.3f} s/step over {info['training']['steps']} steps")
