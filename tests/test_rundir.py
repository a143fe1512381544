"""The run folder module: file names, metrics in two formats, the typed Summary and its older spellings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from distill.config import TrainConfig
from distill.rundir import CONFIG_FILE, RunDir, RunError, Summary, is_complete, read_summary

OLD_SUMMARY = {  # as written before kd "alpha" became "kd_weight", with keys Summary does not name
    "kind": "run", "complete": True, "epochs_done": 2, "epochs": 2, "model": "r1_1_c8", "arch": {"family": "student"},
    "student": "r1_1_c8", "num_params": 1234, "macs": 5678, "flops": 11356, "top1_last": 20.0, "top1_best": 21.5,
    "top1_ema": 19.0, "top1_tta": None, "top1_unit": "percent", "eval_set": "test set (100 images)",
    "teacher": "r2_11_c8-16", "teacher_top1": 30.0,
    "kd": {"loss": "kd", "temperature": 4.0, "alpha": 0.9, "ce_weight": 0.1},
    "latency": {"cpu": {"batch1_ms": 1.5}}, "pruned": {"ratio": 0.5},
}


def test_summary_reads_old_names_and_keeps_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps(OLD_SUMMARY))
    summary = read_summary(tmp_path)
    assert summary.kd == {"loss": "kd", "temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1}
    assert summary["top1_best"] == 21.5 and summary.get("latency") == {"cpu": {"batch1_ms": 1.5}}
    assert summary.get("absent", "x") == "x" and "pruned" in summary and summary.run_dir == tmp_path
    again = Summary.from_dict(summary.to_dict())
    assert again == summary and is_complete(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(RunError, match="corrupt"):
        read_summary(tmp_path)
    assert not is_complete(tmp_path)


def test_run_dir_creates_writes_metrics_in_two_formats_and_refuses_reuse(tmp_path: Path) -> None:
    folder = RunDir(tmp_path / "deep" / "run")
    folder.create(TrainConfig(epochs=3))
    assert TrainConfig.load(folder / CONFIG_FILE).epochs == 3
    records = [{"epoch": 1, "train_loss": 2.0, "lr": 0.1}, {"epoch": 2, "train_loss": 1.5, "lr": 0.05,
                                                            "test_top1": 30.0}]
    folder.write_metrics(records)
    assert folder.read_metrics() == records
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["test_top1"] == "" and rows[1]["test_top1"] == "30.0"
    cfg, checkpoint = folder.load_resume()  # no checkpoint yet: the engine starts the run again
    assert cfg.epochs == 3 and checkpoint is None
    (folder / "last.pt").write_bytes(b"")  # once a checkpoint exists, the folder holds a run
    with pytest.raises(RunError, match="already holds a run"):
        folder.create(TrainConfig())
