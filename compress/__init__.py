"""compress: prune transformer encoders and ship them as smaller, faster ONNX graphs.

The public API (compress/api.py): prune, finetune, evaluate, export_onnx, shrink, quantize, benchmark,
run; their *Config dataclasses; and the Result types they return.
"""

from compress.api import (
    BenchConfig,
    BenchResult,
    DataConfig,
    DistillConfig,
    EvalConfig,
    EvalResult,
    ExportConfig,
    ExportResult,
    PruneConfig,
    PruneResult,
    QuantizeConfig,
    QuantizeResult,
    Result,
    RunConfig,
    RunResult,
    ShrinkConfig,
    ShrinkResult,
    TrainConfig,
    benchmark,
    evaluate,
    export_onnx,
    finetune,
    prune,
    quantize,
    run,
    shrink,
)
from compress.core.errors import CompressError
from compress.core.record import LayerKeep
from compress.core.version import __version__

__all__ = [
    "__version__",
    "BenchConfig",
    "BenchResult",
    "CompressError",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "EvalResult",
    "ExportConfig",
    "ExportResult",
    "LayerKeep",
    "PruneConfig",
    "PruneResult",
    "QuantizeConfig",
    "QuantizeResult",
    "Result",
    "RunConfig",
    "RunResult",
    "ShrinkConfig",
    "ShrinkResult",
    "TrainConfig",
    "benchmark",
    "evaluate",
    "export_onnx",
    "finetune",
    "prune",
    "quantize",
    "run",
    "shrink",
]
