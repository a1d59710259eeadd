#!/usr/bin/env bash
# The GPU checks of the open targets in one device call (untested until a GPU is lent):
# CUDA tests, the default model's inference time at 164x205x205 (issue target < 1 s on an H100),
# TKD/TV inversion times, and a 2-head evaluation on CUDA. Results go to $OUT (the device tool's
# output folder). Prepare the wheels here first (bash scripts/device_wheels.sh), then run
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
# and copy the tables into docs/benchmarks.md with the device named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dlqsm_device_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export WANDB_MODE=disabled
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/device.txt" 2>&1
if python3 -c "import pytest" 2>/dev/null; then
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.txt" 2>&1
fi
timeout 120 python3 scripts/benchmark_inference.py --devices cuda --shapes 164x205x205 \
    --repeats 5 --out "$OUT/inference_cuda.md" > "$OUT/inference_cuda.log" 2>&1
timeout 120 python3 scripts/benchmark_inversion.py --device cuda --methods tkd tv \
    --shapes 164x205x205 --out "$OUT/inversion_cuda.md" > "$OUT/inversion_cuda.log" 2>&1
timeout 150 python3 -m dlqsm.cli.main evaluate --heads 2 --methods tkd tv default \
    --device cuda --no-figures -o "$OUT/eval_cuda" > "$OUT/eval_cuda.log" 2>&1
ls -la "$OUT"
