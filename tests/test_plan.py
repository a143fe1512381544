"""Issue 13, points 1-4: ``distill run`` plans before it trains, ``--dry-run`` writes nothing, the teacher
recipe is recorded, ``prune`` distils a teacher run from itself, and ``eval`` of a subset run agrees with it.

Real CIFAR-10 images (the ``cifar_subset_dir`` fixture), tiny models, CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, invoke
from distill.cli import main
from distill.plan import TOO_LONG_S, Phase, RunPlan, TeacherPlan, duration

TINY = ["--batch-size", "100", "--lr", "0.05", "--device", "cpu", "--no-tta"]


@pytest.fixture()
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The teacher store and the data cache under ``tmp_path``, and the working directory there too (where
    ``runs/`` would appear)."""
    monkeypatch.setenv("DISTILL_TEACHERS", str(tmp_path / "teachers"))
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "teachers"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                    private_store: Path) -> None:
    code, out, err = invoke(main, capsys, "run", "--teacher", "r2_11_c8-16", "--student", "r1_1_c8", "--data",
                            cifar_subset_dir, "--epochs", "3", "--teacher-epochs", "2", "--dry-run", *TINY)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("plan: distill run r1_1_c8 from teacher r2_11_c8-16") and "dry run" in lines[0]
    text = " ".join(out.split())  # rich may wrap long lines
    for fragment in ("device cpu", "300 train / 100 test images", "r1_1_c8: 1,506 params", "MACs per image",
                     "trained first for 2 epochs with recipe teacher-default", "label smoothing 0.0",
                     "teacher training", "teacher evaluation", "distillation", "total"):
        assert fragment in text, fragment
    # Nothing at all was written: no run folder (the default would be runs/), no teacher store, no decode cache.
    assert _files(tmp_path) == set(), _files(tmp_path)

    out_dir = tmp_path / "named"
    code, _, err = invoke(main, capsys, "run", "--student", "r1_1_c8", "--data", cifar_subset_dir, "--epochs", "1",
                          "--dry-run", "--out", out_dir, *TINY)
    assert code == 0, err
    assert not out_dir.exists()


def test_plan_comes_before_training_and_the_teacher_recipe_is_recorded(capsys, cifar_subset_dir: Path,
                                                                       tmp_path: Path, private_store: Path) -> None:
    out = tmp_path / "student"
    code, stdout, err = invoke(main, capsys, "run", "--teacher", "r1_1_c4", "--student", "r1_1_c4", "--data",
                               cifar_subset_dir, "--epochs", "1", "--teacher-epochs", "2", "--teacher-lr", "0.07",
                               "--out", out, *TINY)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("plan: distill run r1_1_c4 from teacher r1_1_c4")
    first = {key: next(i for i, line in enumerate(lines) if key in line)
             for key in ("estimate", "training one first", "epoch 1 ")}
    assert first["estimate"] < first["training one first"] < first["epoch 1 "], stdout  # plan, then training

    # The teacher was trained with teacher-default (no label smoothing), its own epochs and lr, and stored.
    stored = [p for p in private_store.iterdir() if (p / "summary.json").exists()]
    assert len(stored) == 1
    t_cfg = json.loads((stored[0] / "config.json").read_text())
    assert (t_cfg["recipe"], t_cfg["label_smoothing"], t_cfg["epochs"], t_cfg["lr"]) == ("teacher-default", 0.0, 2,
                                                                                       0.07)
    # ... and the student's run records how: flags in config.json, the recipe's values in summary.json.
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["teacher_epochs"], cfg["teacher_lr"], cfg["epochs"]) == (2, 0.07, 1)
    recipe = json.loads((out / "summary.json").read_text())["teacher_recipe"]
    assert recipe["name"] == "teacher-default" and recipe["label_smoothing"] == 0.0
    assert (recipe["epochs"], recipe["lr"], recipe["optimizer"]) == (2, 0.07, "sgd")

    # A second run finds it: the plan says "stored", and nothing is trained but the student.
    code, stdout, err = invoke(main, capsys, "run", "--teacher", "r1_1_c4", "--student", "r1_1_c4", "--data",
                               cifar_subset_dir, "--epochs", "1", "--teacher-epochs", "2", "--teacher-lr", "0.07",
                               "--dry-run", *TINY)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "stored in" in text and "trained 2 epochs with teacher-default" in text
    assert "teacher training" not in text
    # Other teacher settings are another teacher: the plan trains it and points at the stored one.
    code, stdout, err = invoke(main, capsys, "run", "--teacher", "r1_1_c4", "--student", "r1_1_c4", "--data",
                               cifar_subset_dir, "--epochs", "1", "--teacher-epochs", "3", "--dry-run", *TINY)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "trained first for 3 epochs" in text and f"--teacher-ckpt {stored[0]}" in text
    # A teacher checkpoint is loaded by the plan itself: a wrong one is refused before anything is timed.
    code, stdout, err = invoke(main, capsys, "run", "--teacher", "r1_1_c4", "--teacher-ckpt", stored[0], "--student",
                               "r1_1_c4", "--data", cifar_subset_dir, "--epochs", "1", "--dry-run", *TINY)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert f"from checkpoint {stored[0] / 'best.pt'}" in text and "teacher training" not in text
    code, _, err = invoke(main, capsys, "run", "--teacher", "r2_11_c8-16", "--teacher-ckpt", stored[0], "--student",
                          "r1_1_c4", "--data", cifar_subset_dir, "--epochs", "1", "--dry-run", *TINY)
    assert_one_line_error(code, err, "holds a r1_1_c4, not a r2_11_c8-16")


def _plan(**phase_seconds: float) -> RunPlan:
    phases = tuple(Phase(name.replace("_", " "), s, "x", s / 30) for name, s in phase_seconds.items())
    return RunPlan(kind="run", device="cpu (x86_64, 2 threads)", device_type="cpu", data="cifar10",
                   train_images=50_000, test_images=10_000, num_classes=10, image_size=32, model="r4_3323",
                   num_params=4_935_242, macs=531_000_000, epochs=30,
                   teacher=TeacherPlan("resnet50", "train", Path("store"), 23_520_842,
                                       recipe={"name": "teacher-default", "epochs": 30}),
                   phases=phases, timing="from 2 steps")


def test_a_plan_too_long_for_the_machine_says_so_and_names_the_flags() -> None:
    long = _plan(teacher_training=3 * 86400.0, teacher_evaluation=500.0, distillation=2 * 86400.0)
    assert long.too_long
    text = "\n".join(long.lines())
    assert "far too long" in text and "5d 0h08m" in text
    for flag in ("--teacher-ckpt", "--teacher-epochs", "--epochs", "--train-subset 5000", "smaller --teacher"):
        assert flag in text, flag
    assert "one teacher epoch takes about 2h24m" in text  # the per-epoch costs the flags act on

    short = _plan(teacher_training=3600.0, distillation=TOO_LONG_S / 2)
    assert not short.too_long and "far too long" not in "\n".join(short.lines())
    assert duration(0.2) == "<1s" and duration(75) == "1m15s" and duration(93784) == "1d 2h03m"


def test_bad_teacher_flags_get_one_line(capsys, cifar_subset_dir: Path, private_store: Path) -> None:
    for flag, value, message in (("--teacher-epochs", "0", "--teacher-epochs must be at least 1"),
                                 ("--teacher-lr", "-1", "--teacher-lr must be positive")):
        code, _, err = invoke(main, capsys, "run", "--teacher", "r1_1_c4", "--student", "r1_1_c4", "--data",
                              cifar_subset_dir, flag, value, "--dry-run", *TINY)
        assert_one_line_error(code, err, message)
    assert not private_store.exists()
    assert os.listdir(Path.cwd()) == [] or set(os.listdir(Path.cwd())) <= {"cache"}


def test_eval_of_a_subset_run_uses_the_runs_own_test_images(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                            private_store: Path) -> None:
    out = tmp_path / "subset-run"
    code, _, err = invoke(main, capsys, "run", "--student", "r1_1_c8", "--data", cifar_subset_dir, "--epochs", "2",
                          "--train-subset", "200", "--test-subset", "47", "--seed", "5", "--out", out, *TINY)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    selection = summary["test_selection"]  # how the test images were chosen, recorded
    assert (selection["test_subset"], selection["train_subset"], selection["seed"]) == (47, 200, 5)
    assert "class-balanced" in selection["how"] and summary["test_images"] == 47

    code, stdout, err = invoke(main, capsys, "eval", out, "--device", "cpu")  # no --data: the run's own images
    assert code == 0, err
    assert f"top-1: {summary['top1_best']:.2f}%" in stdout and "47 images" in " ".join(stdout.split())
    assert "class-balanced" in stdout

    code, stdout, err = invoke(main, capsys, "eval", out, "--data", cifar_subset_dir, "--device", "cpu")
    assert code == 0, err
    assert "100 images" in " ".join(stdout.split())  # --data given: its whole test split


def test_prune_of_a_teacher_run_distils_from_it_and_leaves_the_store_alone(capsys, cifar_subset_dir: Path,
                                                                            tmp_path: Path, private_store: Path) -> None:
    from prune.cli import main as prune_main

    spec = "r3_111_c16-32-64"
    source = tmp_path / "teacher-run"
    code, _, err = invoke(main, capsys, "teacher", "--teacher", spec, "--data", cifar_subset_dir, "--epochs", "1",
                          "--out", source, *TINY)
    assert code == 0, err
    out = tmp_path / "pruned"
    code, stdout, err = invoke(prune_main, capsys, source, "--ratio", "0.5", "--finetune-epochs", "1", "--out", out,
                               "--batch-size", "100", "--device", "cpu", "--no-tta")
    assert code == 0, err
    assert "training one first" not in stdout
    assert not private_store.exists()  # no teacher trained, nothing written to the store
    source_ckpt = str((source / "best.pt").resolve())
    assert json.loads((out / "config.json").read_text())["teacher_ckpt"] == source_ckpt
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == spec and summary["teacher_ckpt"] == source_ckpt  # the source model teaches
    assert summary["teacher_top1"] == pytest.approx(json.loads((source / "summary.json").read_text())["top1_best"])


def test_the_teacher_store_key_is_the_teachers_training_settings(tmp_path: Path) -> None:
    import torch

    from distill.config import TrainConfig
    from distill.data.dataset import make_dataset
    from distill.pipeline import teacher_store_dir

    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    data = make_dataset(train_images=images, train_labels=torch.tensor([0, 1, 0, 1]), test_images=images,
                        test_labels=torch.tensor([0, 1, 0, 1]), classes=("a", "b"), source="tiny")
    cfg = TrainConfig(teacher="r1_1_c4", data="tiny")
    # What the student alone uses (its lr, seed, KD settings, device) does not make another teacher...
    same = {teacher_store_dir(cfg.replace(**change), data, tmp_path)
            for change in ({}, {"seed": 3}, {"lr": 0.3}, {"kd_weight": 0.5}, {"device": "cpu"}, {"ema": False})}
    assert len(same) == 1
    # ... what the teacher trains with does: its epochs (--teacher-epochs, else --epochs), lr, batch, mixing.
    for change in ({"epochs": 5}, {"teacher_epochs": 5}, {"teacher_lr": 0.05}, {"batch_size": 64}, {"mixup": 0.2},
                   {"cutmix": 1.0}):
        assert teacher_store_dir(cfg.replace(**change), data, tmp_path) not in same, change
    assert not any(tmp_path.iterdir())  # computing a path writes nothing


def test_dry_run_of_a_resume_says_where_it_would_continue(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                          private_store: Path) -> None:
    out = tmp_path / "partial"
    code, _, err = invoke(main, capsys, "run", "--student", "r1_1_c8", "--data", cifar_subset_dir, "--epochs", "3",
                          "--stop-after", "1", "--out", out, *TINY)
    assert code == 0, err
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, err = invoke(main, capsys, "run", "--resume", out, "--dry-run")
    assert code == 0, err
    assert "after epoch 1 of 3" in " ".join(stdout.split())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing trained or rewritten


def test_prune_of_a_distilled_run_reuses_its_teacher_and_never_trains_one(capsys, cifar_subset_dir: Path,
                                                                          tmp_path: Path, private_store: Path) -> None:
    from prune.cli import main as prune_main

    source = tmp_path / "kd-run"
    code, _, err = invoke(main, capsys, "run", "--teacher", "r1_1_c4", "--student", "r3_111_c16-32-64", "--data",
                          cifar_subset_dir, "--epochs", "1", "--out", source, *TINY)
    assert code == 0, err
    store_files = _files(private_store)  # the teacher that run trained and stored
    teacher_ckpt = json.loads((source / "summary.json").read_text())["teacher_ckpt"]
    assert Path(teacher_ckpt).parent.parent == private_store
    out = tmp_path / "pruned"
    # Other fine-tuning epochs would key another store teacher: prune takes the source's own teacher instead.
    code, stdout, err = invoke(prune_main, capsys, source, "--ratio", "0.5", "--finetune-epochs", "2", "--out", out,
                               "--batch-size", "100", "--device", "cpu", "--no-tta")
    assert code == 0, err
    assert "training one first" not in stdout and _files(private_store) == store_files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == "r1_1_c4" and summary["teacher_ckpt"] == teacher_ckpt
