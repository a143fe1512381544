"""``distill sweep``: several students, one teacher pass per batch, each its own run folder (CPU, tiny, real images)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import students
from cli_helpers import assert_one_line_error, invoke
from distill import TrainConfig, fit
from distill.cli import main
from distill.data import load_dataset
from distill.sweep import SweepError, sweep
from teachers import FrozenTeacher

TEACHER = "r2_11_c8-16"
STUDENTS = ("r1_1_c4", "r1_1_c8")
COMPARED = ("train_loss", "train_ce", "train_kd", "train_top1", "lr", "test_top1", "test_loss", "ema_top1")


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same per-epoch metrics and the same final weights (bit for bit on one CPU thread)."""
    ma, mb = _metrics(a), _metrics(b)
    assert [r["epoch"] for r in ma] == [r["epoch"] for r in mb] and ma
    for ra, rb in zip(ma, mb):
        for key in COMPARED + tuple(k for k in ("train_feat",) if k in ra):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), (a.name, ra["epoch"], key)
    wa = torch.load(a / "last.pt", weights_only=True)
    wb = torch.load(b / "last.pt", weights_only=True)
    for key in ("state_dict", "ema_state_dict"):
        for name, value in wa[key].items():
            torch.testing.assert_close(value, wb[key][name], rtol=1e-6, atol=1e-7, msg=f"{a.name} {key} {name}")


@pytest.fixture(scope="module")
def data(cifar_subset_dir: Path):
    return load_dataset(str(cifar_subset_dir))


def _teacher() -> torch.nn.Module:
    torch.manual_seed(123)
    return students.create(TEACHER, num_classes=10)  # untrained: its logits and maps are still a fixed function


@pytest.mark.parametrize("kd_loss", ["kd", "kd+fitnet"])
def test_two_student_sweep_equals_two_separate_runs(data, tmp_path: Path, kd_loss: str) -> None:
    cfg = TrainConfig(epochs=1, batch_size=50, lr=0.05, device="cpu", seed=5, mixup=0.4, cutmix=1.0, kd_loss=kd_loss)
    teacher = _teacher()
    for name in STUDENTS:
        torch.manual_seed(cfg.seed)
        fit(students.create(name, num_classes=10), data, teacher=teacher, config=cfg, out=tmp_path / "alone" / name)
    built = {}
    for name in STUDENTS:
        torch.manual_seed(cfg.seed)  # as distill sweep does: each student's weights from the seed
        built[name] = students.create(name, num_classes=10)
    summaries = sweep(built, data, teacher=teacher, config=cfg, out=tmp_path / "sweep")
    assert [s.run_dir for s in summaries] == [tmp_path / "sweep" / n for n in STUDENTS]
    assert all(s.complete and s.student == n for s, n in zip(summaries, STUDENTS))
    for name in STUDENTS:
        _assert_same_run(tmp_path / "alone" / name, tmp_path / "sweep" / name)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["students"] == list(STUDENTS)


def test_sweep_refuses_repeated_students_and_an_existing_sweep(data, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=100, device="cpu")
    a = students.create("r1_1_c4", num_classes=10)
    with pytest.raises(SweepError, match="more than once"):
        sweep([a, students.create("r1_1_c4", num_classes=10)], data, config=cfg, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    sweep({"a": a}, data, config=cfg, out=tmp_path / "s")
    with pytest.raises(Exception, match="already holds a sweep"):
        sweep({"b": a}, data, config=cfg, out=tmp_path / "s")


# ------------------------------------------------------------------------------------------------ the CLI


COMMON = ["--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--seed", "3", "--mixup", "0.4"]


@pytest.fixture(scope="module")
def teacher_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["teacher", "--teacher", TEACHER, "--data", str(cifar_subset_dir), "--epochs", "1", *COMMON,
                 "--out", str(out)]) == 0
    return out


def test_cli_sweep_resumes_per_student_and_matches_separate_runs(capsys, cifar_subset_dir: Path, teacher_run: Path,
                                                                tmp_path: Path) -> None:
    base = ["--teacher", TEACHER, "--teacher-ckpt", teacher_run, "--data", cifar_subset_dir, "--epochs", "2",
            *COMMON]
    out = tmp_path / "sweep"
    code, stdout, err = invoke(main, capsys, "sweep", *base, "--students", ",".join(STUDENTS), "--out", out,
                               "--stop-after", "1")
    assert code == 0, err
    # Kill r1_1_c8 "before its first checkpoint": its folder keeps only config.json; r1_1_c4 holds epoch 1.
    behind = out / STUDENTS[1]
    for name in ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json"):
        (behind / name).unlink()
    code, stdout, err = invoke(main, capsys, "sweep", "--resume", out)
    assert code == 0, err
    for name in STUDENTS:
        assert name in stdout  # the compare table
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["complete"] and summary["epochs_done"] == 2 and summary["teacher"] == TEACHER
        assert [r["epoch"] for r in _metrics(out / name)] == [1, 2]
    # Each student equals its own `distill run` with the same settings.
    for name in STUDENTS:
        code, _, err = invoke(main, capsys, "run", *base, "--student", name, "--out", tmp_path / "alone" / name)
        assert code == 0, err
        _assert_same_run(tmp_path / "alone" / name, out / name)
    # A finished sweep resumed again skips every student and prints the table.
    code, stdout, err = invoke(main, capsys, "sweep", "--resume", out)
    assert code == 0, err
    assert stdout.count("finished before, skipped") == 2
    # distill compare reads the students' folders.
    code, stdout, err = invoke(main, capsys, "compare", *(out / n for n in STUDENTS))
    assert code == 0, err
    assert all(n in stdout for n in STUDENTS)


def test_cli_sweep_bad_input_gets_one_line(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    data = ["--data", cifar_subset_dir, "--epochs", "1", "--device", "cpu", "--out", tmp_path / "x"]
    code, _, err = invoke(main, capsys, "sweep", *data)
    assert_one_line_error(code, err, "--students")
    code, _, err = invoke(main, capsys, "sweep", "--students", "r1_1_c4,r1_1_c4", *data)
    assert_one_line_error(code, err, "more than once")
    code, _, err = invoke(main, capsys, "sweep", "--students", "r1_1_c4,r4_332", *data)
    assert_one_line_error(code, err, "block-count")
    code, _, err = invoke(main, capsys, "sweep", "--student", "r1_1_c4", *data)
    assert_one_line_error(code, err, "--students")
    code, _, err = invoke(main, capsys, "sweep", "--resume", tmp_path / "nope")
    assert_one_line_error(code, err, "not a sweep folder")
    assert not (tmp_path / "x").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_teacher_kept_contiguous_runs_contiguous_on_a_channels_last_students_batches(data, tmp_path: Path) -> None:
    """The batches follow the student's format; the teacher converts them to its own, so a teacher that
    channels_last_safe keeps contiguous (an 8-channel strided shortcut) never runs channels-last anyway."""
    from distill.device import channels_last_safe

    teacher, student = _teacher(), students.create("r1_1_c8", num_classes=10)
    assert channels_last_safe(student, "cpu") and not channels_last_safe(teacher, "cpu")
    seen: dict[str, set[bool]] = {"teacher": set(), "student": set()}

    def record(role):
        def hook(module, args):
            # The training steps and evaluations; not the cost report's forward on a dummy of its own.
            if role == "teacher" or module.training:
                seen[role].add(args[0].is_contiguous(memory_format=torch.channels_last))
        return hook

    next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_pre_hook(record("teacher"))
    next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_pre_hook(record("student"))
    cfg = TrainConfig(epochs=1, batch_size=50, device="cpu", seed=1, kd_loss="kd")
    frozen = FrozenTeacher(teacher)
    for out in ("a", "b"):  # placing the same teacher twice (as a sweep does) leaves one conversion, not two
        fit(student, data, teacher=frozen, config=cfg, out=tmp_path / out)
    assert seen == {"teacher": {False}, "student": {True}}
    assert len(frozen._forward_pre_hooks) == 1
