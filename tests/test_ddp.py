"""torchrun data parallelism on CPU (gloo): one run directory, weights matching one process, N-to-M resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import students
from distill.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPEC = "r2_11_c8-16"


def _torchrun(*args, nproc: int = 2, script: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    target = [str(script)] if script else ["-m", "distill"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *target, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=180)


def _common(data: Path) -> list[str]:
    return ["run", "--student", SPEC, "--data", str(data), "--epochs", "2", "--device", "cpu", "--no-ema",
            "--lr", "0.05", "--seed", "1"]


def test_two_ranks_match_one_process_with_the_same_global_batch(cifar_subset_dir: Path, tmp_path: Path) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _torchrun(*_common(cifar_subset_dir), "--batch-size", "25", "--out", two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*_common(cifar_subset_dir), "--batch-size", "50", "--out", str(one)]) == 0
    # Exactly one run directory, written once by rank 0.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert sorted(p.name for p in two.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv",
                                                     "metrics.jsonl", "summary.json"]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["complete"]
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2
    # Same global batch (2 x 25 = 1 x 50), same images, same augmentation: the weight updates agree up to
    # BatchNorm, whose statistics are per rank (25 images) rather than per global batch (50). Tolerance:
    # the difference of the final weights is under 15% of the size of the update (measured: about 7%).
    torch.manual_seed(1)
    init = students.create(SPEC).state_dict()
    a = torch.load(one / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(two / "last.pt", weights_only=True)["state_dict"]
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    diff = sum((a[k] - b[k]).pow(2).sum() for k in keys).sqrt()
    update = sum((a[k] - init[k]).pow(2).sum() for k in keys).sqrt()
    assert update > 0 and diff / update < 0.15, float(diff / update)
    ma = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert ma[0]["train_loss"] == pytest.approx(mb[0]["train_loss"], rel=0.01)  # all-reduced over both ranks


def test_two_rank_checkpoint_resumes_in_one_process(cifar_subset_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _torchrun(*_common(cifar_subset_dir), "--batch-size", "25", "--out", run, "--stop-after", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["meta"]["world_size"] == 2
    assert main(["run", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["world_size"] == 1 and summary["epochs_done"] == 2


def test_world_size_larger_than_the_batches_fails_clearly(cifar_subset_dir: Path, tmp_path: Path) -> None:
    proc = _torchrun(*_common(cifar_subset_dir), "--batch-size", "200", "--out", tmp_path / "big")
    assert proc.returncode != 0
    assert "x 2 ranks is larger than the 300 training images" in proc.stdout + proc.stderr
    assert not (tmp_path / "big" / "last.pt").exists()


def test_a_rank_failing_mid_run_leaves_a_resumable_run(cifar_subset_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*_common(cifar_subset_dir), "--epochs", "4", "--batch-size", "25", "--out", run]
    proc = _torchrun(*args, script=REPO / "tests" / "ddp_fault.py")  # rank 1 raises in its third epoch
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "injected failure on rank 1" in output  # the failing rank's own error
    # Rank 0 says what happened and where the run stands, in one line, without a traceback of its own.
    lines = [line for line in output.splitlines() if "rank 0 of 2: training stopped" in line]
    assert len(lines) == 1, output[-3000:]
    assert "--resume" in lines[0]
    # No half-written checkpoint: last.pt is a complete earlier epoch, and no temporary file is left behind.
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    epoch = torch.load(run / "last.pt", weights_only=True)["meta"]["epoch"]
    assert epoch in (1, 2) and f"holds epoch {epoch}" in lines[0]
    assert not (run / "summary.json").exists() or not json.loads((run / "summary.json").read_text())["complete"]
    # Nothing lost: the run finishes from there in one process.
    assert main(["run", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["epochs_done"] == 4
