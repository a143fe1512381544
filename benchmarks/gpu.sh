#!/usr/bin/env bash
# The GPU benchmarks in one device call (issue 32): install the carried wheels, then benchmarks/gpu_day_one.py.
#
#   here, once:   bash benchmarks/gpu_wheels.sh && mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   the device:   run(command="bash benchmarks/gpu.sh", carry=[".whl", ".data"], timeout_s=540)
#                 (a longer slot: "bash benchmarks/gpu.sh long", rerun until it prints done)
#
# Everything it measured comes back as two files in $OUT: summary.json and gpu_day_one.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-day-one}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_day_one.py --profile "$profile" --data .data/cifar10-jpeg.tar.gz --out "${OUT:?set OUT}" \
    --budget-s "${BUDGET_S:-480}"
