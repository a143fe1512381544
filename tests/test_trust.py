"""Results you can trust (issue 28): no silent wrong result, every check before the first write, bounds on what a
user can make unbounded, and a lock on the teacher store. CPU, tiny nets, real CIFAR-10 images (300 / 100)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import students
from cli_helpers import assert_one_line_error, invoke
from distill import TrainConfig, fit
from distill.cli import main
from distill.data import DataError, load_dataset
from prune.cli import main as prune_main

TEACHER, STUDENT = "r2_11_c8-16", "r1_1_c4"
FAST = ["--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--no-ema", "--no-tta"]


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


@pytest.fixture(scope="module")
def teacher_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "teacher"
    assert main([str(a) for a in ["teacher", "--teacher", TEACHER, "--data", cifar_subset_dir, "--epochs", "1",
                                  *FAST, "--out", out]]) == 0
    return out


@pytest.fixture(scope="module")
def renamed_data(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    """The same images with one class folder renamed: the class names (and their sorted order) differ."""
    root = tmp_path_factory.mktemp("renamed") / "data"
    shutil.copytree(cifar_subset_dir, root)
    for split in ("train", "test"):
        (root / split / "airplane").rename(root / split / "zeppelin")
    return root


# ------------------------------------------------------------------------------ 2. silent wrong results


def test_class_names_are_checked_against_every_checkpoint(capsys, cifar_subset_dir: Path, teacher_run: Path,
                                                          renamed_data: Path, tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "eval", teacher_run, "--data", renamed_data, "--device", "cpu")
    assert_one_line_error(code, err, "was trained on other classes")
    code, _, err = _cli(capsys, "run", "--teacher", TEACHER, "--teacher-ckpt", teacher_run, "--student", STUDENT,
                        "--data", renamed_data, "--epochs", "1", *FAST, "--out", tmp_path / "kd")
    assert_one_line_error(code, err, "teacher checkpoint")
    assert not (tmp_path / "kd").exists()
    code, _, err = invoke(prune_main, capsys, teacher_run, "--ratio", "0.5", "--finetune-epochs", "0", "--data",
                          renamed_data, "--out", tmp_path / "pruned")
    assert_one_line_error(code, err, "SOURCE")
    assert not (tmp_path / "pruned").exists()


def test_resume_refuses_data_whose_classes_changed(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(cifar_subset_dir, data)
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "run", "--student", STUDENT, "--data", data, "--epochs", "2", *FAST, "--out", run,
                        "--stop-after", "1")
    assert code == 0, err
    for split in ("train", "test"):
        (data / split / "cat").rename(data / split / "kitten")
    code, _, err = _cli(capsys, "run", "--resume", run)
    assert_one_line_error(code, err, "was trained on other classes")


def test_a_finished_run_is_reopened_for_more_epochs_only_when_asked(capsys, cifar_subset_dir: Path,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _cli(capsys, "run", "--student", STUDENT, "--data", cifar_subset_dir, "--epochs", "1", *FAST,
                "--out", run)[0] == 0
    before = (run / "summary.json").read_text()
    code, _, err = _cli(capsys, "run", "--resume", run, "--epochs", "2")
    assert_one_line_error(code, err, "Add --extend")
    assert (run / "summary.json").read_text() == before and TrainConfig.load(run / "config.json").epochs == 1
    code, _, err = _cli(capsys, "run", "--resume", run, "--epochs", "2", "--extend")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 2


def test_a_student_with_other_outputs_than_the_classes_is_refused(cifar_subset_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(str(cifar_subset_dir))
    with pytest.raises(Exception, match="outputs \\(12,\\) values per image but the data has 10 classes"):
        fit(students.create(STUDENT, num_classes=12), data, config=TrainConfig(epochs=1, device="cpu"),
            out=tmp_path / "twelve")
    assert not (tmp_path / "twelve").exists()


def test_sixteen_bit_and_float_images_keep_their_range(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "deep"
    for split in ("train", "test"):
        for cls, value in (("dark", 0.25), ("light", 0.75)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            Image.fromarray(np.full((32, 32), int(value * 65535), dtype=np.uint16)).save(folder / "a.png")
            Image.fromarray(np.full((32, 32), value, dtype=np.float32), mode="F").save(folder / "b.tif")
    data = load_dataset(str(root), cache_dir=tmp_path / "cache")
    assert sorted(data.train_images.reshape(4, -1).float().mean(1).round().tolist()) == [64, 64, 191, 191]


def test_a_float_image_without_a_known_range_is_refused_by_name(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "odd"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 1000.0, dtype=np.float32), mode="F").save(root / split / cls / "x.tif")
    with pytest.raises(DataError, match="x.tif.*no known range"):
        load_dataset(str(root), cache_dir=tmp_path / "cache")


def test_a_fresh_sweep_adopts_a_finished_student_only_with_the_same_settings(capsys, cifar_subset_dir: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    common = ["--data", cifar_subset_dir, "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--no-ema",
              "--no-tta"]
    assert _cli(capsys, "run", "--student", STUDENT, *common, "--lr", "0.05", "--out", out / STUDENT)[0] == 0
    code, _, err = _cli(capsys, "sweep", "--students", STUDENT, *common, "--lr", "0.1", "--out", out)
    assert_one_line_error(code, err, "was trained with other settings (it differs in lr)")
    assert not (out / "sweep.json").exists()
    code, out_text, err = _cli(capsys, "sweep", "--students", STUDENT, *common, "--lr", "0.05", "--out", out)
    assert code == 0, err
    assert "finished before, skipped" in out_text and (out / "sweep.json").exists()


def test_a_sweep_refuses_a_pruned_runs_settings(capsys, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    TrainConfig(student=STUDENT, init_ckpt=str(tmp_path / "pruned.pt")).save(config)
    code, _, err = _cli(capsys, "sweep", "--config", config, "--students", f"{STUDENT},r1_1_c8", "--out",
                        tmp_path / "sweep")
    assert_one_line_error(code, err, "a sweep trains its students from scratch")
    assert not (tmp_path / "sweep").exists()


def test_an_init_checkpoint_trains_only_its_own_student(capsys, cifar_subset_dir: Path, teacher_run: Path,
                                                        tmp_path: Path) -> None:
    """A config naming another student than its init_ckpt holds (however it got there) is refused."""
    config = tmp_path / "config.yaml"
    config.write_text(f"student: {STUDENT}\ninit_ckpt: {teacher_run / 'best.pt'}\n")
    code, _, err = _cli(capsys, "run", "--config", config, "--data", cifar_subset_dir, "--epochs", "1", *FAST,
                        "--out", tmp_path / "run")
    assert_one_line_error(code, err, f"holds a {TEACHER}, but the run's student is {STUDENT}")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ 3. checks before any write


def test_prune_checks_the_fine_tuning_teacher_before_writing(capsys, cifar_subset_dir: Path, teacher_run: Path,
                                                             tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    source = tmp_path / "kd"
    assert _cli(capsys, "run", "--teacher", TEACHER, "--teacher-ckpt", teacher, "--student", "r1_1_c8", "--data",
                cifar_subset_dir, "--epochs", "1", *FAST, "--out", source)[0] == 0
    shutil.rmtree(teacher)  # the source's teacher is gone
    code, _, err = invoke(prune_main, capsys, source, "--ratio", "0.5", "--round-to", "1", "--out", tmp_path / "pruned")
    assert_one_line_error(code, err, f"checkpoint {teacher} does not exist")
    assert not (tmp_path / "pruned").exists()


def test_a_sweep_that_cannot_start_writes_no_sweep_file(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "sweep", "--students", f"{STUDENT},r1_1_c8", "--data", cifar_subset_dir,
                        "--train-subset", "5", "--epochs", "1", *FAST, "--out", tmp_path / "sweep")
    assert_one_line_error(code, err, "--train-subset 5 leaves")
    assert not (tmp_path / "sweep" / "sweep.json").exists()


@pytest.mark.parametrize("batches, fragment", [
    ([{"image": torch.randn(4, 3, 32, 32), "label": torch.zeros(4, dtype=torch.long)}], "yields dicts"),
    ([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 10]))], "labels run 0..10, outside 0..9"),
    ([(torch.randn(4, 3, 32, 32), torch.zeros(4))], "labels must be 4 integer class indices"),
    ([(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))], "images must be a float"),
    ([(torch.randn(4, 3, 32, 32),)], "must yield (images, labels) pairs"),
])
def test_fit_checks_the_first_batch_before_writing(tmp_path: Path, batches: list, fragment: str) -> None:
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(Exception) as info:
        fit(student, batches, batches, config=TrainConfig(epochs=1, device="cpu", num_classes=10),
            out=tmp_path / "run")
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ 4. bounds


@pytest.mark.parametrize("flags, fragment", [
    (["--ratio", "0.5", "--iterative-steps", "100000"], "--iterative-steps 100000 is more steps"),
    (["--ratio", "0.5", "--round-to", "4096"], "--round-to 4096 must be a channel count in 1..512"),
    (["--ratio", "0.5", "--sparse-epochs", "1", "--sparse-reg", "nan"], "--sparse-reg nan"),
    (["--ratio", "0.5", "--sparse-epochs", "1", "--sparse-reg", "-1"], "--sparse-reg -1.0"),
    (["--ratio", "0.5", "--seed", "1" * 24], "--seed"),
])
def test_prune_bounds_are_one_line(capsys, teacher_run: Path, tmp_path: Path, flags: list, fragment: str) -> None:
    code, _, err = invoke(prune_main, capsys, teacher_run, *flags, "--finetune-epochs", "0", "--out", tmp_path / "p")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "p").exists()


def test_eval_refuses_an_empty_test_subset(capsys, teacher_run: Path) -> None:
    code, _, err = _cli(capsys, "eval", teacher_run, "--test-subset", "0", "--device", "cpu")
    assert_one_line_error(code, err, "--test-subset must be at least 1")


def test_a_huge_epoch_count_is_refused_at_once_even_in_a_dry_run(capsys, tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text("epochs: 1e20\n")
    started = time.perf_counter()
    code, _, err = _cli(capsys, "run", "--config", config, "--dry-run")
    assert_one_line_error(code, err, "--epochs 100000000000000000000 is out of range")
    assert time.perf_counter() - started < 5


def test_a_symlink_loop_in_an_image_folder_is_one_line(cifar_subset_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(cifar_subset_dir, root)
    (root / "train" / "cat" / "loop").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(DataError, match="symlink loop"):
        load_dataset(str(root), cache_dir=tmp_path / "cache")


def test_one_class_is_refused_as_such_not_as_mixing(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "one"
    for split in ("train", "test"):
        shutil.copytree(cifar_subset_dir / split / "cat", root / split / "cat")
    code, _, err = _cli(capsys, "run", "--student", STUDENT, "--data", root, "--epochs", "1", *FAST,
                        "--out", tmp_path / "run")
    assert_one_line_error(code, err, "has 1 class; a classifier needs at least 2")
    assert "mixing" not in err and not (tmp_path / "run" / "last.pt").exists()


def test_a_dataset_too_large_for_memory_is_refused_before_decoding(cifar_subset_dir: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    import distill.data.decode as decode

    monkeypatch.setattr(decode, "available_memory_bytes", lambda: 10_000_000)
    monkeypatch.setattr(decode, "decode_images", lambda *a, **k: pytest.fail("decoding started"))
    with pytest.raises(DataError, match=r"400 images at 256x256 px needs about 225 MB of memory, but 10 MB are available.*at most about 52 px fits"):
        load_dataset(str(cifar_subset_dir), image_size=256, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------ the teacher store's lock


@pytest.mark.slow
def test_two_runs_needing_one_unstored_teacher_share_it(cifar_subset_dir: Path, tmp_path: Path) -> None:
    """The second waits for the first to store the teacher, then uses it (no 'use --resume' on a folder it does
    not own); both finish."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISTILL_TEACHERS": str(tmp_path / "store"),
           "DISTILL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "distill", "run", "--teacher", TEACHER, "--teacher-epochs", "40", "--student",
            STUDENT, "--data", str(cifar_subset_dir), "--epochs", "1", *FAST]
    first = subprocess.Popen([*args, "--out", str(tmp_path / "a")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "store").glob("*/.lock")):  # the first is training the teacher now
        assert time.time() < deadline and first.poll() is None, "the first run never started its teacher"
        time.sleep(0.1)
    second = subprocess.run([*args, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True,
                            timeout=300)
    out_a, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out_a[-2000:]
    assert second.returncode == 0, (second.stdout + second.stderr)[-2000:]
    assert "waiting for it to finish" in second.stdout and "stored teacher" in second.stdout
    assert len(list((tmp_path / "store").iterdir())) == 1


@pytest.mark.parametrize("target, fragment", [(float("nan"), "positive, finite"), ("4.9M", "must be a number"),
                                              (-5, "positive, finite"), (True, "must be a number")])
def test_prune_to_target_refuses_targets_that_are_not_sizes(target: object, fragment: str) -> None:
    from prune import PruneError, prune_to_target

    model = students.create("r2_11_c8-16", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match=fragment):
        prune_to_target(model, "params", target)  # type: ignore[arg-type]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched


def test_a_missed_size_target_is_reported_and_recorded(capsys, teacher_run: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    import prune.cli as prune_cli

    monkeypatch.setattr(prune_cli, "_measured", lambda kind, cost: 100)  # as if the re-measured count fell short
    code, out, err = invoke(prune_main, capsys, teacher_run, "--target-params", "50%", "--round-to", "1",
                            "--finetune-epochs", "0", "--out", tmp_path / "pruned")
    assert code == 0, err
    assert "warning: target missed: fvcore counts 100 params" in out
    record = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert record["target"]["measured"] == 100 and record["target"]["missed"] is True
