"""Issue 13, points 6 and 7: what a new user meets first.

Start-up: ``--help`` of every command answers without importing torch or timm (checked on the modules a
fresh interpreter imports, which is deterministic, unlike a timing; ``benchmarks/startup.py`` times it).
Every flag has help text. ``distill compare`` fits a 100-column terminal and marks teacher runs;
``distill export`` and the eval report create their output folders; export latency names its runtime and
covers onnxruntime when it exported ONNX.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, invoke

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "torch_pruning", "fvcore", "matplotlib", "onnxruntime")


def _imported(*code: str) -> set[str]:
    """Top-level names of the modules a fresh interpreter imports while running ``python -X importtime ...``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", proc.stderr, flags=re.M)
    assert names, "no -X importtime output"
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "distill", "--help"],
        ["-m", "distill", "run", "--help"],
        ["-m", "distill", "compare", "--help"],
        ["-m", "students", "--help"],
        ["-m", "students", "show", "--help"],
        ["-m", "students", "list"],
        ["-m", "prune", "--help"],
        ["-c", "import students, distill, prune"],
    ],
    ids=lambda argv: " ".join(argv).replace("-m ", ""),
)
def test_help_does_not_import_torch_or_timm(argv: list[str]) -> None:
    heavy = sorted(_imported(*argv) & set(HEAVY))
    assert not heavy, f"python {' '.join(argv)} imported {heavy}"


def test_students_exports_load_lazily_and_register_with_timm_in_any_order() -> None:
    import students

    assert set(students.__all__) <= set(dir(students))
    for name in students.__all__:  # every advertised name resolves
        assert getattr(students, name) is not None, name
    assert issubclass(students.SpecError, students.errors.UserError)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        students.nope  # noqa: B018

    # The timm contract in fresh interpreters, whichever is imported first: students (timm loads later),
    # a students submodule that itself imports timm, or timm.
    for first in ("import students; assert 'timm' not in sys.modules",
                  "from students.checkpoint import load_file", "import timm; import students"):
        code = (f"import sys; {first}; import timm; "
                "assert timm.is_model('seed003') and timm.is_model('r2_11_c8-16'), 'not registered'; "
                "print(timm.create_model('seed000', num_classes=7).num_classes)")
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0 and proc.stdout.strip() == "7", (first, proc.stderr[-1500:])


# -------------------------------------------------------------------------------------------- help texts


def _missing_help(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not (helps.get(name) or "").strip():
                    missing.append(f"{prefix} {name} (the command itself)")
                missing += _missing_help(sub, f"{prefix} {name}")
            continue
        text = action.help
        if not text or text == argparse.SUPPRESS or not str(text).strip():
            missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("module", ["distill.cli", "prune.cli", "students.cli"])
def test_every_flag_has_help_text(module: str) -> None:
    import importlib

    parser = importlib.import_module(module)._parser()
    assert not _missing_help(parser, parser.prog), "flags without help text"


# ------------------------------------------------------------------------------------------------ compare


def _row(name: str, model: str, **changes):
    from distill.compare import RunRow

    fields = dict(path=Path("runs") / name, name=name, model=model, kind="run", pruned=False, complete=True,
                  num_params=4_935_242, macs=563_000_000, top1_last=93.12, top1_best=93.40, top1_ema=93.51,
                  top1_tta=93.93, teacher="resnet50", teacher_top1=94.21, kd_loss="dkd", kd_temperature=4.0,
                  kd_weight=0.9, mixup=0.8, cutmix=1.0, mix_prob=0.5, epochs_done=200, epochs=200, wall_s=12345.6,
                  train_img_s=1234.5, latency_cpu_batch1_ms=1.234)
    return RunRow(**(fields | changes))


def _text(table, width: int) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, force_terminal=False)
    console.print(table)
    return console.export_text()


def test_compare_default_columns_fit_100_characters_and_mark_teachers() -> None:
    from distill.compare import DEFAULT_COLUMNS, compare_table

    rows = [
        _row("run-r4_3323-20261124-073000", "r4_3323_c64-128-128-256"),
        _row("t-resnet50", "resnet50", kind="teacher", teacher=None, teacher_top1=None, kd_loss=None, top1_last=95.5),
        _row("pruned-2.5M", "r4_3323_c48-96-96-192", pruned=True, complete=False, epochs_done=3,
             num_params=2_499_876, top1_last=91.07),
    ]
    for budget in (None, 5_000_000):
        text = _text(compare_table(rows, budget=budget, columns=DEFAULT_COLUMNS), 100)
        widest = max(len(line.rstrip()) for line in text.splitlines())
        assert widest <= 100, text
        assert text.count("┓") == 1 and text.count("┘") == 1, text  # both right-hand corners: nothing cropped
        for number in ("4,935,242", "2,499,876", "563M", "93.12", "95.50", "91.07", "94.21", "1.234", "3/200"):
            assert number in text, (number, text)
        assert "[teacher]" in text and "[pruned]" in text  # beside the model, which may wrap
    assert "resnet50 [teacher]" in _text(compare_table(rows, columns=DEFAULT_COLUMNS), 100)
    from distill.compare import COLUMNS

    kd = next(c for c in COLUMNS if c.key == "kd")  # a KD + mixing run never reads as plain KD
    assert kd.value(rows[0]) == "dkd T=4 w=0.9 + mix" and kd.value(rows[1]) == "- + mix"
    # every column on request, and the run names stay findable
    wide = _text(compare_table(rows, columns=None), 250)
    for header in ("EMA %", "TTA %", "mixing", "img/s", "wall s", "pruned"):
        assert header in wide
    narrow = _text(compare_table(rows, columns=["model", "top1"]), 100)
    assert "t-resnet50" not in narrow and "resnet50 [teacher]" in narrow and "params" not in narrow


def test_select_columns() -> None:
    from students.errors import UserError

    from distill.compare import COLUMNS, DEFAULT_COLUMNS, select_columns

    assert select_columns(None) == DEFAULT_COLUMNS
    assert select_columns("all") == tuple(c.key for c in COLUMNS)
    assert select_columns(" model, top1,top1 ") == ("model", "top1")
    with pytest.raises(UserError, match=r"unknown --columns name\(s\) 'accuracy'.*top1_ema"):
        select_columns("model,accuracy")
    with pytest.raises(UserError, match="empty"):
        select_columns(",")


def _fake_run(root: Path, name: str, **summary) -> Path:
    """A run directory as compare reads it: config, metrics, a checkpoint file and summary.json."""
    run = root / name
    run.mkdir(parents=True)
    for file in ("config.json", "metrics.jsonl", "best.pt"):
        (run / file).write_text("{}\n")
    base = dict(kind="run", complete=True, epochs_done=2, epochs=2, model="r1_1_c4", arch={}, num_params=470,
                macs=123_456, flops=246_912, top1_last=20.5, top1_best=21.0, top1_ema=19.0, top1_tta=20.75,
                eval_set="test", teacher="r1_1_c8", teacher_top1=30.25, kd={"loss": "kd", "temperature": 4.0,
                                                                           "kd_weight": 0.9})
    (run / "summary.json").write_text(json.dumps(base | summary))
    return run


def test_compare_cli_columns_flag(capsys, tmp_path: Path) -> None:
    from distill.cli import main

    student = _fake_run(tmp_path, "run-a")
    teacher = _fake_run(tmp_path, "t-b", kind="teacher", model="resnet18", teacher=None, teacher_top1=None, kd=None,
                        top1_last=55.25)
    code, out, err = invoke(main, capsys, "compare", student, teacher)
    assert code == 0, err
    assert "resnet18 [teacher]" in out and "20.50" in out and "55.25" in out
    assert "TTA %" not in out and "20.75" not in out  # not a default column
    code, out, err = invoke(main, capsys, "compare", student, teacher, "--columns", "model,top1_tta")
    assert code == 0, err
    assert "TTA %" in out and "20.75" in out and "params" not in out
    code, out, err = invoke(main, capsys, "compare", student, "--columns", "model,acc")
    assert_one_line_error(code, err, "unknown --columns name(s) 'acc'")
    assert not out


# ------------------------------------------------------------------------------------------- export, report


@pytest.fixture()
def tiny_run(tmp_path: Path) -> Path:
    """A run directory holding an untrained r1_1_c4 checkpoint and a summary (export needs nothing else)."""
    import students

    run = _fake_run(tmp_path, "run-tiny")
    (run / "best.pt").unlink()
    students.save_checkpoint(run / "best.pt", students.create("r1_1_c4"))
    return run


def test_export_creates_output_folders_and_times_onnxruntime_too(capsys, tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from distill.cli import main

    onnx_path, ts_path = tmp_path / "out" / "deep" / "x.onnx", tmp_path / "ts" / "x.ts"
    code, out, err = invoke(main, capsys, "export", tiny_run, "--onnx", onnx_path, "--torchscript", ts_path,
                            "--latency", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert onnx_path.is_file() and ts_path.is_file()
    latency = json.loads((tiny_run / "summary.json").read_text())["latency"]
    assert set(latency) == {"cpu", "onnxruntime_cpu"}
    assert latency["cpu"]["runtime"].startswith("pytorch ") and "eager" in latency["cpu"]["runtime"]
    assert latency["onnxruntime_cpu"]["runtime"].startswith("onnxruntime ")
    for figures in latency.values():
        assert 0 < figures["batch1_ms"] and 0 < figures["batch256_ms"] and figures["threads"] == 1
        assert figures["batch1_img_s"] == pytest.approx(1000 / figures["batch1_ms"])
    assert "onnxruntime" in out and "eager" in out  # the table names what it timed
    assert f"{latency['onnxruntime_cpu']['batch1_ms']:.3f}" in out

    # Where no folder can be made (the parent is a file), one line naming the flag, before any work.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = invoke(main, capsys, "export", tiny_run, "--onnx", blocker / "x.onnx")
    assert_one_line_error(code, err, f"--onnx {blocker / 'x.onnx'}")
    assert "is a file, not a folder" in err and not out


def test_report_writers_create_their_folders(tmp_path: Path) -> None:
    import torch

    from distill import report

    confusion = torch.tensor([[3, 1], [0, 4]])
    metrics = report.per_class_metrics(confusion, ["a", "b"])
    assert report.per_class_csv(metrics, tmp_path / "r" / "per_class.csv").is_file()
    assert report.plot_confusion(confusion, ["a", "b"], tmp_path / "r2" / "c.png").is_file()
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    shown = report.plot_misclassified(images, torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]), ["a", "b"],
                                      tmp_path / "r3" / "m.png")
    assert shown == 2 and (tmp_path / "r3" / "m.png").is_file()
