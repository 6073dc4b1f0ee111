"""compress: prune transformer encoders and ship them as smaller, faster ONNX graphs.

The public API (compress/api.py): prune, finetune, evaluate, export_onnx, shrink, quantize, benchmark,
run; their *Config dataclasses; and the Result types they return.

The names load on first use (PEP 562 module __getattr__): every module of the package, exporters/
included, imports compress.core.errors, which runs this file first; importing the API here would pull
in the modules that import those back, a cycle.
"""

import importlib

from compress.core.version import __version__

# The API's public names (compress.api.__all__ is this list), kept here so that listing them does not
# import the API.
_API = (
    "BenchConfig",
    "BenchResult",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "EvalResult",
    "ExportConfig",
    "ExportResult",
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
)
# Where each public name is defined.
_HOMES = {
    "CompressError": "compress.core.errors",
    "LayerKeep": "compress.core.record",
    **dict.fromkeys(_API, "compress.api"),
}

__all__ = ["__version__", "CompressError", "LayerKeep", *_API]


def __getattr__(name: str):
    if name == "api":
        return importlib.import_module("compress.api")
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"api"})
