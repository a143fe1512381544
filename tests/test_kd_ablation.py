"""``benchmarks/kd_ablation.py --scale smoke``: the ablation runs end to end and writes its table (not accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cifar10_tarball_or_skip, import_benchmarks

pytestmark = pytest.mark.slow


def test_kd_ablation_smoke_writes_its_table(tmp_path: Path) -> None:
    tarball = cifar10_tarball_or_skip()
    (kd_ablation,) = import_benchmarks("kd_ablation")
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--scale", "smoke", "--work", str(work), "--results", str(results), "--seeds", "0", "--jobs", "1",
            "--data", str(tarball)]
    assert kd_ablation.main(argv) == 0
    runs = json.loads((results / "kd_ablation_smoke.json").read_text())
    assert {"teacher-ls0.0", "teacher-ls0.1"} <= set(runs)
    cells = {r["cell"] for r in runs.values() if r["cell"]}
    assert "ref onecycle 1ep" in cells and "KD cosine 1ep, teacher LS 0.1" in cells
    for run in runs.values():
        assert run["complete"] and 0 <= run["top1_last"] <= 100
    kd = next(r for r in runs.values() if r["cell"] == "KD onecycle 1ep, teacher LS 0")
    assert kd["teacher"] == "r2_11_c8-16" and kd["kd"]["kd_weight"] == 0.9
    text = (results / "RESULTS.md").read_text()
    assert "<!-- e2e:kd-ablation:smoke:start -->" in text and "| KD onecycle 1ep, teacher LS 0 |" in text
    # A second call reuses every finished run instead of training again.
    assert kd_ablation.main(argv) == 0
    assert all(r.get("reused") for r in json.loads((results / "kd_ablation_smoke.json").read_text()).values())
