"""``benchmarks/teacher_cache.py --scale smoke``: both studies run end to end and write their tables (not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import import_benchmarks


@pytest.mark.slow
def test_teacher_cache_smoke_writes_its_tables_and_rebuilds_them(tmp_path: Path, cifar_subset_dir: Path) -> None:
    (bench,) = import_benchmarks("teacher_cache")
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--scale", "smoke", "--work", str(work), "--results", str(results), "--seeds", "0",
            "--data", str(cifar_subset_dir)]
    assert bench.main(argv) == 0
    recorded = json.loads((results / "teacher_cache_smoke.json").read_text())
    runs = recorded["runs"]
    modes = {name: [r["teacher_outputs"] for r in runs[name]["records"]] for name in ("cpu-cold", "cpu-warm")}
    assert modes == {"cpu-cold": ["recorded", "recorded"], "cpu-warm": ["replayed", "replayed"]}
    assert runs["cpu-live"]["records"] == [{**r, "teacher_outputs": "live", "seconds": r2["seconds"],
                                            "train_seconds": r2["train_seconds"]}
                                           for r, r2 in zip(runs["cpu-warm"]["records"], runs["cpu-live"]["records"])]
    assert [r["teacher_outputs"] for r in runs["cell-KD-T4-w09-s0-cache"]["records"]] == ["recorded"]
    assert [r["teacher_outputs"] for r in runs["cell-DKD-s0-cache"]["records"]] == ["replayed"]  # same stream
    text = (results / "RESULTS.md").read_text()
    assert "identical in every cell" in text and "| cpu: r2_11_c8-16 -> r1_1_c4, 300 images |" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    (results / "RESULTS.md").write_text("# Results\n")
    assert bench.main([*argv, "--table-only"]) == 0  # rebuilt from the JSON alone
    assert [line for line in (results / "RESULTS.md").read_text().splitlines() if line.startswith("|")] == table
