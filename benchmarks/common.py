"""What the end-to-end benchmarks share: running a public command, reusing or resuming a stage's run,
reading a run's summary (through distill.rundir, the run folder's one owner) and updating RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # the real CIFAR-10 beside the checkout
if str(REPO) not in sys.path:  # runnable from a plain checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO))

from distill.rundir import LAST_CKPT, SUMMARY_FILE, is_complete, read_summary  # noqa: E402

__all__ = ["REPO", "DEFAULT_DATA", "run_command", "run_summary", "finished_summary", "run_stage", "replace_block", "publish",
           "republish", "study_parser"]


def run_command(cmd: list[str], log: Path) -> float:
    """Run one public command, its output teed to ``log``; return wall seconds. Fails loudly."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log.open("w") as out:
        out.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"stage failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return time.perf_counter() - start


def run_summary(run_dir: Path) -> dict:
    """A run's ``summary.json`` as a plain dict (for the benchmarks' JSON records)."""
    return read_summary(run_dir).to_dict()


def finished_summary(run_dir: Path) -> dict | None:
    """A finished run's summary as a plain dict; None while the run is missing, unfinished or unreadable."""
    return run_summary(run_dir) if is_complete(run_dir) else None


def run_stage(name: str, cmd: list[str], run_dir: Path, resume_cmd: list[str], log: Path) -> dict:
    """Run one stage, or reuse it when a finished run is already there (resume it when one was cut short), so
    that an interrupted benchmark continues where it stopped. Wall times come from the runs' own summaries,
    which add up the time of every session of a resumed run."""
    record = {"command": " ".join(cmd)}
    if (run_dir / SUMMARY_FILE).exists() and (summary := run_summary(run_dir))["complete"]:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: reusing the finished run {run_dir}", flush=True)
        return {**record, "reused": True, **summary}
    if (run_dir / LAST_CKPT).exists():
        cmd, record["resumed"] = resume_cmd, True
        log = log.with_name(log.stem + "-resume.log")
    print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    seconds = run_command(cmd, log)
    return {**record, "stage_seconds": seconds, **run_summary(run_dir)}


def replace_block(path: Path, block_name: str, block: str) -> None:
    """Put ``block`` between ``<!-- e2e:NAME:start -->`` and ``:end -->`` markers in ``path`` (appended if absent)."""
    start, end = f"<!-- e2e:{block_name}:start -->", f"<!-- e2e:{block_name}:end -->"
    text = path.read_text() if path.exists() else "# Results\n"
    new = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + new + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    path.write_text(text)


def publish(results: Path, json_name: str, payload: dict, block_name: str, block: str) -> None:
    """Write a benchmark's raw results as ``results/json_name`` and its table into ``results/RESULTS.md``."""
    results.mkdir(parents=True, exist_ok=True)
    (results / json_name).write_text(json.dumps(payload, indent=2) + "\n")
    replace_block(results / "RESULTS.md", block_name, block)


def republish(results: Path, json_name: str, block_name: str, table: Callable[[dict], str]) -> int:
    """``--table-only``: the table rebuilt from ``results/json_name`` into ``results/RESULTS.md``, and printed."""
    payload = json.loads((results / json_name).read_text())
    replace_block(results / "RESULTS.md", block_name, table(payload))
    print(table(payload))
    return 0


def study_parser(doc: str, scales: list[str], jobs: int, jobs_help: str) -> argparse.ArgumentParser:
    """The flags every multi-run study shares: scale, data, work and results folders, seeds, runs at a time."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(scales), default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=REPO / "docs")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=jobs, help=jobs_help)
    return parser
