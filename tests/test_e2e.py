"""``benchmarks/e2e.py --smoke``: the whole pipeline through the public commands, so the benchmark cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import cifar10_tarball_or_skip, import_benchmarks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_e2e_smoke(tmp_path: Path) -> None:
    tarball = cifar10_tarball_or_skip()
    e2e, prune_bench = import_benchmarks("e2e", "prune_bench")
    work, results = tmp_path / "work", tmp_path / "results"
    assert e2e.main(["--smoke", "--work", str(work), "--results", str(results), "--device", "cpu",
                     "--data", str(tarball)]) == 0
    report = json.loads((results / "e2e_smoke.json").read_text())
    run = report["runs"][0]
    assert set(run) == {"teacher", "reference", "kd", "kd_mix", "pruned"}
    for stage in run.values():
        assert stage["complete"] and 0 <= stage["top1_last"] <= 100 and stage["num_params"] > 0
    assert run["kd"]["teacher"] == run["kd_mix"]["teacher"] == e2e.SCALES["smoke"].teacher
    assert run["kd_mix"]["mixing"]["cutmix"] == 1.0
    half = run["kd_mix"]["num_params"] / 2
    assert half * 0.98 <= run["pruned"]["num_params"] <= half
    text = (results / "RESULTS.md").read_text()
    assert "<!-- e2e:smoke:start -->" in text and "| pruned |" in text
    assert (results / "e2e_smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Run again: every finished stage is reused (an interrupted benchmark continues where it stopped), and the
    # same numbers come out.
    assert e2e.main(["--smoke", "--work", str(work), "--results", str(results), "--device", "cpu",
                     "--data", str(tarball)]) == 0
    again = json.loads((results / "e2e_smoke.json").read_text())["runs"][0]
    assert all(stage["reused"] for stage in again.values())
    assert {k: v["top1_last"] for k, v in again.items()} == {k: v["top1_last"] for k, v in run.items()}

    # The pruning benchmark on the same runs: (a) half the MACs, (b) a wider student pruned to the small size.
    assert prune_bench.main(["--scale", "smoke", "--teacher-run", str(work / "teacher"),
                             "--distilled", str(work / "kd_mix-s0"), "--direct", str(work / "kd-s0"),
                             "--work", str(tmp_path / "prune"), "--results", str(results), "--device", "cpu"]) == 0
    bench = json.loads((results / "prune_smoke.json").read_text())
    assert bench["a"]["pruned"]["macs"] <= bench["a"]["source"]["macs"] / 2
    assert 0.98 * bench["b"]["direct"]["num_params"] <= bench["b"]["pruned"]["num_params"] <= bench["b"]["direct"]["num_params"]
    assert "<!-- e2e:prune-smoke:start -->" in (results / "RESULTS.md").read_text()
