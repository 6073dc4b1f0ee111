"""Export a Hugging Face encoder checkpoint to ONNX and prove the graph computes what PyTorch does.

Plain functions, one small table per concern (tasks, inputs), no registry:
  export_checkpoint(...) -> ExportReport   checkpoint dir -> DIR/model.onnx + sidecars, and the report
  (compress.export_onnx is the public wrapper)

Choices, and why:
  * Attention runs as "eager" during export: the SDPA path decomposes into a graph with NaN guards
    that neither our surgery nor ORT's fusions recognise; eager is the same maths.
  * Default exporter: the TorchScript one (torch.onnx.export(dynamo=False)) fed *positional* tensors
    through a small wrapper module, which sidesteps the transformers-5 kwargs failure (`got multiple
    values for argument 'use_cache'`). It is ~20x faster than dynamo on these models and, unlike the
    dynamo graph, its attention-mask pattern is recognised by ORT 1.31's Attention fusion. The dynamo
    exporter is available (exporter="dynamo") and used automatically if the TorchScript one fails.
  * Masked checkpoints are first made canonical with compress.core.sparsity.fold_dead_structure, so every
    removable head / FFN dim has all-zero output weights and the ONNX surgery can find it.
  * Nothing is written unless validation passes: the whole output directory is built in a temporary
    sibling and renamed into place (compress.core.artifacts.atomic_dir).
  * A model no Auto class loads (an encoder with sentence-transformers' pooling inside forward) is
    loaded by the caller and passed in, since this package imports only compress.core; its spec row
    puts the graph in a subfolder of a copy of the checkpoint's model folder (onnx/model.onnx, where
    sentence-transformers looks), with config and tokenizer beside the graph for ONNX tools.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from compress.core.artifacts import (
    COMPRESSION_JSON,
    atomic_dir,
    check_output_dir,
    load_pretrained,
    read_compression_json,
    record_checksums,
    write_json,
)
from compress.core.config import DEFAULT_ATOL, DEFAULT_OPSET, EXPORTER_NAMES
from compress.core.errors import (
    ArtifactError,
    GraphPatternError,
    InvalidConfigError,
    UnsupportedModelError,
    ValidationError,
)
from compress.core.models import check_tokenizer
from exporters.files import SIDECAR_FILES, save_model
from exporters.inputs import load_tokenizer, sample_inputs
from exporters.sessions import checked_diff, make_session, run
from exporters.spec import MODEL_FILE, SENTENCE_TRANSFORMERS_FILES, TASKS, WEIGHT_FILES, ExportSpec

log = logging.getLogger(__name__)


# Files a tokenizer may consist of; copied byte for byte so the ONNX directory is self-contained.
@dataclass
class ExportReport:
    path: Path
    task: str
    exporter: str
    inputs: list[str]
    outputs: list[str]
    validation: dict
    shrink: dict | None = None
    optimize: dict | None = None
    notes: list[str] = field(default_factory=list)
    opset: int = 0


# --------------------------------------------------------------------------------------- model side
def infer_task(config) -> str:
    """Task from config.architectures (e.g. BertForSequenceClassification); base models -> features."""
    for arch in getattr(config, "architectures", None) or []:
        for task, spec in TASKS.items():
            if any(arch.endswith(s) for s in spec.architecture_suffixes) and (
                task != "feature-extraction" or "For" not in arch
            ):
                return task
    return "feature-extraction"


def load_for_task(checkpoint_dir: str | Path, task: str):
    """The model with the task's head, in eval mode with eager attention. Refuses a head that the
    checkpoint does not contain (it would be random)."""
    import transformers

    if task not in TASKS:
        raise InvalidConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    spec = TASKS[task]
    if spec.auto_class is None:
        raise InvalidConfigError(
            f"task {task} exports a model that no transformers Auto class loads; pass the loaded model "
            "(export_checkpoint(model=...), as `compress export` does)"
        )
    cls = getattr(transformers, spec.auto_class)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with our report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The loader every verb uses: a truncated model.safetensors is one line here too, not a traceback.
        model, info = load_pretrained(cls, checkpoint_dir, attn_implementation="eager", output_loading_info=True)
    # Buffers, and for feature extraction the pooler (its output is not exported), may be missing.
    ignorable = ("position_ids",) + (("pooler.",) if task == "feature-extraction" else ())
    missing = [k for k in info.get("missing_keys", []) if not any(s in k for s in ignorable)]
    if missing:
        archs = ", ".join(getattr(model.config, "architectures", None) or ["unknown"])
        raise ArtifactError(
            f"{checkpoint_dir} has no trained weights for the {task} head (missing {missing[0]}"
            f"{' and more' if len(missing) > 1 else ''}); it was saved as {archs}: pass the matching --task"
        )
    model.eval()
    return model


def forward_inputs(model) -> list[str]:
    """input_ids + attention_mask, plus token_type_ids when the model has more than one segment type
    (BERT); RoBERTa (type_vocab_size 1) and DistilBERT (no such input) don't get a useless input."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


class _Positional(torch.nn.Module):
    """Positional tensors in, a tuple of named outputs out: what torch.onnx.export handles best."""

    def __init__(self, model, input_names: list[str], output_names: tuple[str, ...]):
        super().__init__()
        self.model, self.input_names, self.output_names = model, list(input_names), output_names

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.input_names, tensors)), return_dict=True)
        return tuple(out[name] for name in self.output_names)


def max_sequence(config) -> int:
    n = getattr(config, "max_position_embeddings", 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta"):
        n -= 2  # positions start after padding_idx
    return min(48, n)


# --------------------------------------------------------------------------------------- export
def _export_torchscript(wrapper, args, path: Path, input_names, spec: ExportSpec, opset: int) -> None:
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    for name in spec.outputs:
        axes[name] = {0: "batch", 1: "sequence"} if spec.has_sequence_axis(name) else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python control flow on shapes
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(spec.outputs),
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _export_dynamo(wrapper, args, path: Path, input_names, spec: ExportSpec, opset: int) -> None:
    opset = max(opset, 18)  # the dynamo exporter's lowest native opset; converting down is best-effort
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = (tuple({0: batch, 1: seq} for _ in input_names),)  # one entry: the *tensors varargs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            dynamic_shapes=shapes,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(spec.outputs),
            verbose=False,
        )
        program.save(str(path), external_data=False)


EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}
assert tuple(EXPORTERS) == EXPORTER_NAMES


@contextlib.contextmanager
def _quiet_exporters():
    """torch.onnx / onnxscript log progress and advice at INFO/WARNING; the CLI output stays ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_onnx(model, task: str, path: Path, opset: int, exporter: str) -> tuple[str, list[str], list[str]]:
    if exporter not in EXPORTERS:
        raise InvalidConfigError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    spec = TASKS[task]
    names = forward_inputs(model)
    wrapper = _Positional(model, names, spec.outputs).eval()
    # Example batch 2 x 16: sizes 0/1 would be specialised (baked in) by the tracers.
    fill = {"input_ids": 5, "attention_mask": 1}
    example = tuple(torch.full((2, 16), fill.get(n, 0), dtype=torch.long) for n in names)
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    errors = []
    for name in order:
        try:
            with _quiet_exporters():
                EXPORTERS[name](wrapper, example, path, names, spec, opset)
            return name, names, list(spec.outputs)
        except Exception as e:  # exporters raise many types; try the other one, report both if all fail
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            log.warning("ONNX export with the %s exporter failed (%s); trying the next one", name, errors[-1])
    raise ArtifactError("ONNX export failed with every exporter — " + " | ".join(errors))


def _torch_outputs(model, task: str, input_names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(feeds[k]) for k in input_names}, return_dict=True)
    return {name: out[name].float().numpy() for name in TASKS[task].outputs}


def validate_against_torch(onnx_model: onnx.ModelProto, model, task: str, input_names, batches, atol: float) -> dict:
    """Max abs difference ONNX vs PyTorch per batch; ValidationError (with the numbers) above atol times
    the output's scale, max(1, max |PyTorch output|): float32 rounding grows with the values, and a hidden
    state of an encoder reaches ~5 (MiniLM's last_hidden_state), where kernels that sum in another order
    differ by ~1e-4 while logits and unit embeddings stay far below it."""
    sess = make_session(onnx_model, threads=1)
    worst, worst_scaled, shapes = 0.0, 0.0, []
    for feeds in batches:
        ref = _torch_outputs(model, task, input_names, feeds)
        got = run(sess, feeds)
        for name, r in ref.items():
            if got[name].shape != r.shape:
                raise ValidationError(f"ONNX output {name!r} has shape {got[name].shape}, PyTorch {r.shape}")
            diff = checked_diff(r, got[name], name, "exported ONNX", "PyTorch")
            finite = np.abs(r[np.isfinite(r)])
            scale = max(1.0, float(finite.max(initial=0.0)))
            worst, worst_scaled = max(worst, diff), max(worst_scaled, diff / scale)
        shapes.append(list(feeds["input_ids"].shape))
    if not worst_scaled <= atol:
        raise ValidationError(
            f"exported ONNX differs from PyTorch by {worst:.3g} (max abs over batches {shapes}; {worst_scaled:.3g} "
            f"of the output's scale) > atol {atol:g}; try --exporter dynamo, or a looser --atol if this is float noise"
        )
    return {"max_abs_diff": worst, "max_scaled_diff": worst_scaled, "batches": shapes, "atol": atol}


def _fold(model) -> bool:
    """Canonicalise masked structure (exact up to float rounding); False for unsupported families."""
    from compress.core.sparsity import fold_dead_structure

    try:
        fold_dead_structure(model)
        return True
    except UnsupportedModelError:
        return False


def export_checkpoint(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    task: str | None = None,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    exporter: str = "torchscript",
    shrink: bool | None = None,
    optimize: bool = False,
    model=None,
) -> ExportReport:
    """Checkpoint dir -> output_dir/{model.onnx, config.json, tokenizer files, compression.json}.

    `model`: the checkpoint already loaded for `task` (eager attention, eval mode), for tasks whose
    spec has no Auto class (sentence-embedding: an encoder with its pooling, loaded by the caller).
    A task with a spec subfolder writes the checkpoint's model folder (weights, config, tokenizer and
    its other files, e.g. sentence-transformers' modules) with the graph and its sidecars in
    output_dir/<subfolder>/.

    shrink: cut the dead heads / FFN dims (from compression.json, else zero weights) so model.onnx is
    the small graph. None (the default) shrinks whenever there is dead structure: a pruned model must
    not ship unshrunk by accident ("pruned, but not faster"); False keeps the full graph; True always
    runs the surgery. optimize: run ORT's transformer fusions afterwards (kept only if they match).
    Every step is checked against the previous one on the same tokenized batches (atol).
    """
    checkpoint_dir = Path(checkpoint_dir)
    check_output_dir(output_dir, overwrite, inputs=(checkpoint_dir,))  # before any loading work
    structure, config, task, model, tokenizer, notes = _load_checkpoint(checkpoint_dir, task, model)
    spec = TASKS[task]

    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        graph_dir = tmp / spec.subfolder
        graph_dir.mkdir(exist_ok=True)
        path = graph_dir / MODEL_FILE
        # A model past 2 GiB comes out of torch as one file per weight; it is read here and written below
        # with its weights in one model.onnx.data.
        raw = tmp / ".torch-export"
        raw.mkdir()
        used, input_names, output_names = _to_onnx(model, task, raw / MODEL_FILE, opset, exporter)
        if used != exporter:
            notes.append(f"the {exporter} exporter failed; used {used}")
        dense = onnx.load(str(raw / MODEL_FILE))
        shutil.rmtree(raw)
        opset_used = next((o.version for o in dense.opset_import if o.domain in ("", "ai.onnx")), opset)
        batches = sample_inputs(input_names, tokenizer, config.vocab_size, max_sequence(config))
        validation = validate_against_torch(dense, model, task, input_names, batches, atol) if validate else {}
        result = ExportReport(
            Path(output_dir) / spec.subfolder / MODEL_FILE,
            task,
            used,
            input_names,
            output_names,
            validation,
            notes=notes,
            opset=opset_used,
        )

        final = _shrink_and_fuse(dense, structure, config, batches, atol, shrink, optimize, result)
        if final is not dense and validate:  # end to end, against PyTorch itself, not only step by step
            result.validation["final_max_abs_diff"] = validate_against_torch(
                final, model, task, input_names, batches, atol
            )["max_abs_diff"]
        save_model(final, path)

        _write_sidecars(checkpoint_dir, graph_dir, structure, result)
        if spec.subfolder:
            _write_model_folder(checkpoint_dir, tmp, structure, result, spec.subfolder)
    return result


def _load_checkpoint(checkpoint_dir: Path, task: str | None, model):
    """(compression.json, config, task, model in eval mode, tokenizer or None, notes) of a checkpoint that
    can be exported; refusals first, before the weights are read."""
    from transformers import AutoConfig

    if not (checkpoint_dir / "config.json").exists():
        raise ArtifactError(f"{checkpoint_dir} is not a Hugging Face checkpoint (no config.json)")
    structure = read_compression_json(checkpoint_dir, verify=True)  # raises on checksum mismatch
    if structure and structure.get("head") == "mlm-label-words":
        # Its class logits are MLM logits at label words behind a prompt template: a plain export
        # would give a graph with different outputs, so refuse rather than ship something wrong.
        raise ArtifactError(
            f"{checkpoint_dir} is a head-free SMP result (label words read from the MLM head); "
            "ONNX export supports classifier checkpoints: prune without --label-words to export"
        )
    config = AutoConfig.from_pretrained(str(checkpoint_dir))
    task = task or infer_task(config)
    if task not in TASKS:
        raise InvalidConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    model = load_for_task(checkpoint_dir, task) if model is None else model.eval()
    notes = []
    section = (structure or {}).get("hidden")
    if section and section["kept_count"] < section["size"]:
        # Cut in PyTorch: the graph then has plain LayerNorms over the kept dims (what the model computes),
        # and every later step (validation, head/FFN surgery, fusion, int8) sees the narrow stream.
        from compress.core.hidden import slice_hidden

        slice_hidden(model, section["kept"])
        notes.append(f"hidden dimension cut from {section['size']} to {section['kept_count']} before export")
    if not _fold(model):
        notes.append(f"model type {config.model_type!r} has no structure table: exported as is")
    tokenizer = load_tokenizer(checkpoint_dir)
    if tokenizer is None:
        notes.append("no tokenizer in the checkpoint: validated on random token ids")
    else:  # ids past the embedding table would crash the validation in torch, and the graph would ship it
        check_tokenizer(tokenizer, config, checkpoint_dir)
    return structure, config, task, model, tokenizer, notes


def _shrink_and_fuse(dense, structure, config, batches, atol, shrink, optimize, result: ExportReport):
    """The graph to ship: `dense` shrunk (shrink None: when it has dead structure) and then fused (with
    `optimize`); what each step did goes into result.shrink / result.optimize / result.notes."""
    final = dense
    if shrink is None:
        shrink, why = dead_structure(dense, structure, config)
        if not shrink:
            result.notes.append(f"not shrunk: {why}")
    if shrink:
        final, result.shrink = shrink_dense(dense, structure, config, batches, atol)
    if optimize:
        from exporters.optimize import optimize as ort_optimize
        from exporters.surgery.rewrite import normalize_heads

        if not shrink:  # constant per-layer head shapes let ORT's Attention fusion read the head count
            geo = geometry_of(config)
            try:
                final = normalize_heads(dense, geo.head_size if geo else None)
            except GraphPatternError as e:
                result.notes.append(f"head shapes not normalised before fusion ({e})")
        final, result.optimize = ort_optimize(final, batches, atol)
    return final


def _write_sidecars(checkpoint_dir: Path, tmp: Path, structure: dict | None, result: ExportReport) -> None:
    """config.json and the tokenizer files next to model.onnx, and (for a compressed checkpoint) its
    compression.json with a record of the export."""
    for name in SIDECAR_FILES:  # config.json (checked by the caller) and the tokenizer files
        if (checkpoint_dir / name).exists():
            shutil.copy2(checkpoint_dir / name, tmp / name)
    if structure is not None:
        data = copy.deepcopy(structure)
        data["onnx"] = _onnx_record(result, MODEL_FILE)
        write_json(tmp / COMPRESSION_JSON, record_checksums(tmp, data, [MODEL_FILE, "config.json"]))


def _onnx_record(result: ExportReport, file: str) -> dict:
    """compression.json's `onnx` section: what was exported, how, and how it was checked."""
    return {
        "file": file,
        "task": result.task,
        "exporter": result.exporter,
        "opset": result.opset,
        "inputs": result.inputs,
        "outputs": result.outputs,
        "shrunk": result.shrink is not None,
        "optimized": bool(result.optimize and result.optimize["applied"]),
        "validation": result.validation,
    }


def _write_model_folder(checkpoint_dir: Path, tmp: Path, structure: dict | None, result: ExportReport, sub: str):
    """The checkpoint's model folder at the top of the output: weights (masks baked in), config,
    tokenizer, sentence-transformers' files and the module folders modules.json names, so the folder
    loads as the PyTorch model it was exported from; its compression.json also lists the graph."""
    names = [*SIDECAR_FILES, *SENTENCE_TRANSFORMERS_FILES]
    weights = next((w for w in WEIGHT_FILES if (checkpoint_dir / w).is_file()), None)
    for name in names + ([weights] if weights else []):
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, tmp / name)
    for folder in module_folders(checkpoint_dir):
        if folder != sub:
            shutil.copytree(checkpoint_dir / folder, tmp / folder, dirs_exist_ok=True)
    if structure is not None:
        data = copy.deepcopy(structure)
        graph = f"{sub}/{MODEL_FILE}"
        data["onnx"] = _onnx_record(result, graph)
        listed = [n for n in structure.get("files", {}) if (tmp / n).is_file()]
        write_json(tmp / COMPRESSION_JSON, record_checksums(tmp, data, [*listed, graph]))


def module_folders(model_dir: Path) -> list[str]:
    """The folders of a sentence-transformers model's modules (modules.json `path`s) that exist."""
    import json

    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    paths = [m.get("path") for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    return [p for p in paths if isinstance(p, str) and p and (model_dir / p).is_dir()]


def geometry_of(config):
    from compress.core.structure import geometry

    try:
        return geometry(config)
    except UnsupportedModelError:
        return None


def dead_structure(dense: onnx.ModelProto, structure: dict | None, config) -> tuple[bool, str]:
    """Whether the export has heads / FFN dims to cut (compression.json's kept structure, else all-zero
    output weights in the graph), and why not when it has none."""
    from exporters.graph import Graph
    from exporters.surgery.layers import detect_kept, find_layers

    geo = geometry_of(config)
    layers = (structure or {}).get("layers")
    if layers and geo is not None:
        dead = any(
            len(k["heads_kept"]) < geo.num_heads or len(k["ffn_dims_kept"]) < geo.intermediate_size for k in layers
        )
        return dead, "" if dead else "compression.json keeps every head and FFN dim"
    g = Graph(dense)
    try:
        found, _ = find_layers(g, geo.head_size if geo else None)
    except GraphPatternError as e:
        if structure:  # a pruned checkpoint whose graph surgery cannot read: say so, do not ship it silently
            raise GraphPatternError(
                f"{e} (the checkpoint is pruned; pass --no-shrink to export the full graph anyway)"
            ) from e
        return False, f"encoder structure not recognised in the graph ({e})"
    kept = detect_kept(g, found)
    dead = any(len(k.heads) < b.attention.num_heads or len(k.ffn_dims) < b.ffn.width for k, b in zip(kept, found))
    return dead, "" if dead else "no all-zero heads or FFN dims in the graph"


def shrink_dense(dense: onnx.ModelProto, structure: dict | None, config, batches, atol: float):
    """Surgery on a fresh export: kept structure from compression.json when there is one."""
    from compress.core.structure import geometry
    from exporters.surgery.shrink import shrink as shrink_graph

    geo = geometry(config)
    kept = structure.get("layers") if structure else None
    return shrink_graph(dense, kept, geo.num_heads, geo.head_size, sample_inputs=batches, atol=atol)


__all__ = ["TASKS", "ExportReport", "export_checkpoint", "infer_task", "load_tokenizer", "sample_inputs"]
