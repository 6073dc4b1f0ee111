import json

from compress.cli.common import add_data_args


def register(sub):
    p = sub.add_parser("eval", help="dev metrics (JSON) of a checkpoint directory or an ONNX model")
    p.add_argument("model", help="checkpoint directory, model.onnx, or a directory holding model.onnx")
    add_data_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime provider for .onnx models")
    p.add_argument("--output-json", help="also write the metrics to this file")
    p.set_defaults(func=run)


def _is_onnx(path: str) -> bool:
    from pathlib import Path

    p = Path(path)
    return p.suffix == ".onnx" or (p.is_dir() and (p / "model.onnx").exists() and not (p / "model.safetensors").exists())


def run(a):
    from compress.core.artifacts import write_json
    from compress.cli.common import data_args

    if _is_onnx(a.model):
        from compress.ort.evaluate import evaluate_onnx_path

        metrics = evaluate_onnx_path(a.model, data_args(a), batch_size=a.batch_size, max_length=a.max_length,
                                     max_eval_samples=a.max_eval_samples, provider=a.provider)
    else:
        from compress.core.errors import ArtifactError
        from compress.training.driver import evaluate_checkpoint
        from pathlib import Path

        if not Path(a.model).exists():
            raise ArtifactError(f"model path {a.model} not found")
        metrics = evaluate_checkpoint(a.model, data_args(a), batch_size=a.batch_size, max_length=a.max_length,
                                      max_eval_samples=a.max_eval_samples)
    out = {"model": a.model, "task": data_args(a).task or "custom", **metrics}
    print(json.dumps(out, indent=2))
    if a.output_json:
        write_json(a.output_json, out)
