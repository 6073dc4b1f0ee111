"""`compress eval MODEL`: dev metrics (JSON) of a checkpoint directory or an ONNX model, of any task
type. Without --task, --task-type or data files the task is the model's own (its compression.json, or
the one beside the graph; else its outputs), sst2 for a model that records none."""

import json

from compress.cli.common import add_data_args
from compress.cli.flags import add_config_args, config_from_args


def register(sub):
    from compress.core.config import EvalConfig

    p = sub.add_parser(
        "eval",
        help="dev metrics (JSON) of a checkpoint directory or an ONNX model",
        description=" ".join(__doc__.split()),
    )
    p.add_argument("model", help="checkpoint directory, model.onnx, or a directory holding model.onnx")
    add_data_args(p)
    add_config_args(p, EvalConfig, title="evaluation")
    p.add_argument("--output-json", help="also write the metrics to this file")
    p.set_defaults(func=run)


def run(a):
    from pathlib import Path

    from compress.api import evaluate
    from compress.core.artifacts import MODEL_FOLDER_FILES, check_output_file, write_json
    from compress.core.config import DataConfig, EvalConfig

    # Before the work, so an unwritable --output-json fails at once rather than after the evaluation,
    # and one naming a file of the model folder is refused instead of replacing it.
    data = config_from_args(DataConfig, a)  # not resolved: without a task, the model's own
    inputs = (a.model, data.validation_file, *(Path(a.model) / n for n in MODEL_FOLDER_FILES))
    check_output_file(a.output_json, inputs=inputs)
    result = evaluate(a.model, config_from_args(EvalConfig, a), data=data)
    print(json.dumps(result.report, indent=2))
    if a.output_json:
        write_json(a.output_json, result.report)
