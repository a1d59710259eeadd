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
for pkg in monai==1.6.1 nibabel==5.4.2 hydra-core==1.3.8 omegaconf==2.3.1; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${plat[@]}" -d .whl "$pkg"
done
# hydra-core 1.3 needs antlr4 4.9.3, published as a source archive only: build its wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl
