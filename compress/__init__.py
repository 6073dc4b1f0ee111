"""compress: prune transformer encoders and ship them as smaller, faster ONNX graphs."""

from compress.core.version import __version__

__all__ = ["__version__"]
