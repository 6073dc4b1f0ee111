#!/usr/bin/env bash
# The frontier on a lent GPU machine (see benchmarks/results/frontier_sst2_h100.md). That machine has no
# network: beforehand, here, put the `datasets`, `dill` and `multiprocess` wheels in .whl/, the SST-2 data in
# .devcarry/data/sst2 and the teacher (config, tokenizer, weights saved as fp16 to fit the 64 MiB transfer) in
# .devcarry/teacher; both folders git-ignored and carried. Usage there: bash tools/device_frontier.sh METHOD ...
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD COMPRESS_DATA_DIR=$PWD/.devcarry/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import pyarrow, transformers, onnxruntime, torch; print('pyarrow', pyarrow.__version__, 'transformers', transformers.__version__, 'ort', onnxruntime.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
nvidia-smi -L; lscpu | grep -m1 'Model name'; nproc
if [ ! -f /tmp/teacher/model.safetensors ]; then
  mkdir -p /tmp/teacher && cp .devcarry/teacher/*.json /tmp/teacher/ && python3 -c "
from safetensors.torch import load_file, save_file
sd = load_file('.devcarry/teacher/model.safetensors'); save_file({k: v.float() for k, v in sd.items()}, '/tmp/teacher/model.safetensors')"
fi
[ -f /tmp/fr_results/frontier_sst2_h100.json ] && cp /tmp/fr_results/frontier_sst2_h100.json benchmarks/results/
for m in "$@"; do
  echo "=== $m $(date +%T)"
  python3 benchmarks/frontier.py --teacher /tmp/teacher --steps 600 --int8 --tag _h100 --only $m --work /tmp/fr 2>&1 | grep -v "it/s\]\|examples/s\|^{'loss" | tail -15
  mkdir -p /tmp/fr_results; cp benchmarks/results/frontier_sst2_h100.* /tmp/fr_results/ ; cp benchmarks/results/frontier_sst2_h100.* $OUT/ 2>/dev/null
done
echo "=== end $(date +%T)"
