#!/usr/bin/env bash
# Fetch the wheels a lent GPU machine lacks (it has torch, lightning, torchmetrics, scipy and
# matplotlib, but not monai, nibabel or hydra-core/omegaconf; use logger=csv there, wandb is absent)
# into .whl/ (git-ignored
# via .git/info/exclude), for the device tool's `carry`.
#
# Here:   bash scripts/device_wheels.sh
# There:  every device command starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
# and names `.whl` in carry. The GPU machine runs Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for pkg in monai nibabel hydra-core omegaconf antlr4-python3-runtime==4.9.3; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
