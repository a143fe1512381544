#!/usr/bin/env bash
# Wheels of what the GPU machine's image lacks, into .whl/ (git-ignored), for `carry`:
# torch-pruning, fvcore, and fvcore's iopath, termcolor and yacs (Python 3.12 there; all pure Python).
# fvcore and iopath publish no wheel: `pip wheel --no-deps` builds them from their sources here.
#
#   bash benchmarks/gpu_wheels.sh            # then carry [".whl", ".data"] and, on the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "torch-pruning==1.6.1" "termcolor==3.3.0" "yacs==0.1.8"
python3 -m pip wheel -q --no-deps -w .whl "fvcore==0.1.5.post20221221" "iopath==0.1.10"
ls -la .whl
