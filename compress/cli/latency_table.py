"""`compress latency-table MODEL`: build (or read from the cache) and print the latency table of a deployment."""

from __future__ import annotations

DEPLOY_FIELDS = ("deploy", "deploy_shape", "deploy_threads", "deploy_provider")


def deploy_config(a):
    """The deployment of PruneConfig's deploy_* flags (one source of their defaults) as a DeployConfig."""
    from dataclasses import replace

    from compress.cli.flags import config_from_args
    from compress.core.config import PruneConfig
    from compress.speed.plan import deploy_from

    c = config_from_args(PruneConfig, a)
    return deploy_from(replace(c, prune_hidden=bool(getattr(a, "hidden_axis", False))))


def register(sub):
    p = sub.add_parser(
        "latency-table",
        help="measure the per-layer latency table of a model on this machine (cached)",
        description="Times graphs made by our own export + surgery of MODEL (attention with h heads, FFN "
        "with f dims, the fixed part) with ONNX Runtime at the deployment shape and precision. The table is "
        "cached in $COMPRESS_CACHE_DIR/latency or ~/.cache/compress/latency and reused by "
        "`compress prune --target-speedup`.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", help="a local model dir or hub name (default: minilm)")
    from compress.cli.flags import add_config_args
    from compress.core.config import PruneConfig

    add_config_args(p, PruneConfig, only=DEPLOY_FIELDS, title="deployment target (latency table)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per graph, interleaved (default: %(default)s)")
    p.add_argument(
        "--prune-hidden",
        dest="hidden_axis",
        action="store_true",
        help="also measure at smaller hidden sizes (1/4, 1/2, 3/4): the table `compress prune --prune-hidden` uses",
    )
    p.add_argument("--rebuild", action="store_true", help="measure again even when a cached table exists")
    p.add_argument("--json", dest="json_path", help="also write the table to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(a):
    from rich.console import Console
    from rich.table import Table

    from compress.speed.table import load_or_build_table

    cfg = deploy_config(a)
    cfg.repeats = a.repeats
    table, path, cached = load_or_build_table(a.model, cfg, rebuild=a.rebuild, progress=not a.no_progress)
    if a.json_path:
        table.save(a.json_path)
    c = Console()
    k = table.key
    t = Table(
        title=f"{k['model']['model_type']} L{table.num_layers} on {k['device']} ({k['provider']}, ORT {k['onnxruntime']}, "
        f"{k['threads']} threads), {k['precision']} {k['batch']}x{k['seq']}: ms per layer"
    )
    t.add_column("heads kept", justify="right")
    t.add_column("attention ms", justify="right")
    t.add_column("FFN dims kept", justify="right")
    t.add_column("FFN ms", justify="right")
    rows = max(len(table.attn_ms), len(table.ffn_grid))
    for i in range(rows):
        t.add_row(
            str(i) if i < len(table.attn_ms) else "",
            f"{table.attn_ms[i]:.3f}" if i < len(table.attn_ms) else "",
            str(table.ffn_grid[i]) if i < len(table.ffn_grid) else "",
            f"{table.ffn_ms[i]:.3f}" if i < len(table.ffn_grid) else "",
        )
    c.print(t)
    if table.hidden_rows:
        ht = Table(title="hidden axis: ms per layer at each hidden size (all heads / all FFN dims kept)")
        for col in ("hidden size", "fixed ms", "attention ms", "FFN ms", "predicted dense ms"):
            ht.add_column(col, justify="right")
        for k in table.hidden_sizes:
            at = table.at_hidden(k)
            ht.add_row(
                str(k),
                f"{at.fixed_ms:.3f}",
                f"{at.attn_ms[-1]:.3f}",
                f"{at.ffn_ms[-1]:.3f}",
                f"{at.predicted_dense_ms:.3f}",
            )
        c.print(ht)
    c.print(
        "hidden sizes measured: "
        + (", ".join(map(str, table.hidden_sizes)) if table.hidden_rows else "the full size only (no hidden axis)")
    )
    c.print(
        f"fixed (embeddings, LayerNorms, classifier): {table.fixed_ms:.3f} ms; dense measured {table.dense_ms:.3f} ms, "
        f"predicted from the table {table.predicted_dense_ms:.3f} ms; max speedup {table.dense_ms / table.fixed_ms:.1f}x"
    )
    c.print(f"{'read from' if cached else 'written to'} {path}")
