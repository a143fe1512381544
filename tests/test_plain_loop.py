"""Smoke runs of benchmarks/plain_loop.py (the plain PyTorch loop the CLI is compared against): it trains, distils
from a teacher run's last.pt and writes its JSON line. Accuracy is a benchmark, not checked here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import students
from conftest import import_benchmarks

(plain_loop,) = import_benchmarks("plain_loop")


@pytest.mark.parametrize("switches", [[], ["--schedule", "project", "--nesterov", "--no-bn-decay", "--pad", "reflect"]])
def test_plain_loop_trains_distils_and_appends_its_json_line(cifar_subset_dir: Path, tmp_path: Path, switches,
                                                             capsys) -> None:
    teacher_run = tmp_path / "teacher"
    teacher_run.mkdir()
    students.save_checkpoint(teacher_run / "last.pt", students.create("r2_11_c8-16", num_classes=10))
    out = tmp_path / "plain.jsonl"
    common = ["--student", "r2_11_c8-16", "--data", str(cifar_subset_dir), "--epochs", "2", "--batch-size", "50",
              "--json", str(out), *switches]
    assert plain_loop.main(common + ["--seed", "0"]) == 0
    assert plain_loop.main(common + ["--seed", "1", "--teacher-run", str(teacher_run)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["seed"], r["teacher"]) for r in lines] == [(0, None), (1, str(teacher_run))]
    for r in lines:
        assert r["epochs"] == 2 and r["student"] == "r2_11_c8-16" and 0.0 <= r["top1"] <= 100.0
        assert r["schedule"] == ("project" if switches else "torch") and r["nesterov"] == bool(switches)
        assert r["bn_decay"] == (not switches) and r["pad"] == ("reflect" if switches else "zero")
    assert "epoch 2/2" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_augment_crops_a_shifted_window_of_the_padded_image_and_sometimes_flips_it(mode: str) -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    padded = torch.nn.functional.pad(images, (2,) * 4, mode="constant" if mode == "zero" else "reflect")
    out = plain_loop.augment(images, 2, mode, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for i in range(2):  # each output is one of the 5 x 5 windows, flipped or not
        windows = [padded[i, :, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    flips_only = plain_loop.augment(images, 0, mode, torch.Generator().manual_seed(1))
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(2)) for o, x in zip(flips_only, images))
