"""The Python API (``distill.fit``): the README's example runs as written, on real CIFAR-10 images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_helpers import assert_one_line_error, invoke
from distill import Summary, TrainConfig, fit, read_summary
from distill.cli import main
from distill.compare import RunRow, load_run

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    start = text.index("<!-- fit-example")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_example_runs_on_custom_modules(cifar_subset_dir: Path, tmp_path: Path, capsys) -> None:
    code = _readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    out = tmp_path / "runs" / "tiny-student"  # parents are created by fit
    code = (code.replace('"data/cifar10-jpeg/', f'"{cifar_subset_dir}/').replace('"runs/tiny-student"', repr(str(out))))
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    summary, student, teacher = scope["summary"], scope["student"], scope["teacher"]
    printed = capsys.readouterr().out
    assert f"run folder {out}" in printed
    assert "epoch 1/2" in printed and "epoch 2/2" in printed  # fit prints a line per epoch by default

    assert isinstance(summary, Summary) and summary.complete and summary.run_dir == out
    assert summary.num_params == sum(p.numel() for p in student.parameters()) and summary.macs > 0
    assert summary.teacher == "Sequential" and 0 <= summary.teacher_top1 <= 100
    assert summary.kd["kd_weight"] == 0.9 and summary.train_images == 300 and summary.test_images == 100
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv",
                                                     "metrics.jsonl", "summary.json"]
    config = TrainConfig.load(out / "config.json")
    assert (config.student, config.teacher, config.epochs, config.kd_weight) == ("Sequential", "Sequential", 2, 0.9)
    assert read_summary(out).to_dict() == summary.to_dict()
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")

    # The teacher was frozen by fit; the student was not.
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())

    # compare reads the run; eval explains in one line that a custom module must be rebuilt in Python.
    row = load_run(out)
    assert isinstance(row, RunRow) and row.model == "Sequential" and row.kd_weight == 0.9
    code_, _, err = invoke(main, capsys, "eval", out, "--data", cifar_subset_dir, "--device", "cpu")
    assert_one_line_error(code_, err, "custom module")
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["arch"] == {"family": "custom", "class": "torch.nn.modules.container.Sequential", "num_classes": 10}
    student.load_state_dict(ckpt["state_dict"])  # the README's way back: rebuild the module, load the weights


def test_fit_on_the_projects_dataset_creates_out(cifar_subset_dir: Path, tmp_path: Path) -> None:
    from distill.data import load_dataset

    import students

    data = load_dataset(str(cifar_subset_dir), cache_dir=tmp_path / "cache")
    torch.manual_seed(0)
    student = students.create("r1_1_c8", num_classes=data.num_classes)
    summary = fit(student, data, config=TrainConfig(epochs=1, batch_size=50, device="cpu", ema=False),
                  out=tmp_path / "a" / "b")
    assert summary.complete and summary.student == "r1_1_c8" and summary.arch["family"] == "student"
    assert json.loads((tmp_path / "a" / "b" / "config.json").read_text())["data"] == data.source
    with pytest.raises(Exception, match="already holds a run"):
        fit(student, data, config=TrainConfig(epochs=1), out=tmp_path / "a" / "b")


def test_fit_refuses_bad_arguments_naming_them(cifar_subset_dir: Path) -> None:
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    with pytest.raises(ValueError, match="test is required"):
        fit(student, batches)
    with pytest.raises(ValueError, match="config.teacher"):
        fit(student, batches, batches, config=TrainConfig(teacher="resnet18"))
    with pytest.raises(TypeError, match="must have a length"):
        fit(student, iter(batches), batches, config=TrainConfig(epochs=1, device="cpu"))


def test_a_student_that_reaches_its_teacher_is_told_once(cifar_subset_dir: Path, tmp_path: Path) -> None:
    """A teacher the student has caught up with (here an untrained one, ~10%) gets one warning, not one per epoch."""
    from distill.data import load_dataset

    import students

    messages: list[str] = []

    class Collect:
        def __getattr__(self, name):  # every other reporter hook: ignore
            return lambda *args, **kwargs: None

        def message(self, text: str) -> None:
            messages.append(text)

    torch.manual_seed(0)
    data = load_dataset(str(cifar_subset_dir), cache_dir=tmp_path / "cache")
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        teacher[1].weight.zero_()
        teacher[1].bias.copy_(torch.arange(10.0))  # always predicts the last class: 10% on balanced data
    fit(students.create("r2_11_c8-16"), data, teacher=teacher, out=tmp_path / "run", reporter=Collect(),
        config=TrainConfig(epochs=2, batch_size=50, lr=0.05, device="cpu", ema=False, tta=False))
    warned = [m for m in messages if "has reached its teacher's" in m]
    assert len(warned) == 1, messages
    assert "(10.00%)" in warned[0] and "--kd-weight" in warned[0]
