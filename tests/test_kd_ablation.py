"""``benchmarks/kd_ablation.py --scale smoke``: the ablation runs end to end and writes its table (not accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cifar10_tarball_or_skip, import_benchmarks


@pytest.mark.slow
def test_kd_ablation_smoke_writes_its_table(tmp_path: Path) -> None:
    tarball = cifar10_tarball_or_skip()
    (kd_ablation,) = import_benchmarks("kd_ablation")
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--scale", "smoke", "--work", str(work), "--results", str(results), "--seeds", "0", "--jobs", "1",
            "--data", str(tarball)]
    assert kd_ablation.main(argv) == 0
    runs = json.loads((results / "kd_ablation_smoke.json").read_text())
    assert {"teacher-ls0.0", "teacher-ls0.1", "teacher-ls0.0-2ep"} <= set(runs)
    assert runs["teacher-ls0.0-2ep"]["epochs_done"] == 2
    cells = {r["cell"] for r in runs.values() if r["cell"]}
    assert "ref onecycle 1ep" in cells and "KD cosine 1ep, teacher LS 0.1" in cells
    assert {"KD onecycle 1ep, teacher 2ep", "KD+mix onecycle 1ep, teacher 2ep"} <= cells
    mix_long = next(r for r in runs.values() if r["cell"] == "KD+mix onecycle 1ep, teacher 2ep")
    assert "teacher-ls0.0-2ep" in mix_long["cmd"] and "--cutmix" in mix_long["cmd"]
    # The subset study: the student alone, KD and KD + mixing on 200 images at 1 and 2 epochs, from the short
    # (6-epoch at cpu scale) teacher.
    assert {f"{kind} onecycle {e}ep, 200 images{suffix}" for kind, suffix in
            (("ref", ""), ("KD", ", teacher LS 0"), ("KD+mix", ", teacher LS 0")) for e in (1, 2)} <= cells
    sub_mix = runs["KDmix-onecycle-2ep-200-images-teacher-LS-0-s0"]
    assert "teacher-ls0.0 " in sub_mix["cmd"]
    assert sub_mix["cmd"].endswith("--train-subset 200 --eval-every 1 --seed 0") and "--cutmix" in sub_mix["cmd"]
    for run in runs.values():
        assert run["complete"] and 0 <= run["top1_last"] <= 100
    kd = next(r for r in runs.values() if r["cell"] == "KD onecycle 1ep, teacher LS 0")
    assert kd["teacher"] == "r2_11_c8-16" and kd["kd"]["kd_weight"] == 0.9
    text = (results / "RESULTS.md").read_text()
    assert "<!-- e2e:kd-ablation:smoke:start -->" in text and "| KD onecycle 1ep, teacher LS 0 |" in text
    # Each variant is compared with its own reference and KD cell: the subset KD+mix row against the subset's.
    row = next(line for line in text.splitlines() if line.startswith("| KD+mix onecycle 2ep, 200 images, teacher LS 0 |"))
    gain, vs_kd = row.split(" | ")[4], row.split(" | ")[5]
    top = lambda name: runs[name]["top1_last"]  # noqa: E731
    assert float(gain) == pytest.approx(top("KDmix-onecycle-2ep-200-images-teacher-LS-0-s0")
                                        - top("ref-onecycle-2ep-200-images-s0"), abs=0.006)
    assert float(vs_kd.split()[0]) == pytest.approx(top("KDmix-onecycle-2ep-200-images-teacher-LS-0-s0")
                                                    - top("KD-onecycle-2ep-200-images-teacher-LS-0-s0"), abs=0.006)
    # A second call reuses every finished run instead of training again.
    assert kd_ablation.main(argv) == 0
    assert all(r.get("reused") for r in json.loads((results / "kd_ablation_smoke.json").read_text()).values())
    # The table rebuilt on a machine without the run folders comes from the summaries recorded in the json.
    empty = tmp_path / "elsewhere"
    assert kd_ablation.main([*argv[:2], "--work", str(empty), *argv[4:], "--table-only"]) == 0
    text = (results / "RESULTS.md").read_text()
    assert "| KD+mix onecycle 1ep, teacher 2ep |" in text and "as recorded in that file" in text
    assert all(r.get("recorded") for r in json.loads((results / "kd_ablation_smoke.json").read_text()).values())


def test_only_plans_the_named_runs_after_their_own_teachers(tmp_path: Path) -> None:
    (kd_ablation,) = import_benchmarks("kd_ablation")
    scale = kd_ablation.SCALES["cpu"]
    names = lambda jobs: [j.name for j in jobs]  # noqa: E731
    assert names(kd_ablation.plan(scale, "d", tmp_path, (0, 1), "cpu", only=("ref-onecycle-10ep-s1",))) == [
        "ref-onecycle-10ep-s1"]
    picked = kd_ablation.plan(scale, "d", tmp_path, (0, 1), "cpu",
                              only=("KDmix-onecycle-10ep-teacher-15ep-s1", "KD-onecycle-10ep-teacher-15ep-s0"))
    assert names(picked) == ["teacher-ls0.0-15ep", "KDmix-onecycle-10ep-teacher-15ep-s1",
                             "KD-onecycle-10ep-teacher-15ep-s0"]
    assert "--epochs 15" in " ".join(picked[0].cmd) and "--label-smoothing 0.0" in " ".join(picked[0].cmd)
    with pytest.raises(SystemExit, match="unknown runs"):
        kd_ablation.plan(scale, "d", tmp_path, (0,), "cpu", only=("KD-onecycle-20ep-s0",))


def test_a_failed_teacher_skips_its_students_and_the_rest_still_run(tmp_path: Path, monkeypatch) -> None:
    (kd_ablation,) = import_benchmarks("kd_ablation")
    ran = []

    def fake_run(job, work, threads):
        ran.append(job.name)
        if job.name == "teacher-ls0.0":
            raise RuntimeError("teacher-ls0.0 failed (2); log ...")
        return {"top1_last": 50.0}

    monkeypatch.setattr(kd_ablation, "run_job", fake_run)
    jobs = kd_ablation.plan(kd_ablation.SCALES["cpu"], "d", tmp_path, (0,), "cpu",
                            only=("ref-onecycle-5ep-s0", "KD-onecycle-5ep-teacher-LS-0-s0"))
    kd_ablation.execute(jobs, tmp_path, parallel=1)
    by_name = {j.name: j for j in jobs}
    assert ran == ["teacher-ls0.0", "ref-onecycle-5ep-s0"]  # the KD student never started
    assert by_name["KD-onecycle-5ep-teacher-LS-0-s0"].summary == {"failed": "skipped: its teacher teacher-ls0.0 failed"}
    assert by_name["ref-onecycle-5ep-s0"].summary == {"top1_last": 50.0}
