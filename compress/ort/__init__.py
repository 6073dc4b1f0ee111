"""ONNX Runtime side: evaluation (evaluate.py), int8 quantization, a wrapper over ORT's quantizer
(quantize.py, with its calibration data in calibration.py), latency benchmarks (bench.py) and the timing
harness they share with the latency tables (timing.py)."""
