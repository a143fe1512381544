"""benchmarks/prune_recovery.py: the commands it would run (--dry-run), without training anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_dir(path: Path, **summary) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"complete": True, **summary}))
    (path / "config.json").write_text(json.dumps({"student": summary.get("model")}))
    return path


def _dry_run(*args) -> list[str]:
    done = subprocess.run([sys.executable, "benchmarks/prune_recovery.py", *map(str, args), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_variants_share_the_baseline_and_override_one_factor(tmp_path: Path) -> None:
    source = _run_dir(tmp_path / "src", macs=1000, top1_last=70.0, model="r3_111_c16-32-64")
    lines = _dry_run(source, "--seeds", "0", "1", "--only", "baseline", "lr-0.2", "--out", tmp_path / "o")
    assert len(lines) == 4
    assert all("--target-macs 500 --global --finetune-epochs 3 --lr 0.05" in line for line in lines)
    assert lines[2].endswith(f"--lr 0.2 --seed 0 --out {tmp_path / 'o' / 'lr-0.2-seed0'}")


def test_wide_vs_small_fine_tunes_for_the_epochs_left(tmp_path: Path) -> None:
    source = _run_dir(tmp_path / "src", macs=1000, top1_last=70.0, model="r3_111_c16-32-64")
    wide = _run_dir(tmp_path / "wide", epochs=6, model="r3_111_c32-64-128", num_params=308650, top1_last=78.0)
    small = _run_dir(tmp_path / "small", epochs=10, model="r3_111_c16-32-64", num_params=78042, top1_last=76.0)
    lines = _dry_run(source, "--wide", wide, "--small", small, "--seeds", "0", "--out", tmp_path / "o")
    assert lines == [f"{sys.executable} -m prune {wide} --target-params 78042 --finetune-epochs 4 "
                     f"--teacher r3_111_c32-64-128 --teacher-ckpt {wide} --seed 0 --out "
                     f"{tmp_path / 'o' / 'wide-to-small-seed0'}"]


def test_table_only_reads_finished_runs_and_runs_nothing(tmp_path: Path) -> None:
    source = _run_dir(tmp_path / "src", macs=1000, top1_last=70.0, model="r3_111_c16-32-64")
    out = tmp_path / "o"
    _run_dir(out / "baseline-seed0", top1_last=69.0)
    _run_dir(out / "baseline-seed1", top1_last=69.5)
    done = subprocess.run([sys.executable, "benchmarks/prune_recovery.py", str(source), "--out", str(out),
                           "--only", "baseline", "epochs-6", "--table-only"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| baseline | `-` | 69.00 / 69.50 | 69.25 +- 0.35 | -0.75 | 2 |" in done.stdout
    assert "epochs-6" not in done.stdout and not (out / "epochs-6-seed0").exists()
