#!/usr/bin/env bash
# ONNX Runtime's CUDA execution provider on a lent GPU machine (benchmarks/results/cuda_h100.*). That machine
# has no network and its image holds CPU onnxruntime only: the onnxruntime-gpu wheel (CUDA 13 build, matching the
# image's torch) is carried, unpacked, in /tmp/ortgpu; CUDA and cuDNN come from the image's nvidia-* wheels
# (onnxruntime.preload_dlls). Run after tools/device_frontier.sh, which leaves the teacher in /tmp/teacher and
# the frontier's ONNX graphs in /tmp/fr/sst2. Usage there: bash tools/device_cuda.sh ENTRY_DIR ...
export PYTHONPATH=/tmp/ortgpu:/tmp/site:$PWD COMPRESS_DATA_DIR=$PWD/.devcarry/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || exit 1
W=/tmp/fr/sst2
models=("$W/dense-onnx"); labels=(dense)
for e in "$@"; do models+=("$W/$e/onnx"); labels+=("$e"); done
python3 -m compress bench "${models[@]}" --labels "${labels[@]}" --provider cuda --batch-sizes 1 32 128 \
  --seq-lens 128 --warmup 20 --iterations 200 --torch /tmp/teacher --json benchmarks/results/cuda_h100.json
cp benchmarks/results/cuda_h100.json $OUT/ 2>/dev/null
# Accuracy on the GPU must equal the CPU's (same graph): the dense export and the last entry.
for m in "$W/dense-onnx" "${models[-1]}"; do python3 -m compress eval "$m" --task sst2 --provider cuda; done
python3 -m pytest -q -p no:cacheprovider tests/test_bench.py tests/test_onnx_runtime.py 2>&1 | tail -3
