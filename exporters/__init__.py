"""ONNX side of compress: export a (masked) checkpoint to ONNX, validate it against PyTorch, and cut
pruned attention heads and FFN dims out of the graph so ONNX Runtime actually runs fewer FLOPs.
Depends only on compress.core (errors, artifacts, structure tables, the kept-structure record).

Modules:
  exporters.export          checkpoint dir -> ONNX dir, validated against PyTorch (export_checkpoint)
  exporters.surgery.shrink  ModelProto -> smaller ModelProto + report (shrink), and on files (shrink_file)
      .match / .rewrite / .validate   the passes shrink runs
  exporters.optimize        ORT transformer fusions, kept only if outputs match (the one fuse-then-check path)
  exporters.toolbox         sessions, sample inputs, sidecar files, ORT logging, graph comparison
  exporters.graph           the small graph wrapper the passes edit
  exporters.spec            what an export looks like per task
"""
