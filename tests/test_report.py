"""Evaluation reports: per-class metrics against hand-computed numbers, and ``distill eval --report`` end to end."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.report import confusion_matrix, per_class_metrics, per_class_csv, plot_confusion, plot_misclassified

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Rows are true classes, columns predictions. Class c has no images but is predicted once.
HAND_CONFUSION = [[5, 1, 0],
                  [2, 3, 1],
                  [0, 0, 0]]
# (images, predicted, correct, precision %, recall %, F1 %), worked out by hand:
#   a: P = 5/7, R = 5/6, F1 = 2*5/(7+6) = 10/13;  b: P = 3/4, R = 3/6, F1 = 6/10;  c: P = 0/1, R undefined, F1 = 0/1
HAND_EXPECTED = {
    "a": (6, 7, 5, 71.428571, 83.333333, 76.923077),
    "b": (6, 4, 3, 75.0, 50.0, 60.0),
    "c": (0, 1, 0, 0.0, None, 0.0),
}


def test_per_class_metrics_match_hand_computation() -> None:
    metrics = per_class_metrics(torch.tensor(HAND_CONFUSION), ["a", "b", "c"])
    assert [m["class"] for m in metrics] == ["a", "b", "c"]
    for m in metrics:
        images, predicted, correct, precision, recall, f1 = HAND_EXPECTED[m["class"]]
        assert (m["images"], m["predicted"], m["correct"]) == (images, predicted, correct)
        for key, want in (("precision_pct", precision), ("recall_pct", recall), ("f1_pct", f1)):
            assert m[key] == (None if want is None else pytest.approx(want, abs=1e-5)), (m["class"], key)
    # A class never predicted has no precision.
    assert per_class_metrics(torch.tensor([[2, 0], [1, 0]]))[1]["precision_pct"] is None


def test_confusion_matrix_counts_true_rows_and_predicted_columns() -> None:
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    preds = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2])
    assert confusion_matrix(preds, labels, 3).tolist() == HAND_CONFUSION


def test_report_files_from_arrays(tmp_path: Path) -> None:
    confusion = torch.tensor(HAND_CONFUSION)
    metrics = per_class_metrics(confusion, ["a", "b", "c"])
    rows = list(csv.DictReader(per_class_csv(metrics, tmp_path / "m.csv").open()))
    assert rows[2]["recall_pct"] == "" and float(rows[0]["f1_pct"]) == pytest.approx(76.923077, abs=1e-5)
    plot_confusion(confusion, ["a", "b", "c"], tmp_path / "c.png")
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(50) % 3
    preds = labels.clone()
    preds[::2] = (labels[::2] + 1) % 3  # 25 mistakes
    assert plot_misclassified(images, labels, preds, ["a", "b", "c"], tmp_path / "w.png", max_images=12) == 12
    assert plot_misclassified(images, labels, labels, ["a", "b", "c"], tmp_path / "none.png") == 0
    for name in ("c.png", "w.png", "none.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def run_dir(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-runs") / "run"
    code = main(["run", "--student", "r1_1_c8", "--data", str(cifar_subset_dir), "--epochs", "1", "--batch-size",
                 "50", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out


def test_eval_report_writes_consistent_files(capsys, cifar_subset_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report" / "nested"
    code = main(["eval", str(run_dir), "--data", str(cifar_subset_dir), "--device", "cpu", "--report", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "F1 %" in out and "precision %" in out
    assert sorted(p.name for p in report.iterdir()) == ["confusion.png", "misclassified.png", "per_class.csv"]
    for name in ("confusion.png", "misclassified.png"):
        assert (report / name).read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader((report / "per_class.csv").open()))
    assert len(rows) == 10 and rows[0]["class"] == "airplane"
    assert all(int(r["images"]) == 10 for r in rows)  # the fixture's 10 test images per class
    assert sum(int(r["predicted"]) for r in rows) == 100
    printed_top1 = float(re.search(r"top-1: ([0-9.]+)%", out).group(1))
    csv_top1 = 100.0 * sum(int(r["correct"]) for r in rows) / sum(int(r["images"]) for r in rows)
    assert csv_top1 == pytest.approx(printed_top1, abs=0.005)
    wrong = 100 - sum(int(r["correct"]) for r in rows)
    assert f"{min(36, wrong)} of {wrong} misclassified" in out
    for r in rows:  # each printed row carries the CSV's figures, two decimals
        if r["f1_pct"]:
            assert f"{float(r['f1_pct']):.2f}" in out


def test_eval_report_into_a_file_is_one_line_error(capsys, cifar_subset_dir: Path, run_dir: Path,
                                                   tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["eval", str(run_dir), "--data", str(cifar_subset_dir), "--report", str(blocker)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a file" in err
    assert not out  # checked before evaluating
    code = main(["eval", str(run_dir), "--data", str(cifar_subset_dir), "--report", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err
