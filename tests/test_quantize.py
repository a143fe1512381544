"""``distill quantize``: int8 ONNX of a run (and of a pruned run) by onnxruntime's static quantization, its
top-1 on the run's own test images and its latency against fp32, recorded in summary.json and shown by compare."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, invoke
from distill import quantize
from distill.cli import main

onnxruntime = pytest.importorskip("onnxruntime")

STUDENT = "r2_11_c8-16"
QUICK = ["--calibration", "60", "--threads", "1"]


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


@pytest.fixture(scope="module")
def runs(cifar_subset_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A tiny student trained 2 epochs on 300 real images, and the same pruned to half its channels."""
    from prune.cli import main as prune_main

    root = tmp_path_factory.mktemp("quantize-runs")
    student, pruned = root / "student", root / "pruned"
    assert main(["run", "--student", STUDENT, "--data", str(cifar_subset_dir), "--epochs", "2", "--batch-size", "50",
                 "--lr", "0.05", "--device", "cpu", "--no-tta", "--out", str(student)]) == 0
    assert prune_main([str(student), "--ratio", "0.5", "--round-to", "1", "--finetune-epochs", "1",
                       "--out", str(pruned)]) == 0
    return {"student": student, "pruned": pruned}


@pytest.mark.parametrize("which", ["student", "pruned"])
def test_int8_file_loads_classifies_close_to_fp32_and_is_recorded(capsys, runs, which: str) -> None:
    run = runs[which]
    code, out, err = _cli(capsys, "quantize", run, *QUICK, "--max-drop", "100")
    assert code == 0, err
    int8 = run / "model.int8.onnx"
    session = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ format: it really is int8
    assert session.get_inputs()[0].name == "images"
    record = json.loads((run / "summary.json").read_text())["int8"]
    assert record["file"] == str(int8.resolve()) and record["calibration"]["images"] == 60
    assert record["calibration"]["method"] == "minmax" and record["calibration"]["seed"] == 0
    assert record["eval_set"] == "test set (100 images)" and record["threads"] == 1
    assert abs(record["drop_points"]) <= 5.0, record  # a few points on 100 images of a tiny net
    # the fp32 ONNX file classifies as the run's own evaluation does
    summary = json.loads((run / "summary.json").read_text())
    assert record["top1_fp32"] == pytest.approx(summary["top1_best"], abs=1.01)
    for kind in ("fp32", "int8"):
        assert {f"batch{b}_ms" for b in (1, 64, 256)} <= set(record["latency"][kind])
    assert set(record["speedup"]) == {"batch1", "batch64", "batch256"}
    assert "int8 vs fp32" in out and "model.int8.onnx" in out
    code, out, _ = _cli(capsys, "compare", run, "--csv", run / "c.csv")
    assert code == 0 and "int8 %" in out and "int8 ms" in out
    header, row = (run / "c.csv").read_text().splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("int8_top1_pct")]) == pytest.approx(record["top1_int8"])


def test_a_drop_above_the_limit_writes_nothing_and_says_by_how_much(capsys, runs, tmp_path: Path,
                                                                     monkeypatch) -> None:
    real = quantize.onnx_top1

    def worse_int8(path, *args, **kwargs):
        return real(path, *args, **kwargs) - (15.0 if "int8" in Path(path).name else 0.0)

    monkeypatch.setattr(quantize, "onnx_top1", worse_int8)
    out = tmp_path / "refused.onnx"
    before = (runs["student"] / "summary.json").read_text()
    code, _, err = _cli(capsys, "quantize", runs["student"], *QUICK, "--out", out)
    assert_one_line_error(code, err, "points of top-1")
    lost = float(re.search(r"int8 loses (-?[0-9.]+) points", err).group(1))
    assert lost >= 15.0 - 5.0  # 15 points, and whatever int8 itself lost or gained on 100 images
    assert "above --max-drop 1" in err and "Try --method entropy" in err
    assert not out.exists() and (runs["student"] / "summary.json").read_text() == before


@pytest.mark.parametrize("args, fragment", [
    (["--calibration", "0"], "--calibration must be at least 1"),
    (["--max-drop", "-1"], "--max-drop must be between 0 and 100"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_settings_are_refused_in_one_line(capsys, runs, args, fragment) -> None:
    code, _, err = _cli(capsys, "quantize", runs["student"], *args)
    assert_one_line_error(code, err, fragment)


def test_not_a_run_folder_and_missing_onnxruntime_are_one_line(capsys, runs, tmp_path: Path, monkeypatch) -> None:
    code, _, err = _cli(capsys, "quantize", tmp_path)
    assert_one_line_error(code, err, "is not a finished run folder")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code, _, err = _cli(capsys, "quantize", runs["student"])
    assert_one_line_error(code, err, "onnxruntime is not installed; pip install onnxruntime")


def test_a_model_onnxruntime_cannot_quantize_is_one_line(capsys, runs, tmp_path: Path, monkeypatch) -> None:
    import onnxruntime.quantization as q

    def refuses(*args, **kwargs):
        raise RuntimeError("Unsupported operator: Foo\nmore detail")

    monkeypatch.setattr(q, "quantize_static", refuses)
    code, _, err = _cli(capsys, "quantize", runs["student"], *QUICK, "--out", tmp_path / "x.onnx")
    assert_one_line_error(code, err, "onnxruntime could not quantize this model: Unsupported operator: Foo")
    assert not (tmp_path / "x.onnx").exists()


def test_auto_scheme_follows_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
    assert quantize.resolve_scheme("auto")[0] == "s8s8"
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    assert quantize.resolve_scheme("auto")[0] == "u8s8-7bit"
    assert quantize.resolve_scheme("u8s8") == ("u8s8", "asked for")
