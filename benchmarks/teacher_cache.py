"""Pay for the teacher once: what the teacher-output cache saves, measured through the public CLI.

Two studies (issue "Pay for the teacher once"):

- ``epochs``: the same KD run with the cache off (live teacher), cold (recording) and warm (replaying), and the
  student alone, per epoch, for two net pairs: the CPU scale (308k ``r3_111_c32-64-128`` teacher into the 78k
  ``r3_111_c16-32-64``, full CIFAR-10) and the card's nets (``resnet50`` into ``r4_3323`` on a subset). Targets: a
  warm epoch at most 1.15x the student-alone epoch and at least 1.8x faster than a live one (CPU scale);
  recording at most 5% over live.
- ``cells``: the KD ablation's 5-epoch cells (KD, DKD, DIST, KD at other temperatures and weights; 2 seeds of
  initialisation on one batch stream, ``--data-seed 0``) from the 6-epoch teacher, each run with
  ``--teacher-cache off`` and with the cache, side by side: the same top-1, and the cached cells' total wall
  time at most 0.6x the live ones'.

Runs are ``distill`` commands under ``--work`` (reused when finished); one at a time unless ``--jobs 2``
(each then at one thread, a live run beside its cached twin). The runs' summaries go to
``docs/teacher_cache_<scale>.json`` and the tables between markers in ``docs/RESULTS.md``; ``--table-only``
rebuilds them from that JSON.

    python benchmarks/teacher_cache.py --scale cpu                  # about 3 hours on 2 cores
    python benchmarks/teacher_cache.py --scale smoke --work /tmp/tc --results /tmp/tc   # seconds
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import REPO, finished_summary, publish, study_parser  # noqa: E402  (benchmarks/common.py)

sys.path.insert(0, str(REPO))
from distill.rundir import read_metrics  # noqa: E402


@dataclass(frozen=True)
class Pair:
    """One teacher -> student pair of the ``epochs`` study."""

    name: str
    teacher: str
    student: str
    teacher_epochs: int
    epochs: int
    data: tuple[str, ...] = ()  # subset flags
    teacher_data: tuple[str, ...] = ()  # the teacher's own training subset (its speed, not its quality, matters)
    batch_size: int = 256


@dataclass(frozen=True)
class Scale:
    pairs: tuple[Pair, ...]
    cells_teacher: str  # the pair whose teacher the cells distil from
    cell_epochs: int
    cells: dict[str, tuple[str, ...]]
    lr: float = 0.2
    cells_data: tuple[str, ...] = ()


CELLS = {  # the KD ablation's 5-epoch logit cells, and KD at other temperatures and weights
    "KD T4 w0.9": ("--kd-loss", "kd", "--temperature", "4", "--kd-weight", "0.9"),
    "DKD": ("--kd-loss", "dkd"),
    "DIST": ("--kd-loss", "dist"),
    "KD T1 w0.9": ("--kd-loss", "kd", "--temperature", "1", "--kd-weight", "0.9"),
    "KD T2 w0.9": ("--kd-loss", "kd", "--temperature", "2", "--kd-weight", "0.9"),
    "KD T8 w0.9": ("--kd-loss", "kd", "--temperature", "8", "--kd-weight", "0.9"),
    "KD T4 w0.5": ("--kd-loss", "kd", "--temperature", "4", "--kd-weight", "0.5"),
    "KD T4 w0.7": ("--kd-loss", "kd", "--temperature", "4", "--kd-weight", "0.7"),
}

SCALES = {
    "cpu": Scale(
        pairs=(Pair("cpu", "r3_111_c32-64-128", "r3_111_c16-32-64", teacher_epochs=6, epochs=2),
               Pair("card", "resnet50", "r4_3323", teacher_epochs=1, epochs=2,
                    data=("--train-subset", "2560", "--test-subset", "1000"),
                    teacher_data=("--train-subset", "1000", "--test-subset", "500"), batch_size=128)),
        cells_teacher="cpu", cell_epochs=5, cells=CELLS),
    "smoke": Scale(
        pairs=(Pair("cpu", "r2_11_c8-16", "r1_1_c4", teacher_epochs=1, epochs=2,
                    data=("--train-subset", "300", "--test-subset", "100"), batch_size=50),),
        cells_teacher="cpu", cell_epochs=1, cells=dict(list(CELLS.items())[:2]), lr=0.05,
        cells_data=("--train-subset", "300", "--test-subset", "100")),
}


@dataclass
class Job:
    name: str
    cmd: list[str]
    study: str  # "teacher", "epochs" or "cells"
    pair: str
    variant: str  # alone, live, cold, warm; or cell name
    seed: int = 0
    cache: bool = True


def plan(scale: Scale, data: str, work: Path, seeds: tuple[int, ...]) -> list[Job]:
    """Every run, in the order it must run: teachers, then per pair alone / live / cold / warm, then the cells."""
    py = [sys.executable, "-m", "distill"]
    jobs = []
    for p in scale.pairs:
        common = ["--data", data, "--batch-size", str(p.batch_size), "--device", "cpu", "--seed", "0"]
        jobs.append(Job(f"teacher-{p.name}", [*py, "teacher", "--teacher", p.teacher, "--epochs", str(p.teacher_epochs),
                                               "--schedule", "onecycle", "--lr", str(scale.lr), "--label-smoothing",
                                               "0.0", *common, *p.teacher_data], "teacher", p.name, "teacher"))
    for p in scale.pairs:
        common = ["--data", data, "--batch-size", str(p.batch_size), "--device", "cpu", "--seed", "0",
                  "--lr", str(scale.lr), "--epochs", str(p.epochs), *p.data]
        kd = ["--teacher", p.teacher, "--teacher-ckpt", str(work / f"teacher-{p.name}"), "--kd-loss", "kd"]
        run = [*py, "run", "--student", p.student, *common]
        jobs += [Job(f"{p.name}-alone", run, "epochs", p.name, "alone"),
                 Job(f"{p.name}-live", [*run, *kd, "--teacher-cache", "off"], "epochs", p.name, "live", cache=False),
                 Job(f"{p.name}-cold", [*run, *kd], "epochs", p.name, "cold"),
                 Job(f"{p.name}-warm", [*run, *kd], "epochs", p.name, "warm")]
    p = next(p for p in scale.pairs if p.name == scale.cells_teacher)
    # Seeds of initialisation on one batch stream (--data-seed 0): what --data-seed is for, and what lets every
    # cell of both seeds replay one recording. The live cells have the very same settings.
    common = ["--data", data, "--batch-size", str(p.batch_size), "--device", "cpu", "--lr", str(scale.lr),
              "--epochs", str(scale.cell_epochs), "--schedule", "onecycle", *scale.cells_data,
              "--teacher", p.teacher, "--teacher-ckpt", str(work / f"teacher-{p.name}"), "--data-seed", "0"]
    for seed in seeds:
        for cell, flags in scale.cells.items():
            slug = cell.replace(" ", "-").replace(".", "")
            for cache in (False, True):
                cmd = [*py, "run", "--student", p.student, *common, *flags, "--seed", str(seed),
                       "--teacher-cache", "on" if cache else "off"]
                jobs.append(Job(f"cell-{slug}-s{seed}-{'cache' if cache else 'live'}", cmd, "cells", p.name, cell,
                                seed, cache))
    return jobs


def _say(text: str) -> None:
    sys.stdout.write(f"[{datetime.datetime.now():%H:%M:%S}] {text}\n")
    sys.stdout.flush()


def run_job(job: Job, work: Path, threads: int, cache_dir: Path) -> dict:
    """Run one job (or reuse its finished run); its summary with its per-epoch records."""
    run_dir = work / job.name
    command_s, ran = None, False
    if (done := finished_summary(run_dir)) is None:
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "DISTILL_CACHE": str(cache_dir), "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [*job.cmd, "--out", str(run_dir)]
        _say(f"start {job.name}: {shlex.join(cmd)}")
        log = work / f"{job.name}.log"
        with log.open("w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0 or (done := finished_summary(run_dir)) is None:
            tail = "\n".join(log.read_text().splitlines()[-10:])
            raise SystemExit(f"{job.name} failed ({proc.returncode}); log {log}:\n{tail}")
        command_s, ran = time.perf_counter() - start, True
        (work / f"{job.name}.command_s").write_text(f"{command_s}\n")  # kept for a later --table-only or reuse
        _say(f"done  {job.name}: top-1 {done['top1_last']:.2f}% in {command_s:.0f} s")
    elif (work / f"{job.name}.command_s").exists():
        command_s = float((work / f"{job.name}.command_s").read_text())
    records = read_metrics(run_dir)
    keys = ("epoch", "seconds", "train_seconds", "train_loss", "test_top1", "test_loss", "teacher_outputs")
    return {**done, "command_s": command_s, "ran": ran, "records": [{k: r.get(k) for k in keys} for r in records]}


def execute(jobs: list[Job], work: Path, parallel: int) -> dict[str, dict]:
    """Teachers and the epoch study one at a time (timed alone); the cells ``parallel`` at a time, each live run
    beside its cached twin. The cells have a cache of their own, so the first cached cell of each seed's batch
    stream pays for recording it, as it would without the epoch study's runs."""
    results = {}
    for job in [j for j in jobs if j.study != "cells"]:
        results[job.name] = run_job(job, work, os.cpu_count() or 2, work / "cache")
    cells = [j for j in jobs if j.study == "cells"]
    threads = max(1, (os.cpu_count() or 2) // parallel)
    with ThreadPoolExecutor(parallel) as pool:
        for job, summary in zip(cells, pool.map(lambda j: run_job(j, work, threads, work / "cache-cells"), cells)):
            results[job.name] = summary
    return results


def _epoch_s(summary: dict, key: str = "seconds") -> float:
    """Median seconds per epoch (training plus evaluation) of a run."""
    return statistics.median(r[key] for r in summary["records"])


def epochs_table(jobs: list[Job], results: dict[str, dict]) -> list[str]:
    lines = ["| pair | student alone (s/epoch) | KD live | KD recording (cold) | KD replaying (warm) | warm / alone "
             "| live / warm | cold / live | live / warm, training only | top-1 live / cold / warm (%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for pair in dict.fromkeys(j.pair for j in jobs if j.study == "epochs"):
        got = {v: results.get(f"{pair}-{v}") for v in ("alone", "live", "cold", "warm")}
        if not all(got.values()):
            continue
        s = {v: _epoch_s(r) for v, r in got.items()}
        train = {v: _epoch_s(r, "train_seconds") for v, r in got.items()}
        top1 = " / ".join(f"{got[v]['top1_last']:.2f}" for v in ("live", "cold", "warm"))
        modes = {v: [r["teacher_outputs"] for r in got[v]["records"]] for v in ("cold", "warm")}
        note = "" if set(modes["warm"]) == {"replayed"} and set(modes["cold"]) == {"recorded"} else f" ({modes})"
        lines.append(f"| {pair}: {got['live']['teacher']} -> {got['live']['model']}, {got['live']['train_images']:,} "
                     f"images | {s['alone']:.1f} | {s['live']:.1f} | {s['cold']:.1f} | {s['warm']:.1f} | "
                     f"{s['warm'] / s['alone']:.2f}x | {s['live'] / s['warm']:.2f}x | {s['cold'] / s['live']:.3f}x | "
                     f"{train['live'] / train['warm']:.2f}x | {top1}{note} |")
    return lines


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def cells_table(jobs: list[Job], results: dict[str, dict]) -> list[str]:
    lines = ["| cell | seed | top-1 live (%) | top-1 cached (%) | command live (s) | command cached (s) | training "
             "live (s) | training cached (s) | teacher outputs |", "|---|---|---|---|---|---|---|---|---|"]
    totals = {"live": 0.0, "cached": 0.0, "live_train": 0.0, "cached_train": 0.0}
    pairs = [(job, results.get(job.name), results.get(job.name.replace("-live", "-cache")))
             for job in jobs if job.study == "cells" and not job.cache]
    pairs = [(job, live, cached) for job, live, cached in pairs if live and cached]  # both twins finished
    timed = all(live["command_s"] and cached["command_s"] for _, live, cached in pairs)  # else: training time alone
    same = True
    for job, live, cached in pairs:
        totals["live"] += live["command_s"] if timed else live["wall_s"]
        totals["cached"] += cached["command_s"] if timed else cached["wall_s"]
        totals["live_train"] += live["wall_s"]
        totals["cached_train"] += cached["wall_s"]
        same &= [(r["train_loss"], r["test_top1"], r["test_loss"]) for r in live["records"]] == [
            (r["train_loss"], r["test_top1"], r["test_loss"]) for r in cached["records"]]
        modes = [r["teacher_outputs"] for r in cached["records"]]
        lines.append(f"| {job.variant} | {job.seed} | {live['top1_last']:.2f} | {cached['top1_last']:.2f} | "
                     f"{_seconds(live['command_s'])} | {_seconds(cached['command_s'])} | {live['wall_s']:.0f} | "
                     f"{cached['wall_s']:.0f} | {', '.join(f'{modes.count(m)} {m}' for m in dict.fromkeys(modes))} |")
    if totals["live"]:
        what = "the commands" if timed else "the runs' training (no command times recorded)"
        lines += ["", f"Total wall time of {what}: live {totals['live']:.0f} s, cached {totals['cached']:.0f} s: "
                      f"**{totals['cached'] / totals['live']:.2f}x** (target at most 0.6x); of their training alone "
                      f"{totals['cached_train'] / totals['live_train']:.2f}x. Train loss, test top-1 and test loss of "
                      f"every epoch: {'identical in every cell' if same else 'DIFFERENT in some cell'}."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, list(SCALES), 1, "cell runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--study", choices=("all", "epochs", "cells"), default="all")
    parser.add_argument("--table-only", action="store_true", help="train nothing: the tables from the recorded JSON")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    work = args.work or REPO / "runs" / f"teacher-cache-{args.scale}"
    work.mkdir(parents=True, exist_ok=True)
    jobs = plan(scale, args.data, work, tuple(int(s) for s in args.seeds.split(",")))
    if args.study != "all":
        jobs = [j for j in jobs if j.study in ("teacher", args.study)]
    json_path = args.results / f"teacher_cache_{args.scale}.json"
    started = time.perf_counter()
    if args.table_only:
        recorded = json.loads(json_path.read_text())
        results, meta = recorded["runs"], recorded["meta"]
    else:
        previous = json.loads(json_path.read_text())["runs"] if json_path.exists() else {}
        results = {**previous, **execute(jobs, work, args.jobs)}
        commit = ", ".join(sorted({r["git_commit"] for r in results.values() if r.get("git_commit")}))  # the runs' own
        device = next((r["device"] for r in results.values() if "device" in r), "cpu")
        meta = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "commit": commit,
                "device": device, "jobs": args.jobs,
                "command": f"python benchmarks/teacher_cache.py {shlex.join(argv if argv is not None else sys.argv[1:])}"}
    header = [f"### Teacher-output cache, {args.scale} scale ({meta['date']}, commit {meta['commit']}, {meta['device']}, "
              f"{meta['jobs']} cell run(s) at a time)", "", f"Command: `{meta['command']}`; raw summaries in "
              f"`docs/teacher_cache_{args.scale}.json`. Seconds per epoch are the median over the runs' epochs "
              "(training plus evaluation), each run alone on the machine.", ""]
    block = "\n".join(header + epochs_table(jobs, results) + [""] + cells_table(jobs, results))
    if not args.table_only:
        ran = sum(1 for j in jobs if results[j.name].get("ran"))
        block += (f"\n\nThis invocation ran {ran} of the {len(jobs)} runs (the others were finished runs it reused) "
                  f"in {time.perf_counter() - started:.0f} s.")
    publish(args.results, json_path.name, {"meta": meta, "runs": results}, f"teacher-cache:{args.scale}", block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
