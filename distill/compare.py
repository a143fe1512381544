"""Compare finished runs side by side: one row per run directory, as a rich table, CSV, Markdown or a plot.

A run directory is anything ``distill run``, ``distill teacher`` or ``prune`` wrote (see :mod:`distill.engine`):
``config.json``, ``metrics.jsonl``, ``best.pt``/``last.pt`` and ``summary.json``. Every number shown is read
from ``summary.json``; nothing is re-evaluated. A directory that is not a run, a run that has not written its
summary yet, or a corrupt summary becomes an :class:`IncompleteRun` with the reason, never an exception.

    rows = [load_run(p) for p in Path("runs").iterdir()]
    console.print(compare_table(rows, sort="top1", budget=5_000_000, columns=DEFAULT_COLUMNS))

The terminal table shows :data:`DEFAULT_COLUMNS` (they fit 100 columns; ``distill compare --columns`` picks
others, ``all`` every one); CSV and Markdown always carry every column.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from students.common.errors import UserError
from students.common.files import atomic_write_bytes
from students.common.sizes import format_count

from .rundir import BEST_CKPT, CONFIG_FILE, LAST_CKPT, METRICS_FILE, PRUNE_RECORD, SUMMARY_FILE, SWEEP_FILE, Summary

__all__ = [
    "COLUMNS",
    "Column",
    "DEFAULT_COLUMNS",
    "INT8_COLUMNS",
    "DROP_ORDER",
    "default_columns",
    "expand_sweeps",
    "fit_columns",
    "IncompleteRun",
    "RunRow",
    "check_sort",
    "compare_table",
    "load_run",
    "pareto_front",
    "plot",
    "select_columns",
    "sort_rows",
    "to_csv",
    "to_markdown",
]

_logger = logging.getLogger(__name__)

BEST_STYLE = "bold green"


@dataclass(frozen=True)
class RunRow:
    """One finished (or stopped) run, as read from its ``summary.json``. Top-1 values are percent."""

    path: Path
    name: str  # the run directory's name
    model: str  # student spec (``distill run``, ``prune``) or teacher model (``distill teacher``)
    kind: str  # "run" or "teacher"
    pruned: bool
    complete: bool
    num_params: int
    macs: int | None
    top1_last: float | None
    top1_best: float | None
    top1_ema: float | None
    top1_tta: float | None
    teacher: str | None
    teacher_top1: float | None
    kd_loss: str | None
    kd_temperature: float | None
    kd_weight: float | None
    mixup: float | None
    cutmix: float | None
    mix_prob: float | None
    epochs_done: int | None
    epochs: int | None
    wall_s: float | None
    train_img_s: float | None
    latency_cpu_batch1_ms: float | None  # from ``distill export --latency``
    int8: dict[str, Any] | None = None  # from ``distill quantize``: top1_int8, top1_fp32, speedup, latency

    @property
    def int8_top1(self) -> float | None:
        return _figure(self.int8, "top1_int8")

    def int8_ms(self, batch: int = 1) -> float | None:
        """Milliseconds per call of the int8 ONNX file at ``batch`` (onnxruntime, CPU)."""
        return _figure(_nested(_nested(self.int8 or {}, "latency"), "int8"), f"batch{batch}_ms")

    def int8_speedup(self, batch: int = 64) -> float | None:
        return _figure(_nested(self.int8 or {}, "speedup"), f"batch{batch}")


@dataclass(frozen=True)
class IncompleteRun:
    """A path given to compare that holds no usable run, and why."""

    path: Path
    reason: str

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)


Row = RunRow | IncompleteRun


# ------------------------------------------------------------------------------------------------ loading


def _number(summary: dict[str, Any], key: str, kind: type = float) -> Any:
    """``summary[key]`` as ``kind`` (None when absent or null); ValueError when it is not a number."""
    value = summary.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is {value!r}, not a number")
    if kind is int:
        return int(value)
    return float(value)


def _str(mapping: dict[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    return None if value is None or value == "" else str(value)


def _nested(summary: dict[str, Any], key: str) -> dict[str, Any]:
    value = summary.get(key)
    return value if isinstance(value, dict) else {}


def _figure(mapping: dict[str, Any] | None, key: str) -> float | None:
    value = (mapping or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _latency_ms(summary: dict[str, Any]) -> float | None:
    value = _nested(_nested(summary, "latency"), "cpu").get("batch1_ms")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _holds_runs(path: Path) -> int:
    try:
        return sum(1 for child in path.iterdir() if (child / SUMMARY_FILE).is_file())
    except OSError:
        return 0


def expand_sweeps(paths: Iterable[str | Path]) -> list[Path]:
    """``paths`` with every sweep folder replaced by its students' run folders (in the sweep's order)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not (path / SWEEP_FILE).is_file():
            out.append(path)
            continue
        try:
            names = [str(n) for n in json.loads((path / SWEEP_FILE).read_text()).get("students", [])]
        except (OSError, json.JSONDecodeError, AttributeError):
            names = []
        members = [c for c in sorted(path.iterdir()) if c.is_dir() and (c / CONFIG_FILE).is_file()]
        order = {name: i for i, name in enumerate(names)}
        out.extend(sorted(members, key=lambda c: (order.get(c.name, len(order)), c.name)) or [path])
    return out


def load_run(path: str | Path) -> RunRow | IncompleteRun:
    """Read one run directory; an :class:`IncompleteRun` with the reason when it is not a usable run."""
    path = Path(path)
    if not path.exists():
        return IncompleteRun(path, "does not exist")
    if not path.is_dir():
        return IncompleteRun(path, "not a directory (pass run directories, e.g. runs/*)")
    summary_path = path / SUMMARY_FILE
    if not summary_path.is_file():
        if not (path / CONFIG_FILE).is_file():
            inside = _holds_runs(path)
            hint = f"; it holds {inside} run directories: pass {path}/* instead" if inside else ""
            return IncompleteRun(path, f"not a run directory (no {CONFIG_FILE} or {SUMMARY_FILE}){hint}")
        return IncompleteRun(path, f"no {SUMMARY_FILE} yet: still running, or stopped before its first epoch ended")
    missing = [name for name in (CONFIG_FILE, METRICS_FILE) if not (path / name).is_file()]
    if not (path / BEST_CKPT).is_file() and not (path / LAST_CKPT).is_file():
        missing.append(f"a checkpoint ({BEST_CKPT} or {LAST_CKPT})")
    if missing:
        return IncompleteRun(path, f"missing {', '.join(missing)}")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        return IncompleteRun(path, f"cannot read {SUMMARY_FILE}: {err}")
    except json.JSONDecodeError as err:
        return IncompleteRun(path, f"corrupt {SUMMARY_FILE} (line {err.lineno}: {err.msg})")
    if not isinstance(summary, dict):
        return IncompleteRun(path, f"corrupt {SUMMARY_FILE} (not a JSON object)")
    typed = Summary.from_dict(summary)  # older runs' names (kd "alpha") read as today's
    model = typed.student or typed.model
    if not isinstance(model, str) or not model:
        return IncompleteRun(path, f"{SUMMARY_FILE} names no model")
    if summary.get("num_params") is None:
        return IncompleteRun(path, f"{SUMMARY_FILE} has no num_params")
    kd, mixing = _nested(typed.to_dict(), "kd"), _nested(summary, "mixing")
    try:
        return RunRow(
            path=path,
            name=path.resolve().name,
            model=model,
            kind=str(summary.get("kind", "run")),
            # ``prune`` copies its record into the summary; the record file beside it covers older runs.
            pruned=bool(summary.get("pruned")) or (path / PRUNE_RECORD).is_file(),
            complete=bool(summary.get("complete")),
            num_params=_number(summary, "num_params", int),
            macs=_number(summary, "macs", int),
            top1_last=_number(summary, "top1_last"),
            top1_best=_number(summary, "top1_best"),
            top1_ema=_number(summary, "top1_ema"),
            top1_tta=_number(summary, "top1_tta"),
            teacher=_str(summary, "teacher"),
            teacher_top1=_number(summary, "teacher_top1"),
            kd_loss=_str(kd, "loss"),
            kd_temperature=_number(kd, "temperature"),
            kd_weight=_number(kd, "kd_weight"),
            mixup=_number(mixing, "mixup"),
            cutmix=_number(mixing, "cutmix"),
            mix_prob=_number(mixing, "prob"),
            epochs_done=_number(summary, "epochs_done", int),
            epochs=_number(summary, "epochs", int),
            wall_s=_number(summary, "wall_s"),
            train_img_s=_number(summary, "train_img_s"),
            latency_cpu_batch1_ms=_latency_ms(summary),
            int8=_nested(summary, "int8") or None,
        )
    except ValueError as err:
        return IncompleteRun(path, f"corrupt {SUMMARY_FILE}: {err}")


# ------------------------------------------------------------------------------------------------ columns


def _g(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _mixed(row: RunRow) -> bool:
    return bool(row.mixup or row.cutmix)


def _kd(row: RunRow) -> str:
    """The KD loss and its settings; "+ mix" when CutMix/MixUp was on, so a KD + mixing run never reads as plain
    KD where the mixing column is left out."""
    mix = " + mix" if _mixed(row) else ""
    if not row.kd_loss:
        return "-" + mix
    return f"{row.kd_loss} T={_g(row.kd_temperature)} w={_g(row.kd_weight)}{mix}"


def _mixing(row: RunRow) -> str:
    parts = [f"{name} {_g(value)}" for name, value in (("mixup", row.mixup), ("cutmix", row.cutmix)) if value]
    if not parts:
        return "none"
    return " ".join(parts) + f" p {_g(row.mix_prob)}"


def _model(row: RunRow) -> str:
    """The model, marked when the run trained a teacher or fine-tuned a pruned student."""
    marks = (["teacher"] if row.kind == "teacher" else []) + (["pruned"] if row.pruned else [])
    return row.model + "".join(f" [{m}]" for m in marks)


def _epochs(row: RunRow) -> str:
    if row.epochs_done is None:
        return "-"
    return f"{row.epochs_done}/{row.epochs}" + ("" if row.complete else " (stopped)")


@dataclass(frozen=True)
class Column:
    """One column of the comparison: its header, raw value (sorting, highlighting) and display text.

    ``better`` is ``"max"`` or ``"min"`` for numeric columns: sorting puts that end first and, with
    ``highlight``, its best value is shown in bold green. ``sort_by`` orders a text column by a number.
    """

    key: str
    header: str
    value: Callable[[RunRow], Any]
    text: Callable[[Any], str]
    better: str | None = None
    numeric: bool = False
    highlight: bool = True
    sort_by: Callable[[RunRow], Any] | None = None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _count(value: int | None) -> str:
    return "-" if value is None else format_count(value)


def _fixed(digits: int) -> Callable[[float | None], str]:
    return lambda value: "-" if value is None else f"{value:,.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _plain(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


COLUMNS: tuple[Column, ...] = (
    Column("run", "run", lambda r: r.name, _plain),
    Column("model", "model", _model, _plain),
    Column("pruned", "pruned", lambda r: r.pruned, lambda v: "yes" if v else "no"),
    Column("params", "params", lambda r: r.num_params, _int, "min", True),
    Column("macs", "MACs", lambda r: r.macs, _count, "min", True),
    Column("top1", "top-1 %", lambda r: r.top1_last, _pct, "max", True),
    Column("top1_best", "best %", lambda r: r.top1_best, _pct, "max", True),
    Column("top1_ema", "EMA %", lambda r: r.top1_ema, _pct, "max", True),
    Column("top1_tta", "TTA %", lambda r: r.top1_tta, _pct, "max", True),
    Column("teacher", "teacher", lambda r: r.teacher, _plain),
    Column("teacher_top1", "teacher %", lambda r: r.teacher_top1, _pct, "max", True, highlight=False),
    Column("kd", "KD", _kd, _plain),
    Column("mixing", "mixing", _mixing, _plain),
    Column("epochs", "epochs", _epochs, _plain, "max", highlight=False, sort_by=lambda r: r.epochs_done),
    Column("wall_s", "wall s", lambda r: r.wall_s, _seconds, "min", True),
    Column("img_s", "img/s", lambda r: r.train_img_s, _fixed(0), "max", True),
    Column("latency_ms", "CPU ms", lambda r: r.latency_cpu_batch1_ms, _fixed(3), "min", True),
    Column("int8_top1", "int8 %", lambda r: r.int8_top1, _pct, "max", True),
    Column("int8_ms", "int8 ms", lambda r: r.int8_ms(1), _fixed(3), "min", True),
    Column("int8_speedup", "int8 x", lambda r: r.int8_speedup(64), _fixed(2), "max", True),
)
_BUDGET = Column("budget", "budget", lambda r: None, _plain)  # filled per call: depends on --budget
# Widest a text column gets in the terminal table (longer text wraps, a long spec folds), so that the default
# columns fit 100 characters: rich, when squeezing a table, would otherwise crop the right-hand columns.
_MAX_WIDTH = {"run": 18, "model": 18, "teacher": 10, "kd": 9, "mixing": 12, "epochs": 9}
SORT_KEYS: tuple[str, ...] = tuple(c.key for c in COLUMNS) + ("budget",)
# What a 100-column terminal shows: the run's name sits under the model and the teacher's top-1 under the
# teacher, so these are 9 columns. The rest (EMA, TTA, mixing, speed, ...) with --columns or in the CSV.
DEFAULT_COLUMNS: tuple[str, ...] = ("run", "model", "params", "macs", "top1", "teacher", "teacher_top1",
                                    "kd", "epochs", "latency_ms")  # mixing: "+ mix" in the KD cell
# What goes first when the default columns do not fit the terminal; the names (model, run) and top-1 stay.
DROP_ORDER: tuple[str, ...] = ("latency_ms", "int8_ms", "epochs", "macs", "teacher_top1", "mixing", "teacher",
                               "kd", "int8_top1", "params")


INT8_COLUMNS: tuple[str, ...] = ("int8_top1", "int8_ms")


def default_columns(rows: Iterable[Row]) -> tuple[str, ...]:
    """:data:`DEFAULT_COLUMNS`, with the int8 top-1 and latency (instead of PyTorch's) when a run has them."""
    if any(isinstance(r, RunRow) and r.int8 for r in rows):
        return tuple(k for k in DEFAULT_COLUMNS if k != "latency_ms") + INT8_COLUMNS
    return DEFAULT_COLUMNS


def fit_columns(keys: Sequence[str], width: int, table_width: Callable[[Sequence[str]], int]) -> tuple[str, ...]:
    """``keys`` less the fewest columns of :data:`DROP_ORDER` for ``table_width(keys)`` to fit ``width``
    characters (a table wider than the terminal wraps every row over several lines)."""
    keys = list(keys)
    for key in DROP_ORDER:
        if table_width(keys) <= width:
            break
        if key in keys:
            keys.remove(key)
    return tuple(keys)


def select_columns(text: str | None) -> tuple[str, ...]:
    """Column keys from ``--columns`` text: comma-separated keys (``model,params,top1``), ``all`` for every
    column, ``None`` for :data:`DEFAULT_COLUMNS`. :class:`UserError` naming the valid keys otherwise."""
    if text is None:
        return DEFAULT_COLUMNS
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if keys == ["all"]:
        return tuple(c.key for c in COLUMNS)
    valid = [c.key for c in COLUMNS]
    unknown = [k for k in keys if k not in valid]
    if unknown or not keys:
        what = f"unknown --columns name(s) {', '.join(map(repr, unknown))}" if unknown else "--columns is empty"
        raise UserError(f"{what}; choose from: {', '.join(valid)} (comma-separated), or all")
    return tuple(dict.fromkeys(keys))  # in the order given, each once


def check_sort(sort: str | None) -> None:
    """:class:`UserError` naming the valid columns when ``sort`` is not one of them."""
    if sort is not None and sort not in SORT_KEYS:
        raise UserError(f"unknown --sort column {sort!r}; choose one of: {', '.join(SORT_KEYS)}")


def _within(row: RunRow, budget: int | None) -> bool | None:
    return None if budget is None else row.num_params <= budget


def _budget_text(row: RunRow, budget: int) -> str:
    over = row.num_params - budget
    return "yes" if over <= 0 else f"no (+{over:,})"


def sort_rows(rows: Iterable[Row], sort: str | None, budget: int | None = None) -> list[Row]:
    """Runs ordered by column ``sort``, best first for numeric columns (highest top-1, fewest params ...),
    A to Z for text; missing values, then incomplete runs, go last. ``None`` keeps the given order."""
    check_sort(sort)
    rows = list(rows)
    good = [r for r in rows if isinstance(r, RunRow)]
    bad = [r for r in rows if isinstance(r, IncompleteRun)]
    if sort is not None:
        if sort == "budget":
            key: Callable[[RunRow], Any] = lambda r: (not _within(r, budget), r.num_params)  # noqa: E731
            good.sort(key=key)
        else:
            column = next(c for c in COLUMNS if c.key == sort)
            get = column.sort_by or column.value
            present = [r for r in good if get(r) is not None]
            missing = [r for r in good if get(r) is None]
            if column.numeric or column.sort_by is not None:
                present.sort(key=get, reverse=column.better == "max")
            else:
                present.sort(key=lambda r: str(get(r)).lower())
            good = present + missing
    return good + bad


def _best_values(runs: Sequence[RunRow]) -> dict[str, float]:
    best: dict[str, float] = {}
    for column in COLUMNS:
        if column.better is None or not column.highlight:
            continue
        values = [v for v in (column.value(r) for r in runs) if v is not None and math.isfinite(v)]
        if values:
            best[column.key] = max(values) if column.better == "max" else min(values)
    return best


def _columns(budget: int | None, keys: Sequence[str] | None = None) -> list[Column]:
    """The columns named by ``keys`` (every column when ``None``) in that order, then the budget's."""
    by_key = {c.key: c for c in COLUMNS}
    chosen = list(COLUMNS) if keys is None else [by_key[k] for k in keys]
    return chosen + ([_BUDGET] if budget is not None else [])


def _cells(rows: Sequence[Row], budget: int | None, keys: Sequence[str] | None = None) -> list[list[str]]:
    """The display text of every cell, shared by the rich table and Markdown so the two always agree."""
    columns = _columns(budget, keys)
    out = []
    for row in rows:
        if isinstance(row, IncompleteRun):
            cells = ["-"] * len(columns)
            cells[:2] = [row.name, f"incomplete: {row.reason}"][:len(cells)]
        else:
            cells = [c.text(c.value(row)) if c.key != "budget" else _budget_text(row, budget) for c in columns]
        out.append(cells)
    return out


def compare_table(rows: Iterable[Row], sort: str | None = None, budget: int | None = None,
                  title: str | None = None, columns: Sequence[str] | None = None) -> Table:
    """A rich table with one row per run; the best value of each numeric column in bold green.

    ``columns`` are keys of :data:`COLUMNS` (see :func:`select_columns`); ``None`` shows every column. To fit
    a terminal, the run directory's name sits under the model, and the teacher's top-1 under the teacher,
    when both are shown (the CSV and Markdown keep them as columns of their own). Teacher and pruned runs are
    marked beside the model. Incomplete runs are listed with their reasons under the table.
    """
    keys = None if columns is None else select_columns(",".join(columns))  # the same check as --columns
    rows = sort_rows(rows, sort, budget)
    runs = [r for r in rows if isinstance(r, RunRow)]
    bad = [r for r in rows if isinstance(r, IncompleteRun)]
    best = _best_values(runs) if len(runs) > 1 else {}
    shown_columns = _columns(budget, keys)
    shown = {c.key for c in shown_columns}
    # the run's name goes inside the model's cell, the teacher's top-1 inside the teacher's, when both are shown
    joined = {inner for outer, inner in (("model", "run"), ("teacher", "teacher_top1")) if {outer, inner} <= shown}
    caption = None
    if bad:
        caption = "\n".join(["incomplete:"] + [f"  {r.path}: {r.reason}" for r in bad])
    table = Table(title=title or f"{len(runs)} run(s)" + (f", {len(bad)} incomplete" if bad else "")
                  + (f"; budget {budget:,} params" if budget is not None else "")
                  + ("; CPU ms: PyTorch eager batch-1 latency (distill export --latency)" if "latency_ms" in shown else "")
                  + ("; int8: distill quantize's top-1 and onnxruntime batch-1 ms" if shown & {"int8_top1", "int8_ms"}
                     else ""),
                  caption=caption, caption_justify="left", caption_style="red",
                  # a caption wraps at the table's width: widen the table (up to the terminal's) for whole paths
                  min_width=max(len(line) for line in caption.splitlines()) if caption else None)
    for column in shown_columns:
        if column.key in joined:
            continue
        header = column.header
        if column.key == "model" and "run" in joined:
            header = "model / run"
        if column.key == "teacher" and "teacher_top1" in joined:
            header = "teacher / top-1 %"
        table.add_column(header, justify="right" if column.numeric else "left", no_wrap=column.numeric,
                         overflow="fold", max_width=_MAX_WIDTH.get(column.key))
    for row, cells in zip(runs, _cells(runs, budget, keys)):
        text = dict(zip((c.key for c in shown_columns), cells))
        styled = []
        for column in shown_columns:
            if column.key in joined:
                continue
            if column.key == "model":
                marks = text["model"][len(row.model):]
                styled.append(Text.assemble(row.model, (marks, "magenta"),
                                            *(("\n", (row.name, "dim")) if "run" in joined else ())))
                continue
            if column.key == "teacher" and "teacher_top1" in joined:
                styled.append(Text(text["teacher"]) if row.teacher is None
                              else Text.assemble(row.teacher, "\n", (text["teacher_top1"], "dim")))
                continue
            value = column.value(row) if column.better else None
            hit = column.key in best and value is not None and value == best[column.key]
            cell = text[column.key]
            style = BEST_STYLE if hit else ("red" if column.key == "budget" and cell != "yes" else "")
            styled.append(Text(cell, style=style))
        table.add_row(*styled)
    return table


# ------------------------------------------------------------------------------------------------ outputs


def to_csv(rows: Iterable[Row], sort: str | None = None, budget: int | None = None) -> str:
    """CSV text with raw values (full-precision numbers, plain integers); incomplete runs carry their reason."""
    rows = sort_rows(rows, sort, budget)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path", "run", "model", "kind", "pruned", "complete", "num_params", "macs", "top1_last_pct",
              "top1_best_pct", "top1_ema_pct", "top1_tta_pct", "teacher", "teacher_top1_pct", "kd_loss",
              "kd_temperature", "kd_weight", "mixup", "cutmix", "mix_prob", "epochs_done", "epochs", "wall_s",
              "train_img_s", "latency_cpu_batch1_ms", "int8_top1_pct", "int8_fp32_onnx_top1_pct", "int8_batch1_ms",
              "int8_batch64_ms", "int8_batch256_ms", "int8_speedup_batch64", "within_budget", "incomplete_reason"]
    writer.writerow(header)
    for row in rows:
        if isinstance(row, IncompleteRun):
            writer.writerow([str(row.path), row.name] + [""] * (len(header) - 3) + [row.reason])
            continue
        within = _within(row, budget)
        values = [str(row.path), row.name, row.model, row.kind, row.pruned, row.complete, row.num_params,
                  row.macs, row.top1_last, row.top1_best, row.top1_ema, row.top1_tta, row.teacher,
                  row.teacher_top1, row.kd_loss, row.kd_temperature, row.kd_weight, row.mixup, row.cutmix,
                  row.mix_prob, row.epochs_done, row.epochs, row.wall_s, row.train_img_s,
                  row.latency_cpu_batch1_ms, row.int8_top1, _figure(row.int8, "top1_fp32"), row.int8_ms(1),
                  row.int8_ms(64), row.int8_ms(256), row.int8_speedup(64), "" if within is None else within, ""]
        writer.writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def to_markdown(rows: Iterable[Row], sort: str | None = None, budget: int | None = None) -> str:
    """A GitHub Markdown table with the same text as :func:`compare_table`; best values in bold."""
    rows = sort_rows(rows, sort, budget)
    columns = _columns(budget)
    runs = [r for r in rows if isinstance(r, RunRow)]
    best = _best_values(runs) if len(runs) > 1 else {}

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|"]
    for row, cells in zip(rows, _cells(rows, budget)):
        out = []
        for column, cell in zip(columns, cells):
            value = column.value(row) if isinstance(row, RunRow) and column.better else None
            hit = column.key in best and value is not None and value == best[column.key]
            out.append(f"**{esc(cell)}**" if hit else esc(cell))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: cost ``x`` (lower is better) and accuracy ``y`` (higher is
    better). A point is dominated when another has ``x' <= x`` and ``y' >= y`` with one strictly better.
    Returned in increasing ``x``, so they can be joined into the front's staircase line."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _labels(runs: Sequence[RunRow]) -> list[str]:
    """Point labels: the model, marked when pruned, and the run's name where two would read the same."""
    base = [r.model + (" (pruned)" if r.pruned else "") for r in runs]
    return [f"{b} [{r.name}]" if base.count(b) > 1 else b for b, r in zip(base, runs)]


def plot(rows: Iterable[Row], path: str | Path) -> dict[str, int]:
    """Write a figure of top-1 (last epoch) against params and against MACs, the Pareto front of each panel
    drawn as a line through highlighted points, every point labelled. Returns the points per panel."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state
    from matplotlib.ticker import EngFormatter, NullFormatter

    runs = [r for r in rows if isinstance(r, RunRow) and r.top1_last is not None]
    labels = dict(zip((id(r) for r in runs), _labels(runs)))
    top1 = ("top-1 % (last epoch)", lambda r: r.top1_last)
    panels: list[tuple[str, str, Callable[[RunRow], float | None], tuple[str, Callable[[RunRow], Any]]]] = [
        ("params", "parameters", lambda r: r.num_params, top1), ("macs", "MACs per image", lambda r: r.macs, top1)]
    if any(r.int8_ms(1) is not None for r in runs):  # distill quantize measured some: the int8 model's own panel
        panels.append(("int8_ms", "int8 ms per call at batch 1 (onnxruntime, CPU)", lambda r: r.int8_ms(1),
                       ("int8 top-1 %", lambda r: r.int8_top1)))
    fig = Figure(figsize=(6.5 * len(panels), 5.5), layout="constrained")
    axes = fig.subplots(1, len(panels))
    counts: dict[str, int] = {}
    for ax, (key, xlabel, x_of, (ylabel, y_of)) in zip(axes, panels):
        panel = [r for r in runs if x_of(r) is not None and y_of(r) is not None]
        xs = [float(x_of(r)) for r in panel]
        ys = [float(y_of(r)) for r in panel]
        counts[key] = len(panel)
        if not panel:
            ax.text(0.5, 0.5, "no runs with this figure", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(xlabel)
            continue
        front = pareto_front(list(zip(xs, ys)))
        ax.scatter(xs, ys, s=30, color="tab:blue", alpha=0.7, label="runs", zorder=2)
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red", lw=1.5, zorder=1)
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=80, facecolors="none", edgecolors="tab:red",
                   linewidths=2, label="Pareto front", zorder=3)
        for x, y, r in zip(xs, ys, panel):
            ax.annotate(labels[id(r)], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if max(xs) > 20 * min(xs):  # sizes spanning orders of magnitude read better on a log axis
            ax.set_xscale("log")
        # 1.2M rather than 1200000 or 1.2e6: long tick labels ran into each other on the MACs axis
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)  # not over a point: a near-chance run sits at the bottom right
    fig.suptitle("top-1 against size" + (" and int8 latency" if len(panels) > 2 else ""))
    path = Path(path)
    buffer = io.BytesIO()  # rendered in memory, then written atomically: a full disk leaves no partial file
    fig.savefig(buffer, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
    atomic_write_bytes(path, buffer.getbuffer())
    _logger.debug("wrote %s (%s)", path, counts)
    return counts
