#!/usr/bin/env bash
# The GPU benchmarks, one script, for the first session that is lent a GPU (none has been yet).
#
#   bash benchmarks/gpu.sh DATA OUT [quick|full]
#
# DATA: the CIFAR-10 JPEG tarball (copy ../shared/data/cifar10-jpeg.tar.gz into an ignored folder of the
# checkout and carry it: ../shared does not travel). OUT: where logs and JSON go (e.g. $OUT on the device).
# The device image lacks torch-pruning and fvcore: install their wheels first (pip install --no-deps
# the carried wheels), as the device README says.
#
# quick (default, fits a 30-minute device budget): start-up, KD-step throughput against a plain loop,
# pruning search speed and pruned-width speed on CUDA, a 3-student sweep against separate runs, and a
# short resnet50 -> r4_3323 distillation (teacher 15 epochs, student 15 epochs).
# full: adds the end-to-end benchmark at GPU scale (200-epoch teacher and students, two seeds; hours).
set -euo pipefail
data=${1:?usage: bash benchmarks/gpu.sh DATA OUT [quick|full]}
out=${2:?usage: bash benchmarks/gpu.sh DATA OUT [quick|full]}
mode=${3:-quick}
mkdir -p "$out"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
git rev-parse --short HEAD | tee "$out/commit.txt" || true

python benchmarks/startup.py | tee "$out/startup.log"
python benchmarks/train_throughput.py --data "$data" --teacher resnet50 --student r4_3323 --images 10000 \
    --batch-size 512 --device cuda --json "$out/train_throughput.json" | tee "$out/train_throughput.log"
python benchmarks/prune_speed.py --json "$out/prune_speed.json" | tee "$out/prune_speed.log"
python benchmarks/sweep_speed.py --work "$out/sweep" --json "$out/sweep.json" | tee "$out/sweep.log"

distill teacher --teacher resnet50 --data "$data" --epochs 15 --batch-size 512 --lr 0.4 --schedule onecycle \
    --device cuda --out "$out/t-resnet50" | tee "$out/teacher.log"
distill run --teacher resnet50 --teacher-ckpt "$out/t-resnet50" --student r4_3323 --data "$data" --epochs 15 \
    --batch-size 512 --lr 0.4 --schedule onecycle --device cuda --out "$out/kd-r4_3323" | tee "$out/kd.log"
distill run --student r4_3323 --data "$data" --epochs 15 --batch-size 512 --lr 0.4 --schedule onecycle \
    --device cuda --out "$out/ref-r4_3323" | tee "$out/ref.log"
distill compare "$out/t-resnet50" "$out/kd-r4_3323" "$out/ref-r4_3323" --markdown "$out/compare.md"

if [ "$mode" = full ]; then
    python benchmarks/e2e.py --scale gpu --data "$data" --work "$out/e2e" --results "$out" | tee "$out/e2e.log"
fi
