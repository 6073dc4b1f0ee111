"""`compress run`: prune -> export -> shrink -> quantize -> eval -> bench from one recipe (a
compress.core.config.RunConfig), with a report. The recipe is saved into the output as recipe.json.

The run works in .OUTPUT.partial beside the output (renamed onto it at the end), which survives a kill; its
stages.json records each finished stage (compress.core.stages), so `--resume` skips those and continues an
unfinished prune or fill from its last periodic checkpoint.

Every task type takes the same steps; what differs is read from its entry in compress.training.tasks:
the metrics (accuracy, EM/F1, entity F1, retrieval and similarity), the sequence lengths, and for
embeddings the teacher (the dense model itself unless one is given) and the graphs' folder, a
sentence-transformers folder with onnx/model.onnx and onnx/model_qint8_avx512_vnni.onnx.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compress.core.artifacts import (
    atomic_dir,
    check_output_dir,
    partial_dir,
    read_compression_json,
    resumable_dir,
    write_json,
)
from compress.core.config import (
    TASK_LENGTHS,
    BenchConfig,
    DataConfig,
    ExportConfig,
    QuantizeConfig,
    RunConfig,
    bench_length,
    default_deploy_shape,
)
from compress.core.errors import InvalidConfigError
from compress.core.stages import Stages, fingerprint, has_progress, kill_point, kill_step, open_stages

console = Console()


def run_pipeline(cfg: RunConfig, output: str) -> dict:
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
    target, cfg = _speed_target(cfg, _deploy_shape(cfg, data, student or dense_src))
    if cfg.fill_steps < 0 or (cfg.fill_steps and cfg.prune.method == "hybrid-filled"):
        raise InvalidConfigError("--fill-steps must be >= 0 and follows a pruning method other than hybrid-filled")
    # Before any work: an output that is (or holds) the teacher or student would replace it at the end.
    check_output_dir(out, cfg.overwrite, inputs=(teacher, student, cfg.data_dir, data.train_file, data.validation_file))
    inputs = fingerprint(_inputs(data, teacher, student))
    with resumable_dir(out, overwrite=cfg.overwrite, resume=cfg.resume, keep=has_progress) as (tmp, earlier):
        if cfg.resume and not earlier:
            console.print(f"--resume: no interrupted run in {partial_dir(out)}; starting from scratch")
        stages = open_stages(tmp, cfg.recipe(), inputs, earlier, _log, stale=("*.checkpoints",))
        try:
            summary, rows = _run_stages(stages, cfg, data, task, student, dense_src, target, tmp, out)
        except BaseException:
            if has_progress(tmp):
                console.print(
                    f"[yellow]stopped: the finished stages and training checkpoints are kept in {tmp}; "
                    "run the same command with --resume to continue from there"
                )
            raise
    if stages.skipped:
        console.print(f"resumed: skipped {', '.join(stages.skipped)} (finished in an earlier attempt)")
    print_table(rows)
    console.print(f"report: {out / 'report.md'}  ({(time.time() - t_start) / 60:.1f} min)")
    return summary


def _run_stages(stages: Stages, cfg: RunConfig, data: DataConfig, task, student, dense_src, target, tmp: Path, out):
    """The stages in order, each skipped when it finished in an earlier attempt (compress.core.stages). A
    stage's result is JSON (paths relative to the work folder `tmp`), whether computed now or read back.
    A new stage is one more stages.run call, given the paths it writes as its outputs."""
    from compress.report import known_runs, write_report

    t_start = time.time()
    write_json(tmp / "recipe.json", cfg.recipe())
    stages.run("prune", "1/5 prune", lambda: _prune(cfg, data, student, tmp / "pruned"), outputs=("pruned",))
    checkpoint = tmp / "pruned"
    if cfg.fill_steps:
        stages.run(
            "fill", "1b/5 fill (hybrid-filled)", lambda: _fill(cfg, data, task, dense_src, tmp), outputs=("filled",)
        )
        checkpoint = tmp / "filled"
    info = read_compression_json(checkpoint)  # what was written, geometry and checksums included
    exported = stages.run(
        "export",
        "2/5 export + shrink",
        lambda: _export(cfg, task, dense_src, info, checkpoint, tmp),
        outputs=("dense", "onnx/dense", "onnx/pruned"),
    )
    models = {name: tmp / rel for name, rel in exported["models"].items()}
    if cfg.quantize:
        int8 = _int8_paths(models, task.name)
        done = stages.run(
            "quantize",
            "3/5 quantize",
            lambda: _quantize(models, int8, task.name, tmp),
            outputs=tuple(str(p.relative_to(tmp)) for p in int8.values()),
        )
        models.update({name: tmp / rel for name, rel in done["models"].items()})
    evaluated = stages.run("eval", "4/5 eval", lambda: _evaluate(cfg, data, task, models, checkpoint))
    metrics, eval_batch = evaluated["metrics"], evaluated["eval_batch"]
    benched = stages.run("bench", "5/5 bench", lambda: {"latency": bench_models(models, cfg)})
    latency = {name: {int(b): ms for b, ms in by_batch.items()} for name, by_batch in benched["latency"].items()}
    real_text = None
    if cfg.bench_data:
        real_text = stages.run(
            "bench-data", "5b/5 bench on the dev set's text", lambda: bench_real_text(models, cfg, data)
        )

    rows = _rows(models, metrics, latency, info, cfg, eval_batch)
    for row in rows:  # paths inside the run folder, valid once the work folder is renamed
        row["path"] = str(Path(row["path"]).relative_to(tmp))
    speed = _speed_summary(read_compression_json(tmp / "pruned"), latency, cfg) if target else None
    # A skipped stage's time is that of the attempt that ran it; total is this attempt's.
    timings = {**stages.timings, "total": time.time() - t_start}
    summary = {
        "recipe": cfg.recipe(),
        "task": info["task"],
        "task_type": task.name,
        "rows": rows,
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "shrink": exported["shrink"],
        "layers": info["layers"],
        "hidden": info.get("hidden"),
        "geometry": info.get("geometry"),
        "pruning": {
            "sparsity": info["sparsity"]["encoder_linear"],
            "params": info["params"],
            "seconds_per_step": info["training"]["seconds_per_step"],
        },
    }
    if stages.skipped:
        summary["resumed"] = {"skipped_stages": stages.skipped}
    if any(isinstance(v, dict) for m in metrics.values() for v in m.values()):
        summary["metrics"] = metrics  # the nested ones (entity F1 per type) the table leaves out
    if speed:
        summary["speed"] = speed
    if real_text:
        summary["real_text"] = real_text
    write_json(tmp / "summary.json", summary)
    write_report(tmp, summary, checkpoint, others=known_runs(out))
    return summary, rows


def _log(text: str, rule: bool = False) -> None:
    if rule:
        console.rule(f"[bold]{text}")
    else:
        console.print(text)


def _inputs(data: DataConfig, teacher: str | None, student: str | None) -> dict:
    """What the run reads, for the stage record's fingerprint: the models, and the data files, else the data
    folder (a built-in task reads its task folder; embeddings read several)."""
    from compress.core.models import resolve_model
    from compress.training.data import data_dir_from_env

    found = {"teacher": teacher and resolve_model(teacher), "student": student and resolve_model(student)}
    files = [f for spec in (data.train_file, data.validation_file) if spec for f in spec.split(",")]
    if files:
        found.update({f"data file {i}": f for i, f in enumerate(files)})
    else:
        root = data_dir_from_env(data.data_dir)
        found["data"] = str(root) if root else data.task  # no folder: a hub dataset, named only
    return found


def _task_defaults(cfg: RunConfig, kind: str) -> RunConfig:
    """The recipe with the task's training length and benchmark length where it leaves them unset
    (sentence classification: 64 and 128; question answering: 384 windows, timed at 384), so
    recipe.json records what ran. A copy: the caller's config is not changed."""
    train = cfg.prune.train
    if train.max_length is None:
        train = replace(train, max_length=TASK_LENGTHS[kind][0])
    return replace(
        cfg,
        prune=replace(cfg.prune, train=train),
        bench_seq_len=cfg.bench_seq_len or bench_length(kind),
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


def _prune(cfg: RunConfig, data: DataConfig, student: str | None, output: Path) -> dict:
    from compress.training.driver import prune

    # Copies: the caller's config stays as given (it is what recipe.json and summary.json record).
    train = replace(cfg.prune.train, overwrite=True, resume=_has_checkpoint(output))
    prune(replace(cfg.prune, train=train), data, student, output=output, callbacks=_kill_callbacks("prune"))
    return {"checkpoint": output.name}


def _fill(cfg: RunConfig, data: DataConfig, task, dense_src: str, tmp: Path) -> dict:
    """Hybrid Filled from the pruned result (tmp/pruned) into tmp/filled."""
    from compress.training.driver import prune

    # The structure is frozen from here: the speed target was the pruning step's. A task distilled
    # from the dense model by default keeps that teacher, not the pruned model the fill starts from.
    distill = cfg.prune.distill
    if task.default_teacher_is_student and not distill.teacher:
        distill = replace(distill, teacher=dense_src)
    output = tmp / "filled"
    train = replace(cfg.prune.train, max_steps=cfg.fill_steps, overwrite=True, resume=_has_checkpoint(output))
    fill = replace(
        cfg.prune,
        method="hybrid-filled",
        source=str(tmp / "pruned"),
        lambda_reg=None,
        sparsity=None,
        target_speedup=None,
        target_latency_ms=None,
        target_flops=None,
        prune_hidden=False,  # the source's hidden dims are held through its compression.json record
        train=train,
        distill=distill,
    )
    prune(fill, data, output=output, callbacks=_kill_callbacks("fill"))
    return {"checkpoint": output.name}


def _has_checkpoint(output: Path) -> bool:
    """Whether an unfinished attempt of this training stage left a periodic checkpoint to continue from."""
    from transformers.trainer_utils import get_last_checkpoint

    from compress.training.loop import checkpoint_dir

    ckpt = checkpoint_dir(output)
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    if last:
        console.print(f"{output.name}: continuing from its periodic checkpoint {Path(last).name}")
    return last is not None


def _kill_callbacks(stage: str) -> list:
    """The fault-injection point inside a training stage (compress.core.stages.kill_point), for tests."""
    if kill_step(stage) is None:
        return []
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            kill_point(stage, state.global_step)

    return [KillAt()]


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
    with atomic_dir(tmp / "dense", overwrite=True) as folder:
        save_sentence_transformers_folder(model, load_tokenizer(dense_src), folder)
    return str(tmp / "dense")


def _export(cfg: RunConfig, task, dense_src: str, info: dict, pruned: Path, tmp: Path) -> dict:
    """The dense baseline and the pruned checkpoint (shrunk, fused) as ONNX: {models: {name: model.onnx
    relative to tmp}, shrink: the shrink report}."""
    from compress.task_onnx import export

    onnx_dir = tmp / "onnx"
    dense_src = _dense_folder(task, dense_src, info, tmp)
    dense = export(dense_src, onnx_dir / "dense", ExportConfig(shrink=False, optimize=cfg.optimize))
    small = export(pruned, onnx_dir / "pruned", ExportConfig(shrink=True, optimize=cfg.optimize))
    models = {"dense fp32": dense.path, "pruned fp32": small.path}
    return {"models": {name: str(Path(p).relative_to(tmp)) for name, p in models.items()}, "shrink": small.shrink}


def _int8_paths(models: dict, kind: str) -> dict:
    """Where dynamic int8 of each fp32 graph goes: a folder beside its folder (name-int8), or for a graph
    in a sentence-transformers folder the file beside it that sentence-transformers looks for."""
    from compress.task_onnx import INT8_FILE

    out = {}
    for name in ("dense", "pruned"):
        src = Path(models[f"{name} fp32"])
        out[f"{name} int8"] = src.with_name(INT8_FILE) if kind == "embedding" else src.parent.with_name(f"{name}-int8")
    return out


def _quantize(models: dict, int8: dict, kind: str, tmp: Path) -> dict:
    """Dynamic int8 of both graphs into the `int8` paths: {models: {name: graph relative to tmp}}."""
    from compress.ort.quantize import quantize_onnx
    from compress.task_onnx import int8_config

    done = {}
    for name in ("dense", "pruned"):
        src = Path(models[f"{name} fp32"])
        if kind == "embedding":
            res = quantize_onnx(src, int8[f"{name} int8"], int8_config(QuantizeConfig(), kind))
        else:
            res = quantize_onnx(src.parent, int8[f"{name} int8"], QuantizeConfig())
        done[f"{name} int8"] = str(Path(res.output).relative_to(tmp))
    return {"models": done}


def _evaluate(cfg: RunConfig, data: DataConfig, task, models: dict, pruned: Path) -> dict:
    """Dev metrics of every graph: {metrics: {name: metrics}, eval_batch: {name: eval batch size}}."""
    from compress.ort.evaluate import is_dynamic_int8

    t = cfg.prune.train.for_task(task.name)
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
    return {"metrics": metrics, "eval_batch": eval_batch}


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


def _speed_target(cfg: RunConfig, deploy_shape: str):
    """(the prune step's speed target, the config to run): with a latency target the benchmark also runs
    at its deploy shape and threads, so the measured speedup is the one that was asked for. A copy: the
    caller's config is not changed. `deploy_shape` is the recipe's with a length read from the data made
    concrete (the prune step resolves BATCHxdata alike and records how)."""
    from compress.speed.plan import deploy_from, target_from

    target = target_from(cfg.prune)
    if target is None or target.kind == "flops":
        return target, cfg
    d = deploy_from(replace(cfg.prune, deploy_shape=deploy_shape))
    if d.seq != cfg.bench_seq_len:
        console.print(f"benchmark sequence length set to the deploy shape's {d.seq} (was {cfg.bench_seq_len})")
    return target, replace(
        cfg,
        bench_batch_sizes=sorted({*cfg.bench_batch_sizes, d.batch}),
        bench_seq_len=d.seq,
        bench_threads=d.threads or cfg.bench_threads,
    )


def _deploy_shape(cfg: RunConfig, data: DataConfig, student: str) -> str:
    """The recipe's --deploy-shape made concrete as the prune step makes it (compress.speed.plan)."""
    from compress.core.models import load_tokenizer, resolve_model
    from compress.speed.plan import concrete_deploy_shape

    max_length = cfg.prune.train.for_task(data.kind).eval_max_length
    return concrete_deploy_shape(
        cfg.prune, data.kind, data, lambda: load_tokenizer(resolve_model(student)), max_length
    )[0]


def _speed_summary(pruned_info: dict, latency: dict, cfg: RunConfig) -> dict:
    """Requested vs predicted (latency table) vs measured (this run's benchmark) speedup over dense fp32."""
    sp = dict(pruned_info["speed"])
    sp.pop("table", None)
    p = cfg.prune
    if sp["unit"] == "ms":
        b = int(
            (p.deploy_shape or default_deploy_shape(None)).lower().partition("x")[0]
        )  # the batch (its length may be read from the data)
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


def bench_real_text(models: dict, cfg: RunConfig, data: DataConfig) -> dict:
    """Every graph on the dev set's own rows, each batch padded to its longest row, in arrival order and
    length-bucketed, at the benchmark's batch sizes above 1 (batch 1 has no padding to differ by):
    {lengths: token-length stats, max_length, batches: {name: {batch: {bucketing: sentences_s, p50_ms,
    p90_ms, p99_ms, total_s, speedup vs dense fp32}}}}."""
    from compress.ort.bench_data import bench_on_data

    sizes = [b for b in cfg.bench_batch_sizes if b > 1] or [32]
    res = bench_on_data(
        {name: str(p) for name, p in models.items()},
        data,
        sizes,
        cfg.bench_threads,
        max_length=cfg.prune.train.for_task(data.kind).eval_max_length,
        max_samples=cfg.bench_data_samples or None,
        progress=lambda msg: console.print(f"[dim]timing {msg}[/dim]"),
    )
    return {"lengths": res["data"]["lengths"], "max_length": res["data"]["max_length"], "batches": res["summary"]}


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
