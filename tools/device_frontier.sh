#!/usr/bin/env bash
# The frontier on a lent GPU machine (see benchmarks/results/frontier_sst2_h100.md). That machine has no
# network: beforehand, here, put the `datasets`, `dill` and `multiprocess` wheels in .whl/, the SST-2 data in
# .devcarry/data/sst2 and the teacher (config, tokenizer, weights saved as fp16 to fit the 64 MiB transfer) in
# .devcarry/teacher (the pre-trained base likewise in .devcarry/base, for SMP); all git-ignored and carried.
# Usage there: bash tools/device_frontier.sh METHOD ... (LEVELS="0 1 2" by default)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD COMPRESS_DATA_DIR=$PWD/.devcarry/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import pyarrow, transformers, onnxruntime, torch; print('pyarrow', pyarrow.__version__, 'transformers', transformers.__version__, 'ort', onnxruntime.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
nvidia-smi -L; lscpu | grep -m1 'Model name'; nproc
# fp16 -> fp32 copies in /tmp: the teacher, and (for smp-l / smp-s) the pre-trained base in .devcarry/base.
for m in teacher base; do
  [ -d .devcarry/$m ] && [ ! -f /tmp/$m/model.safetensors ] && mkdir -p /tmp/$m && cp .devcarry/$m/*.json .devcarry/$m/*.txt /tmp/$m/ 2>/dev/null; python3 -c "
import os; from safetensors.torch import load_file, save_file
src, dst = '.devcarry/$m/model.safetensors', '/tmp/$m/model.safetensors'
if os.path.exists(src) and not os.path.exists(dst):
    save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(src).items()}, dst, metadata={'format': 'pt'})"
done
[ -f /tmp/base/model.safetensors ] && export COMPRESS_MODEL=/tmp/base
[ -f /tmp/fr_results/frontier_sst2_h100.json ] && cp /tmp/fr_results/frontier_sst2_h100.json benchmarks/results/
for m in "$@"; do for lv in ${LEVELS:-0 1 2}; do  # one entry at a time, so a run cut off keeps what it finished
  echo "=== $m@$lv $(date +%T)"
  python3 benchmarks/frontier.py --teacher /tmp/teacher --steps 600 --int8 --tag _h100 --only $m --levels $lv --work /tmp/fr 2>&1 | grep -v "it/s\]\|examples/s\|^{'loss" | tail -8
  mkdir -p /tmp/fr_results; cp benchmarks/results/frontier_sst2_h100.* /tmp/fr_results/ ; cp benchmarks/results/frontier_sst2_h100.* $OUT/ 2>/dev/null
done; done
echo "=== end $(date +%T)"
