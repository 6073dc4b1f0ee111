"""ONNX side of compress: export a (masked) checkpoint to ONNX, validate it against PyTorch, and cut
pruned attention heads and FFN dims out of the graph so ONNX Runtime actually runs fewer FLOPs.
Depends only on compress.core (errors, artifacts, structure tables, the kept-structure record).

Modules:
  exporters.export          checkpoint dir -> ONNX dir, validated against PyTorch (export_checkpoint)
  exporters.surgery.shrink  ModelProto -> smaller ModelProto + report (shrink), and on files (shrink_file)
      .layers               find the encoder layers (matching: .attention, .ffn, .blocks, .quantized)
      .rewrite / .validate  cut heads / FFN dims, check the result
      .report               what was matched, in words
  exporters.optimize        ORT transformer fusions, kept only if outputs match (the one fuse-then-check path)
  exporters.files           model.onnx on disk: resolve and check it, its sidecar files and config.json
  exporters.inputs          inputs to run a graph with: tokenized sentences or seeded random ids
  exporters.sessions        ORT sessions, running and comparing graphs, ORT's logging
  exporters.graph           the small graph wrapper the passes edit
  exporters.spec            what an export looks like per task
files, inputs and sessions import only numpy at module level (onnx, onnxruntime and transformers load
inside the functions), so the CLI parser and the shrink path stay quick.
"""
