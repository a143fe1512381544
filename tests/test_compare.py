"""``distill compare``: table, CSV, Markdown and plot over real runs on real CIFAR-10 images (CPU, tiny nets)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from distill.cli import main
from distill.compare import (
    BEST_STYLE,
    IncompleteRun,
    RunRow,
    compare_table,
    load_run,
    pareto_front,
    plot,
    to_csv,
    to_markdown,
)
from cli_helpers import assert_one_line_error, invoke

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDENTS = ("r1_1_c8", "r1_1_c4")


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


def _render(table) -> str:
    console = Console(record=True, width=250, force_terminal=False)
    console.print(table)
    return console.export_text()


@pytest.fixture(scope="module")
def runs(cifar_subset_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare-runs")
    out = {}
    for student in STUDENTS:
        out[student] = root / f"run-{student}"
        code = main(["run", "--student", student, "--data", str(cifar_subset_dir), "--epochs", "1", "--batch-size",
                     "50", "--device", "cpu", "--out", str(out[student])])
        assert code == 0
    return out


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_table_shows_each_runs_numbers_and_highlights_the_best(runs: dict[str, Path]) -> None:
    rows = [load_run(runs[s]) for s in STUDENTS]
    assert all(isinstance(r, RunRow) for r in rows)
    text = _render(compare_table(rows))
    for student in STUDENTS:
        s = _summary(runs[student])
        assert f"{s['num_params']:,}" in text
        for key in ("top1_last", "top1_best", "top1_ema", "top1_tta"):
            assert f"{s[key]:.2f}" in text, key
        assert f"{s['train_img_s']:,.0f}" in text
        assert f"{s['wall_s']:.1f}" in text
        assert f"run-{student}" in text and f"{s['epochs_done']}/{s['epochs']}" in text
    big, small = (_summary(runs[s]) for s in STUDENTS)
    assert small["num_params"] < big["num_params"] and f"{big['num_params']:,}" == "1,506"

    # The smaller model's params and MACs are the best (bold green) cells of those columns; the other's not.
    table = compare_table(rows)
    headers = [c.header for c in table.columns]
    params_cells = table.columns[headers.index("params")]._cells
    by_value = {str(cell): cell.style for cell in params_cells}
    assert by_value[f"{small['num_params']:,}"] == BEST_STYLE and by_value[f"{big['num_params']:,}"] != BEST_STYLE
    top1_cells = table.columns[headers.index("top-1 %")]._cells
    best_top1 = max(big["top1_last"], small["top1_last"])
    assert any(str(c) == f"{best_top1:.2f}" and c.style == BEST_STYLE for c in top1_cells)


def test_csv_and_markdown_match_the_table(runs: dict[str, Path]) -> None:
    rows = [load_run(runs[s]) for s in STUDENTS]
    table_text = _render(compare_table(rows, sort="params", budget=1000))
    records = list(csv.DictReader(io.StringIO(to_csv(rows, sort="params", budget=1000))))
    assert [r["model"] for r in records] == ["r1_1_c4", "r1_1_c8"]  # fewest params first
    markdown = to_markdown(rows, sort="params", budget=1000)
    md_lines = [line for line in markdown.splitlines() if line.startswith("| run-")]
    assert len(md_lines) == 2 and md_lines[0].startswith("| run-r1_1_c4 | r1_1_c4 |")
    for record, md_line in zip(records, md_lines):
        s = _summary(runs[record["model"]])
        assert int(record["num_params"]) == s["num_params"] and int(record["macs"]) == s["macs"]
        assert float(record["top1_last_pct"]) == pytest.approx(s["top1_last"])
        assert float(record["top1_ema_pct"]) == pytest.approx(s["top1_ema"])
        assert float(record["wall_s"]) == pytest.approx(s["wall_s"])
        for shown in (f"{s['num_params']:,}", f"{float(record['top1_last_pct']):.2f}",
                      f"{float(record['top1_tta_pct']):.2f}"):
            assert shown in table_text and shown in md_line, shown
    # Budget 1,000 params: the 470-parameter student fits, the 1,506-parameter one is 506 over.
    assert [r["within_budget"] for r in records] == ["True", "False"]
    assert "no (+506)" in table_text and "no (+506)" in md_lines[1] and "| yes |" in md_lines[0]


def test_plot_is_a_png_with_every_run_on_both_panels(runs: dict[str, Path], tmp_path: Path) -> None:
    rows = [load_run(runs[s]) for s in STUDENTS] + [IncompleteRun(tmp_path, "not a run directory")]
    counts = plot(rows, tmp_path / "pareto.png")
    assert counts == {"params": 2, "macs": 2}
    assert (tmp_path / "pareto.png").read_bytes()[:8] == PNG_MAGIC


def test_pareto_front() -> None:
    # (cost, accuracy): 1 beats 2 (cheaper and better); 3 equals 0's accuracy at higher cost; 4 is best overall.
    points = [(100, 90.0), (50, 80.0), (60, 79.0), (200, 90.0), (300, 95.0)]
    assert pareto_front(points) == [1, 0, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1, 1.0), (1, 1.0)]) == [0, 1]  # equal points do not dominate each other


def test_incomplete_and_pruned_runs_are_listed_not_crashed(capsys, runs: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs["r1_1_c4"], corrupt)
    (corrupt / "summary.json").write_text('{"kind": "run", "num_par')
    running = tmp_path / "running"  # started, no summary yet
    running.mkdir()
    shutil.copy(runs["r1_1_c4"] / "config.json", running / "config.json")
    pruned = tmp_path / "pruned"
    shutil.copytree(runs["r1_1_c8"], pruned)
    summary = _summary(pruned)
    summary["pruned"] = {"source": "x", "params_before": 9999, "top1_before": 50.0, "top1_after_prune": 10.0}
    (pruned / "summary.json").write_text(json.dumps(summary))
    no_ckpt = tmp_path / "no-ckpt"  # a run whose checkpoints were deleted
    shutil.copytree(runs["r1_1_c4"], no_ckpt, ignore=shutil.ignore_patterns("*.pt"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("hello")

    assert "not a run directory" in load_run(empty).reason
    assert load_run(corrupt).reason.startswith("corrupt summary.json")
    assert "no summary.json" in load_run(running).reason
    assert "not a directory" in load_run(a_file).reason
    assert load_run(no_ckpt).reason == "missing a checkpoint (best.pt or last.pt)"
    assert load_run(pruned).pruned and not load_run(runs["r1_1_c8"]).pruned

    code, out, err = _cli(capsys, "compare", runs["r1_1_c4"], pruned, empty, corrupt, running, a_file,
                          tmp_path / "missing")
    assert code == 0, err
    assert "2 run(s), 5 incomplete" in out
    assert f"{empty}: not a run directory" in out and f"{corrupt}: corrupt summary.json" in out
    assert f"{tmp_path / 'missing'}: does not exist" in out
    assert "[pruned]" in out  # marked beside the model
    # A parent folder of runs is not itself a run, and the reason says what to pass instead.
    assert "pass" in load_run(runs["r1_1_c4"].parent).reason


def test_compare_cli_writes_outputs_and_shows_sorted_rows(capsys, runs: dict[str, Path], tmp_path: Path) -> None:
    code, out, err = _cli(capsys, "compare", *runs.values(), "--sort", "top1", "--budget", "1k",
                          "--csv", tmp_path / "r.csv", "--markdown", tmp_path / "r.md", "--plot", tmp_path / "r.png")
    assert code == 0, err
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    records = list(csv.DictReader((tmp_path / "r.csv").open()))
    tops = [float(r["top1_last_pct"]) for r in records]
    assert tops == sorted(tops, reverse=True)
    assert (tmp_path / "r.md").read_text().count("| run-r1_1_c") == 2
    assert "2 runs against params" in out


def test_compare_bad_input_gets_one_line_and_exit_2(capsys, runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["r1_1_c4"]
    code, out, err = _cli(capsys, "compare", run, "--sort", "accuracy")
    assert_one_line_error(code, err, "unknown --sort column 'accuracy'")
    assert "top1" in err and "params" in err and "latency_ms" in err and not out
    code, _, err = _cli(capsys, "compare")
    assert_one_line_error(code, err, "no run directories given")
    code, _, err = _cli(capsys, "compare", tmp_path / "nope1", tmp_path / "nope2")
    assert_one_line_error(code, err, "no run directories matched")
    code, _, err = _cli(capsys, "compare", str(tmp_path / "none-*"))  # a pattern the shell left unexpanded
    assert_one_line_error(code, err, "no run directories matched")
    code, out, err = _cli(capsys, "compare", run, "--csv", "/nonexistent/x.csv")
    assert_one_line_error(code, err, "--csv /nonexistent/x.csv")
    assert not out  # checked before any work: no table was printed
    code, out, err = _cli(capsys, "compare", run, "--plot", tmp_path)  # a directory, not a file
    assert_one_line_error(code, err, "is a directory")
    code, _, err = _cli(capsys, "compare", run, "--budget", "lots")
    assert_one_line_error(code, err, "not a size")


def test_the_terminal_table_fits_80_columns_shows_mixing_and_lists_a_sweeps_students(
        capsys, runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    from students.common import console as console_module

    code, out, _ = _cli(capsys, "compare", *runs.values(), "--columns", "model,kd,mixing")
    assert code == 0 and "mixing" in out and "none" in out
    monkeypatch.setattr(console_module.console, "width", 80)
    code, out, _ = _cli(capsys, "compare", *runs.values())
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80
    assert "model / run" in out and "top-1 %" in out and "run-r1_1_c8" in out  # names and top-1 stay
    sweep = tmp_path / "sweep"  # a sweep's folder: sweep.json and one run folder per student
    sweep.mkdir()
    for name, run in runs.items():
        shutil.copytree(run, sweep / name)
    (sweep / "sweep.json").write_text(json.dumps({"students": list(STUDENTS), "config": {}}))
    code, out, _ = _cli(capsys, "compare", sweep, "--csv", tmp_path / "s.csv")
    assert code == 0 and "incomplete" not in out
    assert [r["run"] for r in csv.DictReader((tmp_path / "s.csv").open())] == list(STUDENTS)
