"""``distill export``: ONNX and TorchScript parity with PyTorch, latency recorded in the run, shown by compare."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import students
from distill.cli import main
from distill.export import ExportError, check_onnx, export_onnx, record_latency
from cli_helpers import assert_one_line_error, invoke

onnxruntime = pytest.importorskip("onnxruntime")

STUDENT = "r1_1_c4"


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


@pytest.fixture(scope="module")
def run_dir(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export-runs") / f"run-{STUDENT}"
    code = main(["run", "--student", STUDENT, "--data", str(cifar_subset_dir), "--epochs", "1", "--batch-size", "50",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out


def test_onnx_and_torchscript_match_pytorch(capsys, run_dir: Path, tmp_path: Path) -> None:
    onnx_path, ts_path = tmp_path / "s.onnx", tmp_path / "s.ts"
    code, out, err = _cli(capsys, "export", run_dir / "best.pt", "--onnx", onnx_path, "--torchscript", ts_path)
    assert code == 0, err
    printed = [float(x) for x in re.findall(r"max abs diff ([0-9.e+-]+)", out)]
    assert len(printed) == 2 and all(d < 1e-4 for d in printed)

    model, _ = students.load_checkpoint(run_dir / "best.pt")
    model.eval()
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # a batch size never traced
    with torch.no_grad():
        want = model(x).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == (7, 10)
    assert np.abs(got - want).max() < 1e-4
    with torch.no_grad():
        scripted = torch.jit.load(str(ts_path))(x).numpy()
    assert np.abs(scripted - want).max() < 1e-4
    assert not list(tmp_path.glob(".*.tmp"))  # temporary files were renamed into place


def test_parity_check_catches_a_different_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a, b = students.create(STUDENT).eval(), students.create(STUDENT).eval()
    for p in b.parameters():
        torch.nn.init.normal_(p)
    path = export_onnx(a, tmp_path / "a.onnx", (3, 32, 32))
    assert check_onnx(path, a, (3, 32, 32)) < 1e-4
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx(path, b, (3, 32, 32))


def test_parity_is_judged_at_the_logits_scale(tmp_path: Path) -> None:
    """Logits of order 1e5 (an undertrained net) differ by fp32 rounding alone by more than the absolute bound;
    relative to their scale the export is faithful, and a really different model is still caught."""
    torch.manual_seed(0)
    a = students.create(STUDENT).eval()
    with torch.no_grad():
        for m in a.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(1e6)
    path = export_onnx(a, tmp_path / "big.onnx", (3, 32, 32))
    with torch.no_grad():
        assert a(torch.randn(5, 3, 32, 32)).abs().max() > 1e4
    assert check_onnx(path, a, (3, 32, 32)) >= 0.0
    b = students.create(STUDENT).eval()
    with pytest.raises(ExportError, match=r"largest \|logit\|"):
        check_onnx(path, b, (3, 32, 32))


def test_a_file_that_fails_its_check_is_removed(capsys, run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import distill.export as export

    def unfaithful(*args, **kwargs):
        raise ExportError("ONNX output differs from PyTorch by 3 (tolerance 0.001)")

    monkeypatch.setattr(export, "check_onnx", unfaithful)
    target = tmp_path / "refused.onnx"
    code, _, err = _cli(capsys, "export", run_dir, "--onnx", target)
    assert_one_line_error(code, err, f"differs from PyTorch by 3 (tolerance 0.001); {target} was removed")
    assert not target.exists()


def test_latency_is_recorded_in_the_run_and_shown_by_compare(capsys, run_dir: Path) -> None:
    before = json.loads((run_dir / "summary.json").read_text())
    code, out, err = _cli(capsys, "export", run_dir, "--latency", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    cpu = summary["latency"]["cpu"]
    assert cpu["threads"] == 1 and 0 < cpu["batch1_ms"] and 0 < cpu["batch256_ms"]
    assert cpu["batch256_img_s"] == pytest.approx(256 / (cpu["batch256_ms"] / 1000))
    assert "cuda" not in summary["latency"]  # --device cpu
    assert {k: v for k, v in summary.items() if k != "latency"} == before  # nothing else changed
    assert "recorded in" in out and f"{cpu['batch1_ms']:.3f}" in out

    code, out, err = _cli(capsys, "compare", run_dir)
    assert code == 0, err
    assert "CPU ms" in out and f"{cpu['batch1_ms']:.3f}" in out


def test_record_latency_keeps_other_devices(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"model": "x", "latency": {"cuda": {"batch1_ms": 0.1}}}))
    record_latency(tmp_path, {"cpu": {"batch1_ms": 2.0}})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"model": "x", "latency": {"cuda": {"batch1_ms": 0.1}, "cpu": {"batch1_ms": 2.0}}}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_export_bad_input_gets_one_line_and_exit_2(capsys, run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    code, _, err = _cli(capsys, "export", run_dir)
    assert_one_line_error(code, err, "nothing to do")
    blocker = tmp_path / "a-file"  # a missing folder is created; one under a file cannot be
    blocker.write_text("x")
    code, _, err = _cli(capsys, "export", run_dir, "--onnx", blocker / "x.onnx")
    assert_one_line_error(code, err, f"--onnx {blocker / 'x.onnx'}")
    code, _, err = _cli(capsys, "export", tmp_path / "missing.pt", "--onnx", tmp_path / "x.onnx")
    assert_one_line_error(code, err, "does not exist")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    code, _, err = _cli(capsys, "export", run_dir, "--onnx", tmp_path / "x.onnx")
    assert_one_line_error(code, err, "onnxruntime is not installed")
    assert not (tmp_path / "x.onnx").exists()


def test_upsample_mode_model_exports_behind_its_recorded_resize(tmp_path: Path) -> None:
    """The exported graph takes the 32-pixel images the model trained on; the resize to its native side is in it."""
    import teachers
    from distill.export import load_exportable

    arch = teachers.teacher_arch("test_resnet", 10, "upsample")
    path = students.save_checkpoint(tmp_path / "up.pt", teachers.create_teacher("test_resnet", 10, mode="upsample"),
                                    arch=arch)
    exportable = load_exportable(path)
    adapter = exportable.model[0]
    assert isinstance(adapter, teachers.InputAdapter) and adapter.size == (arch["resize_to"], arch["resize_to"])
    assert exportable.input_shape == (3, 32, 32)
    assert exportable.model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
