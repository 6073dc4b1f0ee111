"""ONNX side of compress: export a (masked) checkpoint to ONNX, validate it against PyTorch, and cut
pruned attention heads and FFN dims out of the graph so ONNX Runtime actually runs fewer FLOPs.

Public entry points:
  exporters.onnx_export.export_onnx / export_checkpoint  — checkpoint dir -> ONNX dir (validated)
  exporters.surgery.shrink                               — ModelProto -> smaller ModelProto + report
  exporters.surgery.shrink_file                          — the same on files (checked, atomic write)
  compress.compact.load_compact                          — the PyTorch counterpart (physically smaller modules)
  exporters.optimize.optimize                            — optional ORT transformer fusions, checked
"""
