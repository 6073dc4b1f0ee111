"""Flags shared by several verbs (data plumbing, training), generated from the config dataclasses."""

from __future__ import annotations

import argparse

from compress.cli.flags import add_config_args, config_from_args
from compress.core.config import DataConfig, TrainConfig


def add_data_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p, DataConfig, title="data")


def data_args(a) -> DataConfig:
    return config_from_args(DataConfig, a).resolved()


def add_train_args(p: argparse.ArgumentParser, **defaults) -> None:
    """--output plus every TrainConfig field; `defaults` are this verb's own (e.g. finetune's lr)."""
    p.add_argument("--output", "-o", required=True, help="output directory (a Hugging Face checkpoint)")
    add_config_args(p, TrainConfig, defaults=defaults, title="training")


def train_config(a) -> TrainConfig:
    return config_from_args(TrainConfig, a)


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
    c.print(
        f"encoder-linear sparsity {info['sparsity']['encoder_linear']:.1%}; params dense {p.get('encoder_linear_dense', 0):,}, "
        f"non-zero {p.get('encoder_linear_nonzero', 0):,}, after head/dim removal {p.get('encoder_linear_after_removal', 0):,}"
    )
    c.print(
        "dev "
        + ", ".join(f"{k} {v:.4f}" for k, v in info.get("metrics", {}).items())
        + f"; {info['training']['seconds_per_step']:.3f} s/step over {info['training']['steps']} steps"
    )
    speed = info.get("speed")
    if speed:
        from compress.training.checkpoint import _target_text

        measured = (speed.get("measured") or {}).get("speedup")
        c.print(
            f"speed target {_target_text(speed)}: predicted {speed['predicted_speedup']}x by the "
            f"{speed['unit']} table" + (f", measured {measured}x at {speed['measured']['shape']}" if measured else "")
        )
        for w in speed.get("warnings", []):
            c.print(f"[yellow]warning:[/yellow] {w}")
