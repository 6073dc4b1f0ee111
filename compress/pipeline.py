"""`compress run`: prune -> export -> shrink -> quantize -> eval -> bench from one recipe (a
compress.core.config.RunConfig), with a report. The recipe is saved into the output as recipe.json.

Every task type takes the same steps; what differs is read from its entry in compress.training.tasks:
the metrics (accuracy, EM/F1, entity F1, retrieval and similarity), the sequence lengths, and for
embeddings the teacher (the dense model itself unless one is given) and the graphs' folder, a
sentence-transformers folder with onnx/model.onnx and onnx/model_qint8_avx512_vnni.onnx.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compress.core.artifacts import atomic_dir, check_output_dir, read_compression_json, write_json
from compress.core.config import TASK_LENGTHS, BenchConfig, DataConfig, ExportConfig, QuantizeConfig, RunConfig
from compress.core.errors import InvalidConfigError

console = Console()


def run_pipeline(cfg: RunConfig, output: str) -> dict:
    from compress.report import known_runs, write_report
    from compress.training.tasks import task_type

    t_start = time.time()
    out = Path(output)
    data = cfg.data()
    data.validate()
    task = task_type(data.kind)
    teacher = cfg.prune.distill.teacher
    student = cfg.model or teacher
    if student is None and task.default_teacher_is_student:
        from compress.core.models import resolve_model

        student = resolve_model(None)  # the default model is its own teacher and dense baseline
    dense_src = teacher or student
    if dense_src is None:
        raise InvalidConfigError("give --teacher (a fine-tuned model, also the dense baseline) or --model")
    cfg.prune.validate()
    _check_dense_head(task, dense_src)
    cfg = _task_defaults(cfg, task.name)
    target, cfg = _speed_target(cfg)
    if cfg.fill_steps < 0 or (cfg.fill_steps and cfg.prune.method == "hybrid-filled"):
        raise InvalidConfigError("--fill-steps must be >= 0 and follows a pruning method other than hybrid-filled")
    # Before any work: an output that is (or holds) the teacher or student would replace it at the end.
    check_output_dir(out, cfg.overwrite, inputs=(teacher, student, cfg.data_dir, data.train_file, data.validation_file))
    timings = {}
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        write_json(tmp / "recipe.json", cfg.recipe())
        pruned = _prune(cfg, data, task, student, dense_src, tmp, timings)
        info = read_compression_json(pruned)  # what was written, geometry and checksums included
        models, shrink_report = _export(cfg, task, _dense_folder(task, dense_src, info, tmp), pruned, tmp, timings)
        if cfg.quantize:
            _quantize(models, task.name, timings)
        metrics, eval_batch = _evaluate(cfg, data, task, models, pruned, dense_src, timings)
        with _step(timings, "bench", "5/5 bench"):
            latency = bench_models(models, cfg)
        rows = _rows(models, metrics, latency, info, cfg, eval_batch)
        for row in rows:  # paths inside the run folder, valid once the temporary folder is renamed
            row["path"] = str(Path(row["path"]).relative_to(tmp))
        speed = _speed_summary(read_compression_json(tmp / "pruned"), latency, cfg) if target else None
        timings["total"] = time.time() - t_start
        summary = {
            "recipe": cfg.recipe(),
            "task": info["task"],
            "task_type": task.name,
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
        if any(isinstance(v, dict) for m in metrics.values() for v in m.values()):
            summary["metrics"] = metrics  # the nested ones (entity F1 per type) the table leaves out
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


def _task_defaults(cfg: RunConfig, kind: str) -> RunConfig:
    """The recipe with the task's training length and benchmark length where it leaves them unset
    (sentence classification: 64 and 128; question answering: 384 windows, timed at 384), so
    recipe.json records what ran. A copy: the caller's config is not changed."""
    from compress.task_onnx import bench_seq_len

    train = cfg.prune.train
    if train.max_length is None:
        train = replace(train, max_length=TASK_LENGTHS[kind][0])
    return replace(
        cfg,
        prune=replace(cfg.prune, train=train),
        bench_seq_len=cfg.bench_seq_len or bench_seq_len(kind),
    )


def _check_dense_head(task, dense_src: str) -> None:
    """The dense baseline of a task with a head must have that head, or its graph has nothing to score."""
    if task.name not in ("question-answering", "token-classification"):
        return
    from compress.core.models import load_config, resolve_model

    suffix = "ForQuestionAnswering" if task.name == "question-answering" else "ForTokenClassification"
    archs = getattr(load_config(resolve_model(dense_src)), "architectures", None) or []
    if not any(a.endswith(suffix) for a in archs):
        raise InvalidConfigError(
            f"{dense_src} has no {task.name} head ({', '.join(archs) or 'no architecture'}); give --teacher, a "
            f"model fine-tuned for the task (compress finetune --task-type {task.name} ...): it is the dense "
            "baseline and the distillation teacher"
        )


def _prune(cfg: RunConfig, data: DataConfig, task, student: str | None, dense_src: str, tmp: Path, timings) -> Path:
    """Prune, then (fill_steps) Hybrid Filled from the pruned result; returns the checkpoint to export."""
    from compress.training.driver import prune

    with _step(timings, "prune", "1/5 prune"):
        # Copies: the caller's config stays as given (it is what recipe.json and summary.json record).
        prune_cfg = replace(cfg.prune, train=replace(cfg.prune.train, overwrite=True))
        prune(prune_cfg, data, student, output=tmp / "pruned")
    if not cfg.fill_steps:
        return tmp / "pruned"
    with _step(timings, "fill", "1b/5 fill (hybrid-filled)"):
        # The structure is frozen from here: the speed target was the pruning step's. A task distilled
        # from the dense model by default keeps that teacher, not the pruned model the fill starts from.
        distill = prune_cfg.distill
        if task.default_teacher_is_student and not distill.teacher:
            distill = replace(distill, teacher=dense_src)
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
            distill=distill,
        )
        prune(fill, data, output=tmp / "filled")
    return tmp / "filled"


def _dense_folder(task, dense_src: str, info: dict, tmp: Path) -> str:
    """The checkpoint the dense baseline is exported from: the dense model, or for embeddings from a
    plain encoder a sentence-transformers folder of it with the pruned model's pooling (tmp/dense),
    so both graphs pool alike and both folders load with SentenceTransformer."""
    from compress.core.models import resolve_model

    dense_src = resolve_model(dense_src)
    if task.name != "embedding" or (Path(dense_src) / "modules.json").is_file():
        return dense_src
    from compress.core.models import load_tokenizer
    from compress.tasks.embedding import load_model, save_sentence_transformers_folder

    pooling = info.get("pooling") or {}
    model = load_model(dense_src, pooling.get("mode"), pooling.get("normalize"))
    return str(save_sentence_transformers_folder(model, load_tokenizer(dense_src), tmp / "dense"))


def _export(cfg: RunConfig, task, dense_src: str, pruned: Path, tmp: Path, timings: dict) -> tuple[dict, dict]:
    """The dense baseline and the pruned checkpoint (shrunk, fused) as ONNX: ({name: model.onnx}, shrink report)."""
    from compress.task_onnx import export

    onnx_dir = tmp / "onnx"
    with _step(timings, "export", "2/5 export + shrink"):
        dense = export(dense_src, onnx_dir / "dense", ExportConfig(shrink=False, optimize=cfg.optimize))
        small = export(pruned, onnx_dir / "pruned", ExportConfig(shrink=True, optimize=cfg.optimize))
    return {"dense fp32": dense.path, "pruned fp32": small.path}, small.shrink


def _quantize(models: dict, kind: str, timings: dict) -> None:
    """Dynamic int8 of both graphs, added to `models`: a folder beside each (name-int8), or for a graph
    in a sentence-transformers folder the file beside it that sentence-transformers looks for."""
    from compress.ort.quantize import quantize_onnx
    from compress.task_onnx import INT8_FILE, int8_config

    with _step(timings, "quantize", "3/5 quantize"):
        for name in ("dense", "pruned"):
            src = Path(models[f"{name} fp32"])
            if kind == "embedding":
                res = quantize_onnx(src, src.with_name(INT8_FILE), int8_config(QuantizeConfig(), kind))
            else:
                res = quantize_onnx(src.parent, src.parent.with_name(f"{name}-int8"), QuantizeConfig())
            models[f"{name} int8"] = Path(res.output)


def _evaluate(cfg: RunConfig, data: DataConfig, task, models: dict, pruned: Path, dense_src, timings):
    """Dev metrics of every graph: ({name: metrics}, {name: eval batch size})."""
    from compress.ort.evaluate import is_dynamic_int8

    t = cfg.prune.train.for_task(task.name)
    with _step(timings, "eval", "4/5 eval"):
        # Dynamic int8 results depend on the batch a row is run in (one activation range per batch tensor);
        # batch 1, each row alone, is the answer that does not (compress.ort.evaluate).
        eval_batch = {name: 1 if is_dynamic_int8(path) else 64 for name, path in models.items()}
        if task.name == "sequence-classification":
            metrics = _classifier_metrics(data, models, pruned, eval_batch, t)
        else:
            from compress.ort.evaluate import evaluate_task_onnx

            teacher = _teacher_predict(task, models["dense fp32"], data) if task.name == "embedding" else None
            metrics = {
                name: evaluate_task_onnx(
                    path,
                    data,
                    task.name,
                    batch_size=eval_batch[name],
                    max_length=t.eval_max_length,
                    max_eval_samples=t.max_eval_samples,
                    teacher_predict=teacher,
                )
                for name, path in models.items()
            }
    return metrics, eval_batch


def _classifier_metrics(data: DataConfig, models: dict, pruned: Path, eval_batch: dict, t) -> dict:
    from compress.core.models import load_config, load_tokenizer
    from compress.ort.evaluate import evaluate_onnx
    from compress.training.data import label_names_of, load_task_data

    tok = load_tokenizer(str(pruned))
    td = load_task_data(
        data.task,
        tok,
        **data.source(train=False),
        max_length=t.eval_max_length,
        max_eval_samples=t.max_eval_samples,
        splits=("dev",),
        label_names=label_names_of(load_config(str(pruned))),
    )
    return {name: evaluate_onnx(path, td, eval_batch[name]) for name, path in models.items()}


def _teacher_predict(task, dense_graph: Path, data: DataConfig):
    """The dense PyTorch model every embedding graph's fidelity is measured against (the folder the
    dense graph was exported into: the dense model with the run's pooling), its outputs remembered,
    so the four evaluations embed each text with it once."""
    from compress.tasks.batching import torch_predict

    teacher = task.load_teacher(str(Path(dense_graph).parent.parent), None, data)
    predict = torch_predict(teacher, ("sentence_embedding",))  # all fidelity reads; hidden states would fill memory
    seen: dict = {}

    def cached(batch: dict) -> dict:
        key = tuple((k, v.shape, v.tobytes()) for k, v in sorted(batch.items()))
        if key not in seen:
            seen[key] = predict(batch)
        return seen[key]

    return cached


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
            **{f"dev_{k}": round(v, 4) for k, v in m.items() if isinstance(v, (int, float))},
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
