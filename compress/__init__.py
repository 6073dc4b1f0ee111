"""compress: prune transformer encoders and ship them as smaller, faster ONNX graphs."""

__version__ = "0.1.0"
