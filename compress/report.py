"""What people look at: the report of a `compress run` (report.md: the results table, the speed target,
heads / FFN dims kept per layer, the runs beside it) and its pictures: the pruning pattern of every
matrix (like Figure 1 of the Block Pruning paper), heads / FFN dims kept per layer, and accuracy
against speedup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from compress.core.structure import geometry, layer_linears


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def plot_pattern(model, path: str | Path, title: str = "") -> Path:
    """One row per layer: Q, K, V, O, FFN-in (transposed), FFN-out; kept weights dark, heads delimited."""
    plt = _plt()
    geo = geometry(model.config)
    lins = layer_linears(model)
    cols = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
    fig, axes = plt.subplots(
        len(lins),
        len(cols),
        figsize=(2.2 * len(cols) + 4, 1.9 * len(lins)),
        gridspec_kw={"width_ratios": [1, 1, 1, 1, 4, 4]},
        squeeze=False,
    )
    for i, lin in enumerate(lins):
        for j, role in enumerate(cols):
            w = lin[role].weight.detach()
            kept = (w != 0).float()
            # FFN-in is [ffn, hidden]: transpose so both FFN matrices show FFN dims along x.
            img = kept.T if role == "ffn_in" else kept
            img = _downsample(img.numpy(), 96 if role.startswith("ffn") else 48)
            ax = axes[i][j]
            ax.imshow(img, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if role in ("query", "key", "value"):  # heads are row blocks
                for h in range(1, geo.num_heads):
                    ax.axhline(h * img.shape[0] / geo.num_heads - 0.5, color="tab:red", lw=0.4)
            if role == "attn_out":  # heads are column blocks
                for h in range(1, geo.num_heads):
                    ax.axvline(h * img.shape[1] / geo.num_heads - 0.5, color="tab:red", lw=0.4)
            if i == 0:
                ax.set_title(role, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"layer {i}", fontsize=9)
            ax.set_xlabel(f"{float(kept.mean()):.0%} kept", fontsize=7)
    fig.suptitle(title or "pruning pattern (dark = kept; red lines delimit heads)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _downsample(a: np.ndarray, target: int) -> np.ndarray:
    """Average-pool a 0/1 matrix to at most `target` cells a side so large matrices stay readable."""
    fr, fc = max(1, a.shape[0] // target), max(1, a.shape[1] // target)
    r, c = a.shape[0] // fr * fr, a.shape[1] // fc * fc
    return a[:r, :c].reshape(r // fr, fr, c // fc, fc).mean(axis=(1, 3))


def plot_kept(layers: list[dict], geo: dict, path: str | Path) -> Path:
    plt = _plt()
    idx = np.arange(len(layers))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.bar(idx, [len(l["heads_kept"]) for l in layers], color="tab:blue")
    a.axhline(geo["num_heads"], color="grey", ls="--", lw=0.8)
    a.set_title("attention heads kept")
    a.set_xlabel("layer")
    b.bar(idx, [len(l["ffn_dims_kept"]) for l in layers], color="tab:orange")
    b.axhline(geo["intermediate_size"], color="grey", ls="--", lw=0.8)
    b.set_title("FFN dims kept")
    b.set_xlabel("layer")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(
    points: list[dict], path: str | Path, x: str = "speedup", y: str = "accuracy", y_label: str | None = None
) -> Path:
    """points: [{label, speedup, accuracy}] (or another `y` key); a scatter with labels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in points:
        ax.scatter(p[x], p[y])
        ax.annotate(p["label"], (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("ORT CPU speedup vs dense fp32 (batch 32 x 128)" if x == "speedup" else x)
    ax.set_ylabel(y_label or "dev " + y)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def known_runs(output: Path) -> dict[str, dict]:
    """Summaries of the other `compress run` outputs beside this one (siblings of `output`), by folder name.

    Runs are compared by their speedups, each measured against its own dense baseline in its own run,
    so runs from different sessions or machines still sit on one accuracy-vs-speedup chart.
    """
    found = {}
    for f in sorted(Path(output).resolve().parent.glob("*/summary.json")):
        if f.parent.name == Path(output).name or f.parent.name.startswith("."):
            continue
        try:
            s = json.loads(f.read_text())
            if s.get("rows") and s.get("recipe"):
                found[f.parent.name] = s
        except (OSError, ValueError):  # a foreign or half-written file is not ours to judge
            continue
    return found


def _recipe_label(recipe: dict) -> str:
    p = recipe["prune"]
    level = f"lambda {p['lambda_reg']}" if p.get("lambda_reg") is not None else f"sparsity {p.get('sparsity')}"
    fill = f" + {recipe['fill_steps']} fill" if recipe.get("fill_steps") else ""
    return f"{p['method']} {level}, {p['train']['max_steps']} steps{fill}"


def write_report(directory: Path, summary: dict, checkpoint: Path, others: dict[str, dict] | None = None) -> None:
    """report.md of a `compress run` output and its pictures (pattern.png, kept.png, frontier.png);
    `others`: the summaries of runs beside it (known_runs), tabled and plotted with this one."""
    plot_pattern(
        _pruned_model(summary, checkpoint),
        directory / "pattern.png",
        f"{summary['recipe']['prune']['method']}: kept weights per matrix",
    )
    plot_kept(summary["layers"], summary["geometry"], directory / "kept.png")
    rows = summary["rows"]
    b = max(summary["recipe"]["bench_batch_sizes"])
    acc_key = headline_metric(summary)
    others = {
        n: s
        for n, s in (others or {}).items()
        if s["recipe"].get("task") == summary["recipe"]["task"]
        and _task_type(s) == _task_type(summary)
        and f"speedup_b{b}" in s["rows"][0]
    }
    points = [{"label": r["model"], "speedup": r[f"speedup_b{b}"], "metric": r[acc_key]} for r in rows]
    points += [
        {"label": f"{n}: {r['model']}", "speedup": r[f"speedup_b{b}"], "metric": r.get(acc_key, float("nan"))}
        for n, s in others.items()
        for r in s["rows"]
        if r["model"].startswith("pruned")
    ]
    plot_frontier(points, directory / "frontier.png", y="metric", y_label="dev " + acc_key.removeprefix("dev_"))
    (directory / "report.md").write_text("\n".join(_report_lines(summary, others, b, acc_key)))


# The metric the frontier and the runs table show, per task type; sentence classification shows its first
# (accuracy). Embeddings: retrieval, what a retrieval encoder is for.
HEADLINE = {
    "question-answering": "dev_f1",
    "token-classification": "dev_f1",
    "embedding": "dev_retrieval_mrr@10",
}


def _task_type(summary: dict) -> str:
    return summary.get("task_type") or "sequence-classification"  # runs from before task types


def headline_metric(summary: dict) -> str:
    row = summary["rows"][0]
    key = HEADLINE.get(_task_type(summary))
    return key if key in row else next(k for k in row if k.startswith("dev_"))


def _pruned_model(summary: dict, checkpoint: Path):
    """The pruned PyTorch model, for its pruning pattern: loaded as its task's model."""
    kind = _task_type(summary)
    if kind == "sequence-classification":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(checkpoint)
    from compress.training.tasks import task_type

    return task_type(kind).reload(str(checkpoint))


def _report_lines(summary: dict, others: dict[str, dict], b: int, acc_key: str) -> list[str]:
    """report.md's lines: `b` the batch size of the speedups shown, `acc_key` the accuracy column."""
    rows = summary["rows"]
    keys = [k for k in rows[0] if k != "path"]
    recipe = summary["recipe"]
    fill = f" + {recipe['fill_steps']} fill steps (hybrid-filled)" if recipe.get("fill_steps") else ""
    lines = [
        f"# compress run — {recipe['prune']['method']}{fill} on {summary.get('task') or recipe['task']}",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |" for r in rows]
    p = summary["pruning"]
    lines += [
        "",
        f"Encoder-linear sparsity {p['sparsity']:.1%}; {p['params']['encoder_linear_after_removal']:,} of "
        f"{p['params']['encoder_linear_dense']:,} encoder-linear weights left after removing dead heads and FFN dims; "
        f"{p['seconds_per_step']:.2f} s per training step."
        + (
            f" Hidden dimension pruned to {summary['hidden']['kept_count']} of {summary['hidden']['size']}."
            if summary.get("hidden")
            else ""
        ),
        "",
        "Latency: ONNX Runtime CPU, p50, sequence length "
        f"{summary['recipe']['bench_seq_len']}, {summary['recipe']['bench_threads']} threads; speedup vs dense fp32 "
        f"measured in the same run. {_metrics_word(summary)} at eval_batch rows per batch: dynamic int8 at 1, "
        "because its activation ranges are computed per batch and its accuracy moves with the batch "
        "(benchmarks/results/int8_batch_dependence.md).",
        "",
        "| layer | heads kept | FFN dims kept |",
        "|---|---|---|",
    ]
    sp = summary.get("speed")
    if sp:  # one line above the layer table: requested, predicted by the table, measured in this run
        at = lines.index("| layer | heads kept | FFN dims kept |")
        warnings = [f"Warning: {w}" for w in sp.get("warnings", [])]
        lines[at:at] = [_speed_line(sp), ""] + warnings + [""] * bool(warnings)
    if summary.get("real_text"):  # after the padded-shape speedups: the same graphs on the dev rows
        at = lines.index("| layer | heads kept | FFN dims kept |")
        lines[at:at] = _real_text_lines(summary["real_text"]) + [""]
    geo = summary["geometry"]
    for i, l in enumerate(summary["layers"]):
        lines.append(
            f"| {i} | {len(l['heads_kept'])}/{geo['num_heads']} | {len(l['ffn_dims_kept'])}/{geo['intermediate_size']} |"
        )
    if others:
        lines += _other_runs_lines(others, b, acc_key)
    lines += [
        "",
        "![pruning pattern](pattern.png)",
        "",
        "![kept per layer](kept.png)",
        "",
        "![accuracy vs speedup](frontier.png)",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings_seconds"].items()),
        "",
    ]
    return lines


def _real_text_lines(rt: dict) -> list[str]:
    """The real-text benchmark's table: each graph on the dev rows, every batch padded to its own longest row."""
    n = rt["lengths"]
    lines = [
        f"Speed on the dev set's text ({n['rows']:,} rows, tokens per row mean {n['mean']:.1f}, p90 {n['p90']:g}, "
        f"max {n['max']} at most {rt['max_length']}; each batch padded to its longest row; speedup vs dense fp32 "
        "from total times, models interleaved):",
        "",
        "| model | batch | order | sentences/s | p50 ms | p90 ms | p99 ms | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_batch in rt["batches"].items():
        for b, by_order in by_batch.items():
            for order, r in by_order.items():
                lines.append(
                    f"| {name} | {b} | {order} | {r['sentences_s']:.1f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | {r['speedup']:.2f}x |"
                )
    return lines


def _metrics_word(summary: dict) -> str:
    kind = _task_type(summary)
    if kind == "sequence-classification":
        return "Accuracy"
    what = {
        "question-answering": "exact match and F1 (0-100)",
        "token-classification": "entity precision, recall, F1 and word accuracy",
        "embedding": "retrieval (held-out SQuAD articles), MRPC pair similarity and fidelity to the dense model",
    }
    return f"Metrics ({what.get(kind, kind)})"


def _speed_line(sp: dict) -> str:
    """The speed target's sentence: requested, predicted by the latency table, measured in the run."""
    from compress.training.checkpoint import _target_text

    asked = _target_text(sp)
    where = sp.get("deploy")
    return (
        f"Speed target {asked}"
        + (
            f" ({where['precision']} {where['shape']}, {where['threads']} threads, {where['provider']})"
            if where
            else ""
        )
        + f": predicted {sp['predicted_speedup']:.2f}x by the latency table"
        + (f", measured {sp['measured_speedup']:.2f}x ({sp['measured_at']})" if "measured_speedup" in sp else "")
        + " (speedups over dense fp32)."
    )


def _other_runs_lines(others: dict[str, dict], b: int, acc_key: str) -> list[str]:
    """The table of the runs beside this one, each against its own dense baseline."""
    lines = [
        "",
        f"Other runs beside this one (each against its own dense baseline, batch {b}):",
        "",
        f"| run | recipe | pruned fp32 {acc_key} | speedup | pruned int8 {acc_key} | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for n, s in others.items():
        by = {r["model"]: r for r in s["rows"]}
        cells = [
            f"{by[m].get(acc_key, '')} | {by[m][f'speedup_b{b}']}" if m in by else " | "
            for m in ("pruned fp32", "pruned int8")
        ]
        lines.append(f"| {n} | {_recipe_label(s['recipe'])} | {cells[0]} | {cells[1]} |")
    return lines
