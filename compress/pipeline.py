"""`compress run`: prune -> export -> shrink -> quantize -> eval -> bench from one recipe (a
compress.core.config.RunConfig), with a report. The recipe is saved into the output as recipe.json.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compress.core.artifacts import atomic_dir, check_output_dir, read_compression_json, write_json
from compress.core.config import BenchConfig, DataConfig, QuantizeConfig, RunConfig
from compress.core.errors import InvalidConfigError

console = Console()


def run_pipeline(cfg: RunConfig, output: str) -> dict:
    from compress.report import known_runs, write_report

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
    check_output_dir(out, cfg.overwrite, inputs=(teacher, student, cfg.data_dir))
    timings = {}
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        write_json(tmp / "recipe.json", cfg.recipe())
        pruned = _prune(cfg, student, tmp, timings)
        info = read_compression_json(pruned)  # what was written, geometry and checksums included
        models, shrink_report = _export(cfg, dense_src, pruned, tmp / "onnx", timings)
        if cfg.quantize:
            _quantize(models, tmp / "onnx", timings)
        metrics, eval_batch = _evaluate(cfg, models, pruned, timings)
        with _step(timings, "bench", "5/5 bench"):
            latency = bench_models(models, cfg)
        rows = _rows(models, metrics, latency, info, cfg, eval_batch)
        for row in rows:  # paths inside the run folder, valid once the temporary folder is renamed
            row["path"] = str(Path(row["path"]).relative_to(tmp))
        speed = _speed_summary(read_compression_json(tmp / "pruned"), latency, cfg) if target else None
        timings["total"] = time.time() - t_start
        summary = {
            "recipe": cfg.recipe(),
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


@contextmanager
def _step(timings: dict, key: str, title: str):
    """One stage of the run: a rule on the console, and its wall time in timings[key]."""
    console.rule(f"[bold]{title}")
    t = time.time()
    yield
    timings[key] = time.time() - t


def _prune(cfg: RunConfig, student: str | None, tmp: Path, timings: dict) -> Path:
    """Prune, then (fill_steps) Hybrid Filled from the pruned result; returns the checkpoint to export."""
    from compress.training.driver import prune

    data = DataConfig(task=cfg.task, data_dir=cfg.data_dir)
    with _step(timings, "prune", "1/5 prune"):
        # Copies: the caller's config stays as given (it is what recipe.json and summary.json record).
        prune_cfg = replace(cfg.prune, train=replace(cfg.prune.train, overwrite=True))
        prune(prune_cfg, data, student, output=tmp / "pruned")
    if not cfg.fill_steps:
        return tmp / "pruned"
    with _step(timings, "fill", "1b/5 fill (hybrid-filled)"):
        # The structure is frozen from here: the speed target was the pruning step's.
        fill = replace(
            prune_cfg,
            method="hybrid-filled",
            source=str(tmp / "pruned"),
            lambda_reg=None,
            sparsity=None,
            target_speedup=None,
            target_latency_ms=None,
            target_flops=None,
            train=replace(prune_cfg.train, max_steps=cfg.fill_steps),
        )
        prune(fill, data, output=tmp / "filled")
    return tmp / "filled"


def _export(cfg: RunConfig, dense_src: str, pruned: Path, onnx_dir: Path, timings: dict) -> tuple[dict, dict]:
    """The dense baseline and the pruned checkpoint (shrunk, fused) as ONNX: ({name: model.onnx}, shrink report)."""
    from exporters.export import export_checkpoint

    with _step(timings, "export", "2/5 export + shrink"):
        dense = export_checkpoint(dense_src, onnx_dir / "dense", shrink=False, optimize=cfg.optimize)
        small = export_checkpoint(pruned, onnx_dir / "pruned", shrink=True, optimize=cfg.optimize)
    return {"dense fp32": dense.path, "pruned fp32": small.path}, small.shrink


def _quantize(models: dict, onnx_dir: Path, timings: dict) -> None:
    """Dynamic int8 of both graphs, added to `models`."""
    from compress.ort.quantize import quantize_onnx

    with _step(timings, "quantize", "3/5 quantize"):
        for name in ("dense", "pruned"):
            res = quantize_onnx(onnx_dir / name, onnx_dir / f"{name}-int8", QuantizeConfig())
            models[f"{name} int8"] = (
                Path(res.output) if Path(res.output).suffix == ".onnx" else Path(res.output) / "model.onnx"
            )


def _evaluate(cfg: RunConfig, models: dict, pruned: Path, timings: dict) -> tuple[dict, dict]:
    """Dev metrics of every graph: ({name: metrics}, {name: eval batch size})."""
    from compress.core.models import load_tokenizer
    from compress.ort.evaluate import evaluate_onnx, is_dynamic_int8
    from compress.training.data import load_task_data

    with _step(timings, "eval", "4/5 eval"):
        tok = load_tokenizer(str(pruned))
        td = load_task_data(cfg.task, tok, data_dir=cfg.data_dir, max_length=128, splits=("dev",))
        # Dynamic int8 results depend on the batch a row is run in (one activation range per batch tensor);
        # batch 1, each row alone, is the answer that does not (compress.ort.evaluate).
        eval_batch = {name: 1 if is_dynamic_int8(path) else 64 for name, path in models.items()}
        metrics = {name: evaluate_onnx(path, td, eval_batch[name]) for name, path in models.items()}
    return metrics, eval_batch


def _speed_target(cfg: RunConfig):
    """(the prune step's speed target, the config to run): with a latency target the benchmark also runs
    at its deploy shape and threads, so the measured speedup is the one that was asked for. A copy: the
    caller's config is not changed."""
    from compress.speed.plan import deploy_from, target_from

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
        from compress.speed.deploy_graph import parse_shape

        b, _ = parse_shape(p.deploy_shape)
        name = f"pruned {p.deploy}"
        if name in latency:
            sp["measured_speedup"] = round(latency["dense fp32"][b] / latency[name][b], 3)
            sp["measured_at"] = f"batch {b} x seq {cfg.bench_seq_len}, {name} vs dense fp32, compress bench in this run"
    return sp


def bench_models(models: dict, cfg: RunConfig) -> dict:
    """p50 latency (ms) per model and batch size at cfg.bench_seq_len, interleaved as `compress bench` times them."""
    from compress.ort.bench import onnx_runner, run_benchmark

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
