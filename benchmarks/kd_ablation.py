"""What makes KD show its gain at CPU scale: an ablation on the full CIFAR-10 (JPEG q75), through the public CLI.

Factors (issue "Show that distillation works"):

- the teacher's label smoothing (0 vs 0.1; Muller, Kornblith & Hinton 2019 find smoothed teachers distil worse),
- the student's schedule (one-cycle vs cosine with a 1-epoch linear warm-up),
- the student's epochs (5 vs 10),

each KD cell against the no-teacher reference with the same schedule and epochs, over two or more seeds.
Every run is a `distill teacher` or `distill run` directory under ``--work``; a finished run is reused and a
cut-short one resumed, so an interrupted ablation continues where it stopped. Runs go ``--jobs`` at a time,
each with ``OMP_NUM_THREADS = 2 / jobs`` (two trainings sharing 2 cores with more threads slow each other
5-9x). The table (mean and spread over seeds, gain over the reference) goes between markers in
``docs/RESULTS.md`` and the raw summaries to ``docs/kd_ablation_<scale>.json``.

    python benchmarks/kd_ablation.py --scale cpu                 # hours on 2 cores (the 15-epoch teacher: 79 min)
    python benchmarks/kd_ablation.py --scale smoke --work /tmp/a --results /tmp/a   # a few hundred images
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
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, finished_summary, publish, study_parser  # noqa: E402  (benchmarks/common.py)


@dataclass(frozen=True)
class MixStudy:
    images: int  # training images (--train-subset)
    epochs: tuple[int, ...]
    eval_every: int = 1  # epochs between test evaluations (the last epoch always)

    @property
    def tag(self) -> str:
        return f", {self.images // 1000 or self.images}{'k' * (self.images >= 1000)} images"


@dataclass(frozen=True)
class Scale:
    teacher: str
    student: str
    teacher_epochs: int
    batch_size: int
    lr: float  # peak, for batch_size images per step
    epochs: tuple[int, ...]  # student epochs compared
    subset: tuple[str, ...] = ()  # extra data flags (the smoke scale's subsets)
    # A longer-trained teacher (label smoothing 0) for KD and KD + mixing at the longest student schedule: at 10
    # epochs the student alone passes the 6-epoch teacher, so only a stronger teacher can say whether mixing pays.
    long_teacher_epochs: int | None = None
    # Where mixing starts to pay: KD and KD + mixing from the 6-epoch teacher on class-balanced subsets of the
    # training images, each at several epochs (many passes over the same images, for the same compute as a few
    # full-data epochs), each against the student alone on the same subset.
    mix_studies: tuple[MixStudy, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One row of the table: a student recipe run once per seed, and the rows it is compared with."""

    name: str
    schedule: str
    epochs: int
    teacher: str | None = None  # teacher run under --work; None = the student alone
    flags: tuple[str, ...] = ()  # distillation and mixing flags
    data: tuple[str, ...] = ()  # extra data flags (the subset study's)
    ref: str | None = None  # the no-teacher cell it gains over
    kd: str | None = None  # the plain-KD cell (same teacher, schedule, epochs, data) a variant is compared with


SCALES = {
    # The recipe of the plain-PyTorch comparison: 308k teacher 6 epochs, 78k student, one-cycle SGD
    # lr 0.2, batch 256, KD T=4 with weight 0.9.
    "cpu": Scale(teacher="r3_111_c32-64-128", student="r3_111_c16-32-64", teacher_epochs=6, batch_size=256,
                 lr=0.2, epochs=(5, 10), long_teacher_epochs=15,
                 mix_studies=(MixStudy(5000, (15, 30, 60), eval_every=5), MixStudy(1000, (300,), eval_every=50))),
    "smoke": Scale(teacher="r2_11_c8-16", student="r2_11_c8-16", teacher_epochs=1, batch_size=50, lr=0.05,
                   epochs=(1,), subset=("--train-subset", "300", "--test-subset", "100"), long_teacher_epochs=2,
                   mix_studies=(MixStudy(200, (1, 2)),)),
}


@dataclass
class Job:
    name: str  # run directory name under --work
    cmd: list[str]
    needs: tuple[str, ...] = ()
    cell: Cell | None = None  # the table row a student run belongs to; None for teachers
    seed: int = 0
    summary: dict = field(default_factory=dict)


def plan(scale: Scale, data: str, work: Path, seeds: tuple[int, ...], device: str,
         only: tuple[str, ...] = ()) -> list[Job]:
    """Every run, most informative first (or the runs named in ``only``, in that order, after their teachers)."""
    py = [sys.executable, "-m", "distill"]
    common = ["--data", data, *scale.subset, "--batch-size", str(scale.batch_size), "--lr", str(scale.lr),
              "--device", device]
    teachers = [(f"teacher-ls{ls}", ls, scale.teacher_epochs) for ls in ("0.0", "0.1")]
    long_teacher = None
    if scale.long_teacher_epochs:
        long_teacher = f"teacher-ls0.0-{scale.long_teacher_epochs}ep"
        teachers.append((long_teacher, "0.0", scale.long_teacher_epochs))
    jobs = [Job(name, [*py, "teacher", "--teacher", scale.teacher, "--epochs", str(epochs), "--schedule", "onecycle",
                       "--label-smoothing", ls, *common, "--seed", "0"])
            for name, ls, epochs in teachers]
    schedules = {"onecycle": ["--schedule", "onecycle"],
                 "cosine": ["--schedule", "cosine", "--warmup-epochs", "1"]}
    kd = ["--kd-loss", "kd", "--temperature", "4", "--kd-weight", "0.9"]
    mix = ["--mixup", "0.2", "--cutmix", "1.0", "--mix-prob", "0.5"]
    cells: list[Cell] = []
    first = scale.epochs[0]

    def pair(sched: str, epochs: int, teacher: str, label: str, variants: dict[str, list[str]],
             data: tuple[str, ...] = (), tag: str = "") -> list[Cell]:
        """The reference, KD and KD's variants at one schedule: ``{prefix: flags}`` without "ref" and "KD"."""
        ref = Cell(f"ref {sched} {epochs}ep{tag}", sched, epochs, data=data)
        kd_cell = Cell(f"KD {sched} {epochs}ep{tag}, {label}", sched, epochs, teacher, tuple(kd), data, ref.name)
        return [ref, kd_cell, *(Cell(f"{prefix} {sched} {epochs}ep{tag}, {label}", sched, epochs, teacher,
                                     tuple(flags), data, ref.name, kd_cell.name)
                                for prefix, flags in variants.items())]

    for sched in schedules:
        cells += pair(sched, first, "teacher-ls0.0", "teacher LS 0", {})
        cells.append(Cell(f"KD {sched} {first}ep, teacher LS 0.1", sched, first, "teacher-ls0.1", tuple(kd),
                          ref=f"ref {sched} {first}ep", kd=f"KD {sched} {first}ep, teacher LS 0"))
    # The other logit losses at their published defaults (DKD's warm-up scaled to the run), and mixing.
    base = {c.name: c for c in cells}[f"KD onecycle {first}ep, teacher LS 0"]
    for prefix, flags in {"DKD": ["--kd-loss", "dkd"], "DIST": ["--kd-loss", "dist"],
                          # beyond logits: KD plus attention transfer (Zagoruyko & Komodakis) at its default weight
                          "KD+AT": ["--kd-loss", "kd+at", "--temperature", "4", "--kd-weight", "0.9"]}.items():
        cells.append(Cell(f"{prefix} onecycle {first}ep, teacher LS 0", "onecycle", first, "teacher-ls0.0",
                          tuple(flags), ref=base.ref, kd=base.name))
    for epochs in scale.epochs[1:]:
        cells += pair("onecycle", epochs, "teacher-ls0.0", "teacher LS 0", {})
    cells += [Cell(f"KD+mix onecycle {epochs}ep, teacher LS 0", "onecycle", epochs, "teacher-ls0.0",
                   tuple(kd + mix), ref=f"ref onecycle {epochs}ep", kd=f"KD onecycle {epochs}ep, teacher LS 0")
              for epochs in scale.epochs]
    if long_teacher:
        last, label = scale.epochs[-1], f"teacher {scale.long_teacher_epochs}ep"
        cells += pair("onecycle", last, long_teacher, label, {"KD+mix": kd + mix})[1:]  # its reference is above
    # The 6-epoch teacher: trained on all 50,000 images it stays far above any student that sees a subset, and
    # it costs 6 teacher epochs where the long one costs 15.
    for study in scale.mix_studies:
        data = ("--train-subset", str(study.images), "--eval-every", str(study.eval_every))
        for epochs in study.epochs:
            cells += pair("onecycle", epochs, "teacher-ls0.0", "teacher LS 0", {"KD+mix": kd + mix}, data, study.tag)
    for cell in cells:
        for seed in seeds:
            name = cell.name.replace(",", "").replace(" ", "-").replace(".", "").replace("+", "") + f"-s{seed}"
            distil = [] if cell.teacher is None else ["--teacher", scale.teacher, "--teacher-ckpt",
                                                      str(work / cell.teacher), *cell.flags]
            cmd = [*py, "run", "--student", scale.student, "--epochs", str(cell.epochs), *schedules[cell.schedule],
                   *distil, *common, *cell.data, "--seed", str(seed)]
            jobs.append(Job(name, cmd, needs=() if cell.teacher is None else (cell.teacher,), cell=cell, seed=seed))
    # Seed-major: every factor's effect at one seed comes first, then the second seed, then the longer runs,
    # so a benchmark cut short by the clock still answers the main question.
    order = {id(j): i for i, j in enumerate(jobs)}
    if only:
        known = {j.name: j for j in jobs}
        if unknown := [n for n in only if n not in known]:
            raise SystemExit(f"error: --only names unknown runs {unknown}; runs are: {', '.join(known)}")
        picked = [known[n] for n in only]
        needed = {n for j in picked for n in j.needs}  # their teachers (reused when done), then in that order
        return [j for j in jobs if j.cell is None and j.name in needed] + picked
    return sorted(jobs, key=lambda j: (j.cell is not None, j.cell is not None and j.cell.epochs != first
                                       or j.cell is not None and bool(j.cell.data), j.seed, order[id(j)]))


def _say(text: str) -> None:
    # One write per line: print() from two threads can interleave the text and its newline.
    sys.stdout.write(f"[{datetime.datetime.now():%H:%M:%S}] {text}\n")
    sys.stdout.flush()


def run_job(job: Job, work: Path, threads: int) -> dict:
    """Run (or reuse, or resume) one job; return its summary. Fails loudly with the log's tail."""
    run_dir = work / job.name
    if (done := finished_summary(run_dir)) is not None:
        return {**done, "reused": True}
    if (run_dir / "last.pt").exists():
        # `distill run --resume` continues teacher runs too: the kind is in the run's saved config.
        cmd, log = [sys.executable, "-m", "distill", "run", "--resume", str(run_dir)], work / f"{job.name}-resume.log"
    else:
        cmd, log = [*job.cmd, "--out", str(run_dir)], work / f"{job.name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    _say(f"start {job.name}: {shlex.join(cmd)}")
    with log.open("w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or (summary := finished_summary(run_dir)) is None:
        tail = "\n".join(log.read_text().splitlines()[-10:])
        raise RuntimeError(f"{job.name} failed ({proc.returncode}); log {log}:\n{tail}")
    _say(f"done  {job.name}: top-1 {summary['top1_last']:.2f}% in {summary['wall_s']:.0f} s")
    return summary


def execute(jobs: list[Job], work: Path, parallel: int, threads: int | None = None) -> None:
    """Run the jobs ``parallel`` at a time, each once its teachers are done, in the planned order."""
    threads = threads or max(1, (os.cpu_count() or 2) // parallel)
    pending, done, running = list(jobs), set(), {}
    with ThreadPoolExecutor(parallel) as pool:
        while pending or running:
            for job in [j for j in pending if set(j.needs) <= done][: parallel - len(running)]:
                pending.remove(job)
                running[pool.submit(run_job, job, work, threads)] = job
            if not running:
                raise RuntimeError(f"unrunnable jobs: {[j.name for j in pending]}")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                job.summary = _result(fut, job)
                if "failed" not in job.summary:
                    done.add(job.name)
                    continue
                # Its students cannot run: say so once each instead of starting them against a missing teacher.
                for dep in [j for j in pending if job.name in j.needs]:
                    pending.remove(dep)
                    dep.summary = {"failed": f"skipped: its teacher {job.name} failed"}
                    print(f"warning: {dep.name} skipped: its teacher {job.name} failed", file=sys.stderr, flush=True)


def _result(fut: Future, job: Job) -> dict:
    try:
        return fut.result()
    except RuntimeError as err:  # one failed run must not lose the others' hours: record and go on
        print(f"warning: {err}", file=sys.stderr, flush=True)
        return {"failed": str(err).splitlines()[0]}


def _recorded(path: Path) -> dict:
    """The run summaries a previous call wrote (``kd_ablation_<scale>.json``); empty when absent or unreadable."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return runs if isinstance(runs, dict) else {}


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def table(jobs: list[Job], scale: Scale) -> list[str]:
    """One row per cell: top-1 per seed, mean ± half-range, the gain over its reference per seed, and a KD
    variant's difference to plain KD (same teacher, schedule, epochs and data)."""
    by_cell: dict[str, list[Job]] = {}
    for job in jobs:
        if job.cell and "top1_last" in job.summary:
            by_cell.setdefault(job.cell.name, []).append(job)
    lines = ["| cell | top-1 per seed (%) | mean ± half-range | gain over reference (points, per seed) | mean gain "
             "| vs KD (points, mean) |", "|---|---|---|---|---|---|"]

    def against(runs: list[Job], other: str | None) -> list[float]:
        tops = {r.seed: r.summary["top1_last"] for r in by_cell.get(other or "", [])}
        return [r.summary["top1_last"] - tops[r.seed] for r in runs if r.seed in tops]

    for name, runs in by_cell.items():
        top1 = [r.summary["top1_last"] for r in runs]
        gains, vs_kd = against(runs, runs[0].cell.ref), against(runs, runs[0].cell.kd)
        lines.append(f"| {name} | {' / '.join(f'{v:.2f}' for v in top1)} | {_stats(top1)} | "
                     f"{' / '.join(f'{g:+.2f}' for g in gains) or '-'} | "
                     f"{(f'{statistics.mean(gains):+.2f}' if gains else '-')} | "
                     f"{(f'{statistics.mean(vs_kd):+.2f} ({len(vs_kd)} seed' + 's' * (len(vs_kd) > 1) + ')' if vs_kd else '-')} |")
    for t in (j for j in jobs if j.cell is None):
        if "top1_last" in t.summary:
            lines.append(f"| teacher {scale.teacher}, {t.name} | {t.summary['top1_last']:.2f} | | | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, list(SCALES), 2, "runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per run (default: cores / --jobs); 1 when other jobs share the machine")
    parser.add_argument("--only", default="",
                        help="comma-separated run names to run, in this order (the table still shows every finished run)")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: the table from the runs already finished under --work (runs not there "
                             "are taken from the results' kd_ablation_<scale>.json, as recorded when they finished)")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    work = args.work or REPO / "runs" / f"kd-ablation-{args.scale}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = plan(scale, args.data, work, seeds, args.device)
    if args.only:
        only = tuple(n.strip() for n in args.only.split(",") if n.strip())
        execute(plan(scale, args.data, work, seeds, args.device, only), work, args.jobs, args.threads)
    recorded = 0
    if args.table_only or args.only:
        previous = _recorded(args.results / f"kd_ablation_{args.scale}.json")
        for job in jobs:
            job.summary = finished_summary(work / job.name) or {}
            if not job.summary and "top1_last" in previous.get(job.name, {}):
                job.summary, recorded = {**previous[job.name], "recorded": True}, recorded + 1
    else:
        execute(jobs, work, args.jobs, args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    device = next((j.summary["device"] for j in jobs if "device" in j.summary), args.device)
    header = [f"### KD ablation, {args.scale} scale ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
              f"UTC, commit {commit.strip()}, {device}, {args.jobs} runs at a time)", "",
              f"Command: `python benchmarks/kd_ablation.py {shlex.join(argv if argv is not None else sys.argv[1:])}`"
              + (" (the table of the runs finished under the work folder; each run's command is in "
                 f"`kd_ablation_{args.scale}.json`). " if args.table_only or args.only else ". ") +
              (f"{recorded} runs not under the work folder are as recorded in that file when they finished. "
               if recorded else "") +
              f"Teacher {scale.teacher} ({scale.teacher_epochs} epochs, one-cycle), student {scale.student}, batch "
              f"{scale.batch_size}, lr {scale.lr}, KD T=4 weight 0.9, top-1 (%) at the last epoch on the test set."
              + (f" Cells marked `teacher {scale.long_teacher_epochs}ep` distil from the same teacher trained "
                 f"{scale.long_teacher_epochs} epochs (label smoothing 0)." if scale.long_teacher_epochs else ""),
              ""]
    total = "" if args.table_only else f"\n\nTotal {time.perf_counter() - started:.0f} s.\n"
    block = "\n".join(header + table(jobs, scale)) + total
    runs = {j.name: {"cell": j.cell and j.cell.name, "seed": j.seed, "cmd": shlex.join(j.cmd), **j.summary} for j in jobs}
    publish(args.results, f"kd_ablation_{args.scale}.json", runs, f"kd-ablation:{args.scale}", block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
