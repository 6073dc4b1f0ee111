"""`compress run`: prune -> export -> shrink -> quantize -> eval -> bench from one recipe, with a report.

The recipe is a RunConfig (flags, or a YAML/JSON file with the same keys: `prune` holds PruneConfig
fields, `train` and `distill` nest inside it); it is saved into the output as recipe.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compress.core.artifacts import atomic_dir, check_output_dir, read_compression_json, write_json
from compress.core.config import DataConfig, DistillConfig, PruneConfig, TrainConfig, arg, from_dict
from compress.core.errors import InvalidConfigError

console = Console()


@dataclass
class RunConfig:
    model: str | None = arg(
        None, "student (default: the teacher when given, i.e. prune the fine-tuned model; else minilm)", aliases=("-m",)
    )
    task: str = arg("sst2", "sst2 or mrpc")
    data_dir: str | None = arg(None, "GLUE folder holding <task>/train.tsv, dev.tsv (default: $COMPRESS_DATA_DIR)")
    prune: PruneConfig = field(
        default_factory=lambda: PruneConfig(
            method="hybrid",
            lambda_reg=10.0,
            score_lr=0.05,
            lambda_att=1.0,
            lambda_ffn=1.0,
            train=TrainConfig(max_steps=600, batch_size=32, max_length=64, lr=3e-5, warmup_ratio=0.1, logging_steps=50),
            distill=DistillConfig(alpha_ce=0.1, alpha_teacher=0.9, temperature=2.0),
        ),
        metadata={"cli": False},
    )
    # Hybrid Filled (Block Pruning paper, section 4): after hybrid pruning, re-initialise the zeroed
    # weights inside the surviving heads / FFN dims and fine-tune this many steps with the structure
    # frozen: same speed, accuracy recovered (+0.7 points on the main job). 0 skips it.
    fill_steps: int = arg(
        300,
        "then Hybrid Filled: fine-tune this many steps with the structure frozen and the zeroed "
        "weights inside kept heads/dims re-initialised (0: skip)",
    )
    quantize: bool = arg(True, "also quantize the dense and pruned graphs to int8 (dynamic)")
    # ORT transformer fusions after surgery (Attention, BiasGelu: exporters.optimize.fusion_options);
    # faster at batch 1 and 32 on our CPU, int8 is quantized from the fused graph (results/shrink.md, quantize.md)
    optimize: bool = arg(True, "ORT transformer fusions on the exported graphs")
    bench_batch_sizes: list[int] = arg([1, 32], "batch sizes timed", metavar="N")
    bench_seq_len: int = arg(128, "sequence length timed")
    bench_threads: int = arg(2, "ONNX Runtime intra-op threads when timing")
    bench_iterations: int = arg(20, "timed runs per model and shape, interleaved")

    @classmethod
    def load(cls, path: str) -> "RunConfig":
        p = Path(path)
        if not p.exists():
            raise InvalidConfigError(f"recipe file {p} not found")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:
            raise InvalidConfigError(f"cannot parse recipe {p}: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise InvalidConfigError(
                f"recipe {p} must be a mapping of RunConfig keys (model: ..., prune: {{...}}), "
                f"not a {type(data).__name__}"
            )
        prune = data.pop("prune", None)
        cfg = from_dict(cls, data)
        if prune is not None:
            cfg.prune = from_dict(PruneConfig, prune)
        return cfg


def run_pipeline(cfg: RunConfig, output: str, overwrite: bool = False) -> dict:
    from compress.ort.evaluate import evaluate_onnx, is_dynamic_int8
    from compress.training.data import load_task_data
    from compress.training.driver import prune
    from compress.training.models import load_tokenizer
    from exporters.export import export_checkpoint

    t_start = time.time()
    out = Path(output)
    teacher = cfg.prune.distill.teacher
    student = cfg.model or teacher
    dense_src = teacher or student
    if dense_src is None:
        raise InvalidConfigError("give --teacher (a fine-tuned model, also the dense baseline) or --model")
    cfg.prune.validate()
    target, cfg = _speed_target(cfg)
    if cfg.fill_steps < 0 or (cfg.fill_steps and cfg.prune.method == "hybrid-filled"):
        raise InvalidConfigError("--fill-steps must be >= 0 and follows a pruning method other than hybrid-filled")
    # Before any work: an output that is (or holds) the teacher or student would replace it at the end.
    check_output_dir(out, overwrite, inputs=(teacher, student, cfg.data_dir))
    timings = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "recipe.json", asdict(cfg))
        # 1. prune
        console.rule("[bold]1/5 prune")
        t = time.time()
        # Copies: the caller's config stays as given (it is what recipe.json and summary.json record).
        prune_cfg = replace(cfg.prune, train=replace(cfg.prune.train, overwrite=True))
        prune(prune_cfg, DataConfig(task=cfg.task, data_dir=cfg.data_dir), student, output=tmp / "pruned")
        pruned = tmp / "pruned"
        timings["prune"] = time.time() - t
        if cfg.fill_steps:
            console.rule("[bold]1b/5 fill (hybrid-filled)")
            t = time.time()
            # The structure is frozen from here: the speed target was the pruning step's.
            fill = replace(
                prune_cfg,
                method="hybrid-filled",
                source=str(pruned),
                lambda_reg=None,
                sparsity=None,
                target_speedup=None,
                target_latency_ms=None,
                target_flops=None,
                train=replace(prune_cfg.train, max_steps=cfg.fill_steps),
            )
            prune(fill, DataConfig(task=cfg.task, data_dir=cfg.data_dir), output=tmp / "filled")
            pruned = tmp / "filled"
            timings["fill"] = time.time() - t
        info = read_compression_json(pruned)  # what was written, geometry and checksums included
        # 2. export dense baseline and pruned (shrunk + fused)
        console.rule("[bold]2/5 export + shrink")
        t = time.time()
        onnx_dir = tmp / "onnx"
        models = {
            "dense fp32": export_checkpoint(dense_src, onnx_dir / "dense", shrink=False, optimize=cfg.optimize).path,
            "pruned fp32": (
                pr := export_checkpoint(pruned, onnx_dir / "pruned", shrink=True, optimize=cfg.optimize)
            ).path,
        }
        shrink_report = pr.shrink
        timings["export"] = time.time() - t
        # 3. quantize
        if cfg.quantize:
            console.rule("[bold]3/5 quantize")
            from compress.ort.quantize import QuantizeConfig, quantize_onnx

            t = time.time()
            for name in ("dense", "pruned"):
                res = quantize_onnx(onnx_dir / name, onnx_dir / f"{name}-int8", QuantizeConfig())
                models[f"{name} int8"] = (
                    Path(res.output) if Path(res.output).suffix == ".onnx" else Path(res.output) / "model.onnx"
                )
            timings["quantize"] = time.time() - t
        # 4. eval
        console.rule("[bold]4/5 eval")
        t = time.time()
        tok = load_tokenizer(str(pruned))
        td = load_task_data(cfg.task, tok, data_dir=cfg.data_dir, max_length=128, splits=("dev",))
        # Dynamic int8 results depend on the batch a row is run in (one activation range per batch tensor);
        # batch 1, each row alone, is the answer that does not (compress.ort.evaluate, issue 17).
        eval_batch = {name: 1 if is_dynamic_int8(path) else 64 for name, path in models.items()}
        metrics = {name: evaluate_onnx(path, td, eval_batch[name]) for name, path in models.items()}
        timings["eval"] = time.time() - t
        # 5. bench
        console.rule("[bold]5/5 bench")
        t = time.time()
        latency = bench_models(models, cfg)
        timings["bench"] = time.time() - t
        rows = _rows(models, metrics, latency, info, cfg, eval_batch)
        for row in rows:  # paths inside the run folder, valid once the temporary folder is renamed
            row["path"] = str(Path(row["path"]).relative_to(tmp))
        speed = _speed_summary(read_compression_json(tmp / "pruned"), latency, cfg) if target else None
        timings["total"] = time.time() - t_start
        summary = {
            "recipe": asdict(cfg),
            "rows": rows,
            "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
            "shrink": shrink_report,
            "layers": info["layers"],
            "geometry": info.get("geometry"),
            "pruning": {
                "sparsity": info["sparsity"]["encoder_linear"],
                "params": info["params"],
                "seconds_per_step": info["training"]["seconds_per_step"],
            },
        }
        if speed:
            summary["speed"] = speed
        write_json(tmp / "summary.json", summary)
        write_report(tmp, summary, pruned, others=known_runs(out))
    print_table(rows)
    console.print(f"report: {out / 'report.md'}  ({timings['total'] / 60:.1f} min)")
    return summary


def _speed_target(cfg: RunConfig):
    """(the prune step's speed target, the config to run): with a latency target the benchmark also runs
    at its deploy shape and threads, so the measured speedup is the one that was asked for. A copy: the
    caller's config is not changed."""
    from compress.speed.budgeted import deploy_from, target_from

    target = target_from(cfg.prune)
    if target is None or target.kind == "flops":
        return target, cfg
    d = deploy_from(cfg.prune)
    if d.seq != cfg.bench_seq_len:
        console.print(f"benchmark sequence length set to the deploy shape's {d.seq} (was {cfg.bench_seq_len})")
    return target, replace(
        cfg,
        bench_batch_sizes=sorted({*cfg.bench_batch_sizes, d.batch}),
        bench_seq_len=d.seq,
        bench_threads=d.threads or cfg.bench_threads,
    )


def _speed_summary(pruned_info: dict, latency: dict, cfg: RunConfig) -> dict:
    """Requested vs predicted (latency table) vs measured (this run's benchmark) speedup over dense fp32."""
    sp = dict(pruned_info["speed"])
    sp.pop("table", None)
    p = cfg.prune
    if sp["unit"] == "ms":
        from compress.speed.latency import parse_shape

        b, _ = parse_shape(p.deploy_shape)
        name = f"pruned {p.deploy}"
        if name in latency:
            sp["measured_speedup"] = round(latency["dense fp32"][b] / latency[name][b], 3)
            sp["measured_at"] = f"batch {b} x seq {cfg.bench_seq_len}, {name} vs dense fp32, compress bench in this run"
    return sp


def bench_models(models: dict, cfg: RunConfig) -> dict:
    """p50 latency (ms) per model and batch size at cfg.bench_seq_len; compress.bench interleaves models."""
    from compress.ort.bench import BenchConfig, onnx_runner, run_benchmark

    bc = BenchConfig(
        batch_sizes=tuple(cfg.bench_batch_sizes),
        seq_lens=(cfg.bench_seq_len,),
        threads=cfg.bench_threads,
        iterations=cfg.bench_iterations,
    )
    res = run_benchmark([onnx_runner(str(p), bc, label=name) for name, p in models.items()], bc, command="compress run")
    out = {n: {} for n in models}
    for r in res["results"]:
        out[r["model"]][r["batch_size"]] = r["p50_ms"]
    return out


def _rows(models, metrics, latency, info, cfg, eval_batch: dict | None = None) -> list[dict]:
    dense_params = info["params"]["encoder_linear_dense"]
    rows = []
    base = latency["dense fp32"]
    for name, path in models.items():
        m = metrics[name]
        params = info["params"]["encoder_linear_after_removal"] if name.startswith("pruned") else dense_params
        row = {
            "model": name,
            "path": str(path),
            **{f"dev_{k}": round(v, 4) for k, v in m.items()},
            "eval_batch": (eval_batch or {}).get(name, 64),
            "encoder_linear_params": params,
            "size_mb": round(Path(path).stat().st_size / 1e6, 2),
        }
        for b, ms in latency[name].items():
            row[f"p50_ms_b{b}"] = round(ms, 2)
            row[f"speedup_b{b}"] = round(base[b] / ms, 2)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    t = Table(title="compress run")
    keys = [k for k in rows[0] if k != "path"]
    for k in keys:
        t.add_column(k, justify="right" if k != "model" else "left")
    for r in rows:
        t.add_row(*[f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys])
    Console(width=max(console.width, 150)).print(t)  # 8 columns: don't truncate headers on 80-column terminals


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
    from transformers import AutoModelForSequenceClassification

    from compress.report import plot_frontier, plot_kept, plot_pattern

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    plot_pattern(model, directory / "pattern.png", f"{summary['recipe']['prune']['method']}: kept weights per matrix")
    plot_kept(summary["layers"], summary["geometry"], directory / "kept.png")
    rows = summary["rows"]
    b = max(summary["recipe"]["bench_batch_sizes"])
    acc_key = next(k for k in rows[0] if k.startswith("dev_"))
    others = {
        n: s
        for n, s in (others or {}).items()
        if s["recipe"].get("task") == summary["recipe"]["task"] and f"speedup_b{b}" in s["rows"][0]
    }
    points = [{"label": r["model"], "speedup": r[f"speedup_b{b}"], "accuracy": r[acc_key]} for r in rows]
    points += [
        {"label": f"{n}: {r['model']}", "speedup": r[f"speedup_b{b}"], "accuracy": r.get(acc_key, float("nan"))}
        for n, s in others.items()
        for r in s["rows"]
        if r["model"].startswith("pruned")
    ]
    plot_frontier(points, directory / "frontier.png")
    keys = [k for k in rows[0] if k != "path"]
    recipe = summary["recipe"]
    fill = f" + {recipe['fill_steps']} fill steps (hybrid-filled)" if recipe.get("fill_steps") else ""
    lines = [
        f"# compress run — {recipe['prune']['method']}{fill} on {recipe['task']}",
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
        f"{p['seconds_per_step']:.2f} s per training step.",
        "",
        "Latency: ONNX Runtime CPU, p50, sequence length "
        f"{summary['recipe']['bench_seq_len']}, {summary['recipe']['bench_threads']} threads; speedup vs dense fp32 "
        "measured in the same run. Accuracy at eval_batch rows per batch: dynamic int8 at 1, because its "
        "activation ranges are computed per batch and its accuracy moves with the batch "
        "(benchmarks/results/int8_batch_dependence.md).",
        "",
        "| layer | heads kept | FFN dims kept |",
        "|---|---|---|",
    ]
    sp = summary.get("speed")
    if sp:  # one line above the layer table: requested, predicted by the table, measured in this run
        from compress.training.checkpoint import _target_text

        asked = _target_text(sp)
        where = sp.get("deploy")
        text = (
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
        at = lines.index("| layer | heads kept | FFN dims kept |")
        lines[at:at] = [text, ""] + [f"Warning: {w}" for w in sp.get("warnings", [])] + [""] * bool(sp.get("warnings"))
    geo = summary["geometry"]
    for i, l in enumerate(summary["layers"]):
        lines.append(
            f"| {i} | {len(l['heads_kept'])}/{geo['num_heads']} | {len(l['ffn_dims_kept'])}/{geo['intermediate_size']} |"
        )
    if others:
        lines += [
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
    (directory / "report.md").write_text("\n".join(lines))
