"""compress: prune transformer encoders and ship them as smaller, faster ONNX graphs.

The public API (compress/api.py): prune, finetune, evaluate, export_onnx, shrink, quantize, benchmark,
run; their *Config dataclasses; and the Result types they return.
"""

from compress import api
from compress.api import *  # noqa: F403  (the public API is exactly api.__all__)
from compress.core.errors import CompressError
from compress.core.record import LayerKeep
from compress.core.version import __version__

__all__ = ["__version__", "CompressError", "LayerKeep", *api.__all__]
