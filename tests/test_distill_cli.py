"""``distill teacher``, ``distill run`` and ``distill eval`` end to end on real CIFAR-10 images (CPU, tiny nets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import students
from distill.cli import main
from distill.config import TrainConfig
from distill.recipes import RECIPES, recipe_overrides
from cli_helpers import assert_one_line_error, invoke

TINY_TEACHER = "r2_11_c8-16"
TINY_STUDENT = "r1_1_c8"
COMMON = ["--epochs", "2", "--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--seed", "3"]


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


@pytest.fixture(scope="module")
def teacher_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    code = main(["teacher", "--teacher", TINY_TEACHER, "--data", str(cifar_subset_dir), *COMMON, "--out", str(out)])
    assert code == 0
    return out


def test_teacher_then_run_then_eval(capsys, cifar_subset_dir: Path, teacher_run: Path, tmp_path: Path) -> None:
    t_summary = json.loads((teacher_run / "summary.json").read_text())
    assert t_summary["kind"] == "teacher" and t_summary["complete"] and 0 <= t_summary["top1_last"] <= 100

    out = tmp_path / "student"
    code, stdout, err = _cli(
        capsys, "run", "--teacher", TINY_TEACHER, "--teacher-ckpt", teacher_run, "--student", TINY_STUDENT,
        "--data", cifar_subset_dir, *COMMON, "--mixup", "0.2", "--cutmix", "1.0", "--label-smoothing", "0.1",
        "--out", out,
    )
    assert code == 0, err
    assert f"top-1 {t_summary['top1_best']:.2f}%" in stdout  # the teacher's accuracy is shown before KD

    files = sorted(p.name for p in out.iterdir())
    assert files == ["best.pt", "config.json", "last.pt", "metrics.csv", "metrics.jsonl", "summary.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["student"] == TINY_STUDENT and config["teacher"] == TINY_TEACHER and config["mixup"] == 0.2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in ("train_loss", "train_ce", "train_kd", "lr", "train_top1", "test_top1", "ema_top1",
                    "train_img_s", "seconds"):
            assert key in r, key
        assert r["train_img_s"] > 0 and 0 <= r["test_top1"] <= 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["student"] == TINY_STUDENT
    assert summary["num_params"] == students.count_params(students.create(TINY_STUDENT))
    assert summary["flops"] == 2 * summary["macs"] > 0
    assert summary["teacher"] == TINY_TEACHER and summary["teacher_top1"] == pytest.approx(t_summary["top1_best"])
    assert summary["top1_last"] == pytest.approx(records[-1]["test_top1"])
    for key in ("top1_best", "top1_ema", "top1_tta", "wall_s", "device", "git_commit"):
        assert summary[key] is not None, key
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["arch"]["spec"] == TINY_STUDENT
    assert "optimizer" in torch.load(out / "last.pt", weights_only=True)

    code, stdout, err = _cli(capsys, "eval", out / "best.pt", "--data", cifar_subset_dir, "--device", "cpu")
    assert code == 0, err
    assert "airplane" in stdout and "precision" in stdout and "top-1" in stdout
    model, _ = students.load_checkpoint(out / "best.pt")
    assert f"top-1: {summary['top1_best']:.2f}%" in stdout


def test_resume_matches_uninterrupted_run(capsys, cifar_subset_dir: Path, teacher_run: Path, tmp_path: Path) -> None:
    args = ["run", "--teacher", TINY_TEACHER, "--teacher-ckpt", teacher_run, "--student", TINY_STUDENT,
            "--data", cifar_subset_dir, "--epochs", "3", "--batch-size", "50", "--device", "cpu", "--mixup", "0.4",
            "--cutmix", "1.0", "--lr", "0.05"]
    assert _cli(capsys, *args, "--out", tmp_path / "whole")[0] == 0
    assert _cli(capsys, *args, "--out", tmp_path / "split", "--stop-after", "1")[0] == 0
    partial = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert not partial["complete"] and partial["epochs_done"] == 1
    code, _, err = _cli(capsys, "run", "--resume", tmp_path / "split")
    assert code == 0, err

    def metrics(name: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    whole, split = metrics("whole"), metrics("split")
    assert len(whole) == len(split) == 3
    for a, b in zip(whole, split):
        for key in ("train_loss", "train_kd", "test_top1", "ema_top1", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
    wa = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_stored_teacher_is_trained_once_and_reused(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    args = ["run", "--teacher", "r1_1_c4", "--student", "r1_1_c4", "--data", cifar_subset_dir, "--epochs", "1",
            "--batch-size", "100", "--device", "cpu"]
    code, out, err = _cli(capsys, *args, "--out", tmp_path / "a")
    assert code == 0, err
    assert "training one first" in out and "estimated" in out
    code, out, err = _cli(capsys, *args, "--out", tmp_path / "b")
    assert code == 0, err
    assert "stored teacher" in out and "training one first" not in out


def test_bad_input_gets_one_line_and_exit_2(capsys, cifar_subset_dir: Path, teacher_run: Path, tmp_path: Path) -> None:
    data = ["--data", str(cifar_subset_dir), "--epochs", "1", "--device", "cpu"]
    code, _, err = _cli(capsys, "run", "--teacher", "resnet5O", "--student", TINY_STUDENT, *data, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "resnet50")
    code, _, err = _cli(capsys, "run", "--student", "r4_332", *data, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "block-count")
    code, _, err = _cli(capsys, "run", "--student", "r4_3323", "--max-params", "1M", *data, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "over the budget")
    code, _, err = _cli(capsys, "run", "--student", TINY_STUDENT, "--data", tmp_path / "nope", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "x").exists()  # nothing was written for any of the above

    # A teacher trained for another number of classes.
    other = tmp_path / "c3"
    students.save_checkpoint(other, students.create(TINY_TEACHER, num_classes=3))
    code, _, err = _cli(capsys, "run", "--teacher", TINY_TEACHER, "--teacher-ckpt", other, "--student",
                        TINY_STUDENT, *data, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "3 classes")
    # --teacher-ckpt alone: the checkpoint names its model; one that is damaged is refused by name.
    code, _, err = _cli(capsys, "run", "--teacher-ckpt", teacher_run, "--student", TINY_STUDENT, *data,
                        "--batch-size", "50", "--out", tmp_path / "ckpt-alone")
    assert code == 0, err
    assert json.loads((tmp_path / "ckpt-alone" / "config.json").read_text())["teacher"] == TINY_TEACHER
    # A truncated checkpoint.
    broken = tmp_path / "broken.pt"
    broken.write_bytes((teacher_run / "best.pt").read_bytes()[:300])
    code, _, err = _cli(capsys, "run", "--teacher", TINY_TEACHER, "--teacher-ckpt", broken, "--student",
                        TINY_STUDENT, *data, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "corrupt")
    code, _, err = _cli(capsys, "run", "--teacher-ckpt", broken, "--student", TINY_STUDENT, *data, "--out",
                        tmp_path / "x")
    assert_one_line_error(code, err, "corrupt")
    code, _, err = _cli(capsys, "eval", broken, "--data", cifar_subset_dir)
    assert_one_line_error(code, err, "corrupt")
    # --resume on a directory with no checkpoint, and --out onto an existing run.
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "run", "--resume", tmp_path / "empty")
    assert_one_line_error(code, err, "not a run directory")
    before = (teacher_run / "config.json").read_text()
    code, _, err = _cli(capsys, "teacher", "--teacher", TINY_TEACHER, *data, "--out", teacher_run)
    assert_one_line_error(code, err, "already holds a run")
    assert (teacher_run / "config.json").read_text() == before
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects unknown choices itself, in one line
        main(["run", "--recipe", "seed009", *data])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "seed009" in err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    import distill.engine as engine

    real = engine.build_loss

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls = {"n": 0}

        def forward(student, teacher, targets):
            calls["n"] += 1
            parts = type(loss).forward(loss, student, teacher, targets)
            if calls["n"] > 6:  # 6 steps per epoch: the second epoch goes bad
                parts["loss"] = parts["loss"] * float("nan")
            return parts

        loss.forward = forward
        return loss

    monkeypatch.setattr(engine, "build_loss", poisoned)
    out = tmp_path / "nan"
    code, _, err = _cli(capsys, "run", "--student", TINY_STUDENT, "--data", cifar_subset_dir, "--epochs", "3",
                        "--batch-size", "50", "--device", "cpu", "--out", out)
    assert_one_line_error(code, err, "loss became nan")
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["meta"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_resolves(name: str) -> None:
    cfg = TrainConfig(**recipe_overrides(name), kind="run")
    assert cfg.recipe == name
    model = students.create(cfg.student)
    assert students.count_params(model) > 0
    assert cfg.student == name  # each recipe trains its own report's preset student


def test_flags_override_recipe() -> None:
    from distill.cli import _parser
    from distill.cli_common import config_from_args

    args = _parser().parse_args(["run", "--recipe", "seed003", "--epochs", "5", "--teacher", "resnet18"])
    cfg = config_from_args(args, "run")
    assert cfg.epochs == 5 and cfg.optimizer == "sgd" and cfg.schedule == "multistep" and cfg.student == "seed003"
    assert cfg.teacher == "resnet18"


TIMING = ("train_seconds", "train_img_s", "seconds")


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_config_json_fed_back_reproduces_the_run(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    first, again, seed1 = tmp_path / "first", tmp_path / "again", tmp_path / "seed1"
    code, _, err = _cli(capsys, "run", "--student", TINY_STUDENT, "--data", cifar_subset_dir, "--epochs", "1",
                        "--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--mixup", "0.2", "--out", first)
    assert code == 0, err
    code, _, err = _cli(capsys, "run", "--config", first / "config.json", "--out", again)
    assert code == 0, err
    assert (again / "config.json").read_text() == (first / "config.json").read_text()
    assert _metrics(again) == _metrics(first)  # losses, accuracies and lr exactly equal
    assert (again / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")

    # One change on top of the file: only that setting differs.
    code, _, err = _cli(capsys, "run", "--config", first / "config.json", "--seed", "1", "--epochs", "1",
                        "--stop-after", "0", "--out", seed1)
    assert code == 0, err
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, seed1))
    assert {k for k in a if a[k] != b[k]} == {"seed"} and b["seed"] == 1


def test_config_files_yaml_old_names_and_deprecated_alpha(capsys, tmp_path: Path) -> None:
    from distill.cli import _parser
    from distill.cli_common import config_from_args

    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("student: r1_1_c8\nepochs: 3\nalpha: 0.7\nmilestones: [0.3, 0.6]\n")
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps({"lr": 0.2, "kd_loss": "dkd"}))
    pytest.importorskip("yaml")
    cfg = config_from_args(_parser().parse_args(["run", "--config", str(yaml_file), "--epochs", "4"]), "run")
    assert (cfg.student, cfg.epochs, cfg.kd_weight, cfg.milestones) == ("r1_1_c8", 4, 0.7, (0.3, 0.6))
    cfg = config_from_args(_parser().parse_args(["teacher", "--config", str(json_file), "--teacher", "resnet18"]),
                           "teacher")
    assert (cfg.kind, cfg.lr, cfg.kd_loss, cfg.teacher) == ("teacher", 0.2, "dkd", "resnet18")
    args = _parser().parse_args(["run", "--alpha", "0.5"])
    assert "--alpha is deprecated; use --kd-weight" in capsys.readouterr().out
    assert config_from_args(args, "run").kd_weight == 0.5
    assert TrainConfig.from_dict({"alpha": 0.3}).kd_weight == 0.3  # config.json of older runs

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lrr": 0.1}))
    code, _, err = _cli(capsys, "run", "--config", bad, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "unknown settings ['lrr']")
    code, _, err = _cli(capsys, "run", "--config", tmp_path / "missing.json", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "cannot read config")


def test_tensorboard_event_files_or_a_clear_note(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    import importlib.util

    out = tmp_path / "tb"
    code, stdout, err = _cli(capsys, "run", "--student", TINY_STUDENT, "--data", cifar_subset_dir, "--epochs", "1",
                             "--batch-size", "100", "--device", "cpu", "--no-ema", "--no-tta", "--tensorboard",
                             "--out", out)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["tensorboard"] is True
    if importlib.util.find_spec("tensorboard") is None:
        assert "tensorboard is not installed" in stdout
    else:
        assert list(out.glob("events.out.tfevents.*"))


def test_teacher_recipe_is_named_and_follows_the_students_data_and_budget() -> None:
    from distill.recipes import TEACHER_RECIPES, teacher_config

    student = TrainConfig(teacher="resnet18", optimizer="adam", lr=1e-3, epochs=7, batch_size=64, mixup=0.2,
                          data="cifar100", train_subset=500, seed=4, label_smoothing=0.0, kd_weight=0.5)
    cfg = teacher_config(student)
    assert (cfg.kind, cfg.teacher, cfg.recipe) == ("teacher", "resnet18", "teacher-default")
    assert (cfg.optimizer, cfg.lr, cfg.label_smoothing) == ("sgd", 0.1, 0.0)  # the recipe's own values
    assert (cfg.epochs, cfg.batch_size, cfg.mixup, cfg.data, cfg.train_subset, cfg.seed) == (7, 64, 0.2, "cifar100",
                                                                                              500, 4)
    assert cfg.kd_weight is None  # distillation settings are the student's, not the teacher's
    assert teacher_config(student.replace(optimizer="sgd", lr=0.05)).lr == 0.1  # its own lr, not the student's
    own = teacher_config(student.replace(teacher_epochs=3, teacher_lr=0.05))  # --teacher-epochs, --teacher-lr
    assert (own.epochs, own.lr) == (3, 0.05)
    assert set(TEACHER_RECIPES) == {"teacher-default"}


def test_a_teacher_near_chance_is_named_at_once(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    from distill.engine import teacher_warning

    assert teacher_warning(19.9, 10) and teacher_warning(20.0, 10) is None and teacher_warning(1.5, 100)
    untrained = tmp_path / "untrained.pt"
    torch.manual_seed(0)
    students.save_checkpoint(untrained, students.create(TINY_TEACHER))
    code, out, err = _cli(capsys, "run", "--teacher-ckpt", untrained, "--student", TINY_STUDENT, "--data",
                          cifar_subset_dir, *COMMON, "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0, err
    assert "is near chance (10% with 10 classes)" in out
    assert out.index("is near chance") < out.index("epoch 1")  # said before the first epoch, not after it


def test_a_feature_method_the_teacher_cannot_serve_is_refused_in_the_plan(capsys, cifar_subset_dir: Path,
                                                                        tmp_path: Path) -> None:
    """A ViT has no stage maps: ``kd+at`` is refused while planning, before a teacher would be trained."""
    code, out, err = _cli(capsys, "run", "--teacher", "vit_tiny_patch16_224", "--student", TINY_STUDENT,
                          "--kd-loss", "kd+at", "--data", cifar_subset_dir, *COMMON, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "teacher vit_tiny_patch16_224 gives no stage features")
    assert "teacher training" not in out and not (tmp_path / "x").exists()


def test_progress_bars_are_labelled_per_run_and_sweep_means_say_so(capsys) -> None:
    from distill.cli_common import RichReporter

    with RichReporter("run") as reporter:
        teacher = reporter.for_run("teacher")  # a teacher trained first, for 3 epochs; then a 2-epoch student
        teacher.start_epoch(1, 3, 4)
        teacher.end_epoch({"epoch": 1, "train_loss": 1.0, "train_top1": 50.0, "train_img_s": 10.0, "seconds": 1.0})
        reporter.start_epoch(1, 2, 4)
        bars = {t.description: t.total for t in reporter.progress.tasks}
        reporter.end_epoch({"epoch": 1, "train_loss": 1.0, "train_top1": 50.0, "train_img_s": 10.0, "seconds": 1.0,
                            "mean_of": 3})
    assert bars["teacher epochs"] == 3 and bars["run epochs"] == 2
    assert "mean of 3 students:  epoch 1" in capsys.readouterr().out
