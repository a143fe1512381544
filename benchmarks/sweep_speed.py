"""Wall time of one ``distill sweep`` of three students against three separate ``distill run``s (issue 14, point 3).

    OMP_NUM_THREADS=2 python benchmarks/sweep_speed.py                      # CIFAR-10 subset, CPU, ~5 min
    OMP_NUM_THREADS=2 python benchmarks/sweep_speed.py --repeats 2 --work /tmp/sweep_speed --json out.json

Both variants run the same public commands with the same settings (``--train-subset 5000 --test-subset 1000
--epochs 1`` by default, EMA and flip-TTA evaluation as usual), against one teacher trained first (untimed,
reused when present). The sweep saves the teacher's forward pass for all but one student per batch, and the
per-process costs (start-up, data loading, teacher evaluation) for all but one. Each repeat runs both
variants, alternating which goes first, so a load change on a shared machine hits both; the load average
is printed beside every timing. The separate runs and the sweep must also give the same test top-1 per
student (same seed, same batches); the row says whether they did. The teacher-output cache is off by default
here (``--teacher-cache on`` to include it): with it, whichever variant runs first would record the teacher's
outputs and the other replay them.

Prints one markdown row per repeat: command, date, commit, device, seconds (separate / sweep), ratio.

``--accuracy`` runs instead the accuracy benchmark of issue 14, point 4 (about an hour of quiet CPU with the
defaults below; not run by the timing benchmark): one student distilled with plain KD and with a feature
method (``--feature-method``, default ``kd+at``), ``--seeds`` seeds each, on the whole training set unless
``--train-subset`` is given, and prints one markdown row per method with the mean and spread (max - min) of
the final test top-1 over the seeds, ready for docs/RESULTS.md::

    OMP_NUM_THREADS=2 python benchmarks/sweep_speed.py --accuracy --epochs 15 --train-subset 0 --test-subset 0 \
        --teacher r3_111_c32-64-128 --teacher-epochs 30 --students r3_111_c16-32-64 [--data cifar100]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from distill.rundir import read_summary  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_STUDENTS = "r3_111_c16-32-64,r3_111_c8-16-32,r2_11_c16-32"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _timed(cmd: list[str], log: Path) -> float:
    """Run one command (output to ``log``); its wall seconds. Fails loudly with the log's tail."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    with log.open("w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return seconds


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="data for every run (default: the shared CIFAR-10)")
    parser.add_argument("--teacher", default="r3_111_c32-64-128", help="teacher spec or timm name")
    parser.add_argument("--teacher-epochs", type=int, default=2, help="epochs of the (untimed) teacher run")
    parser.add_argument("--students", default=DEFAULT_STUDENTS, help="comma-separated student specs")
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--kd-loss", default="kd")
    parser.add_argument("--repeats", type=int, default=2, help="each variant runs this many times, alternating")
    parser.add_argument("--work", default="/tmp/sweep_speed", help="folder for the runs (removed runs are redone)")
    parser.add_argument("--json", default=None, help="also write the measurements here")
    parser.add_argument("--accuracy", action="store_true",
                        help="instead: KD vs --feature-method accuracy over --seeds (issue 14, point 4)")
    parser.add_argument("--feature-method", default="kd+at", help="with --accuracy: the feature method to compare")
    parser.add_argument("--seeds", default="0,1", help="with --accuracy: comma-separated seeds")
    parser.add_argument("--teacher-cache", choices=("off", "on"), default="off",
                        help="off (default): every variant runs its teacher live, so the sweep's shared forward pass "
                             "is what is measured; on: the first variant records the teacher's outputs and the "
                             "others replay them (benchmarks/teacher_cache.py measures the cache itself)")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DISTILL_CACHE", str(work / "cache"))
    os.environ.setdefault("DISTILL_TEACHERS", str(work / "teachers"))
    distill = [sys.executable, "-m", "distill"]
    subsets = [*(["--train-subset", str(args.train_subset)] if args.train_subset else []),
               *(["--test-subset", str(args.test_subset)] if args.test_subset else [])]
    data = ["--data", args.data, *subsets, "--device", "cpu", "--seed", "0"]
    teacher_dir = work / "teacher"
    if not (teacher_dir / "summary.json").exists() or not read_summary(teacher_dir).complete:
        print(f"training the teacher {args.teacher} (untimed; also decodes and caches the data)", flush=True)
        _timed([*distill, "teacher", "--teacher", args.teacher, *data, "--epochs", str(args.teacher_epochs),
                "--batch-size", str(args.batch_size), "--out", str(teacher_dir)], work / "teacher.log")
    students = [s.strip() for s in args.students.split(",") if s.strip()]
    if args.accuracy:
        return _accuracy(args, distill, data, teacher_dir, students[0], work)
    shared = [*data, "--teacher", args.teacher, "--teacher-ckpt", str(teacher_dir), "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--kd-loss", args.kd_loss, "--teacher-cache", args.teacher_cache]
    sweep_cmd = [*distill, "sweep", *shared, "--students", ",".join(students)]
    run_cmd = [*distill, "run", *shared]

    def separate(rep: Path) -> float:
        return sum(_timed([*run_cmd, "--student", s, "--out", str(rep / "runs" / s)], rep / f"run-{s}.log")
                   for s in students)

    def swept(rep: Path) -> float:
        return _timed([*sweep_cmd, "--out", str(rep / "sweep")], rep / "sweep.log")

    results = []
    for r in range(args.repeats):
        rep = work / f"repeat{r}"
        if rep.exists():
            subprocess.run(["rm", "-rf", str(rep)], check=True)
        rep.mkdir(parents=True)
        order = [("separate", separate), ("sweep", swept)]
        if r % 2:
            order.reverse()
        seconds, loads = {}, {}
        for name, fn in order:
            before = _load()
            seconds[name] = fn(rep)
            loads[name] = f"{before} -> {_load()}"
            print(f"repeat {r + 1}: {name} {seconds[name]:.1f} s (load average {loads[name]})", flush=True)
        same = all(read_summary(rep / "runs" / s).top1_last == read_summary(rep / "sweep" / s).top1_last
                   for s in students)
        device = read_summary(rep / "sweep" / students[0]).device
        results.append({"repeat": r + 1, "order": [n for n, _ in order], "seconds": seconds, "load": loads,
                        "ratio": seconds["sweep"] / seconds["separate"], "same_top1": same, "device": device})

    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python benchmarks/sweep_speed.py "
               + shlex.join(argv if argv is not None else sys.argv[1:]))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = _git_commit()
    print()
    print(f"{len(students)} students ({', '.join(students)}), teacher {args.teacher}, {args.epochs} epoch(s) of "
          f"{args.train_subset} images, test {args.test_subset}, batch {args.batch_size}, --kd-loss {args.kd_loss}")
    print("| command | date | commit | device | seconds: 3 separate runs / 1 sweep | ratio | same top-1 | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        s = res["seconds"]
        print(f"| `{command}` (repeat {res['repeat']}, {' first, '.join(res['order'])} second) | {date} | {commit} | "
              f"{res['device']} | {s['separate']:.1f} / {s['sweep']:.1f} | {res['ratio']:.2f} | "
              f"{'yes' if res['same_top1'] else 'NO'} | {res['load']['separate']} / {res['load']['sweep']} |")
    ratios = [res["ratio"] for res in results]
    print(f"\nratio sweep / separate: median {statistics.median(ratios):.2f} over {len(ratios)} repeat(s) "
          f"(target: at most 0.6)")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "date": date, "commit": commit,
                                               "results": results}, indent=2) + "\n")
    return 0


def _accuracy(args: argparse.Namespace, distill: list[str], data: list[str], teacher_dir: Path, student: str,
              work: Path) -> int:
    """KD against a feature method for one student over several seeds: final test top-1, mean and spread."""
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = ["kd", args.feature_method]
    assert data[-2:] == ["--seed", "0"]  # the teacher's; each run here gets its own
    base = [*distill, "run", *data[:-2], "--teacher", args.teacher,
            "--teacher-ckpt", str(teacher_dir), "--student", student, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size)]
    top1: dict[str, list[float]] = {m: [] for m in methods}
    for seed in seeds:
        for method in methods:
            out = work / "accuracy" / f"{method}-seed{seed}"
            if not ((out / "summary.json").exists() and read_summary(out).complete):
                if out.exists():
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                before = _load()
                seconds = _timed([*base, "--kd-loss", method, "--seed", str(seed), "--out", str(out)],
                                 out.parent / f"{method}-seed{seed}.log")
                print(f"{method} seed {seed}: {seconds:.0f} s (load average {before} -> {_load()})", flush=True)
            top1[method].append(read_summary(out).top1_last)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nstudent {student}, teacher {args.teacher}, data {args.data}, {args.epochs} epochs, seeds {seeds}")
    print("| method | test top-1 % (mean) | spread (max - min) | per seed | date | commit |")
    print("|---|---|---|---|---|---|")
    for method, values in top1.items():
        print(f"| {method} | {statistics.mean(values):.2f} | {max(values) - min(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} | {date} | {_git_commit()} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
