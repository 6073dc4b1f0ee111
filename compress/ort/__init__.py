"""ONNX Runtime side: sessions and evaluation, int8 quantization (a wrapper over ORT's quantizer), latency benchmarks."""
