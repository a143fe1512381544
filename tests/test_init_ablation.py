"""benchmarks/init_ablation.py at smoke scale: every scheme trains on a few hundred real images, the table and
its JSON are published, a second call reuses the finished runs, and --table-only rebuilds the block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import import_benchmarks


@pytest.mark.slow
def test_init_ablation_smoke(cifar_subset_dir: Path, tmp_path: Path) -> None:
    (study,) = import_benchmarks("init_ablation")
    work, results = tmp_path / "work", tmp_path / "results"
    args = ["--data", str(cifar_subset_dir), "--work", str(work), "--results", str(results), "--seeds", "0",
            "--epochs", "1"]
    assert study.main(args) == 0
    payload = json.loads((results / study.JSON_NAME).read_text())
    assert {(r["scheme"], r["zero_init_last"]) for r in payload["records"]} == set(study.SCHEMES)
    for record in payload["records"]:
        config = json.loads((work / study._name((record["scheme"], record["zero_init_last"]), 0)
                             / "config.json").read_text())
        assert (config["weight_init"], config["zero_init_last"]) == (record["scheme"], record["zero_init_last"])
    block = (results / "RESULTS.md").read_text()
    assert "| torch-default + zero-init last BN |" in block and "init-ablation:cpu:start" in block
    before = {p: p.stat().st_mtime_ns for p in work.glob("*/last.pt")}
    assert study.main(args) == 0  # every run reused, none trained again
    assert {p: p.stat().st_mtime_ns for p in work.glob("*/last.pt")} == before and len(before) == len(study.SCHEMES)
    (results / "RESULTS.md").write_text("# Results\n")
    assert study.main(["--table-only", "--results", str(results)]) == 0
    assert "| kaiming-fan-out | " in (results / "RESULTS.md").read_text()
