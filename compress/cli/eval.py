import json

from compress.cli.common import add_data_args, data_args
from compress.cli.flags import add_config_args, config_from_args


def register(sub):
    from compress.api import EvalConfig

    p = sub.add_parser("eval", help="dev metrics (JSON) of a checkpoint directory or an ONNX model")
    p.add_argument("model", help="checkpoint directory, model.onnx, or a directory holding model.onnx")
    add_data_args(p)
    add_config_args(p, EvalConfig, title="evaluation")
    p.add_argument("--output-json", help="also write the metrics to this file")
    p.set_defaults(func=run)


def run(a):
    from compress.api import EvalConfig, evaluate
    from compress.core.artifacts import write_json

    result = evaluate(a.model, data_args(a), config_from_args(EvalConfig, a))
    print(json.dumps(result.report, indent=2))
    if a.output_json:
        write_json(a.output_json, result.report)
