"""The first GPU slot: one command, within the device's limits, that returns everything it measured.

A lent GPU machine gives about 15 minutes of device time in all and at most 10 minutes per command, starts
bare (no torch-pruning, fvcore, iopath, termcolor or yacs; the project not installed) and returns at most 8
small files from ``$OUT``. So this script:

- runs every command as ``python -m distill`` / ``python -m prune`` from the checkout (no entry points);
- measures only the GPU (no start-up or CPU-only benchmarks): the KD step against a plain PyTorch loop (and
  ``fit``'s DataLoader path), a teacher, KD with the teacher-output cache cold and warm, the student alone, a
  pruned student with its fine-tuning, and KD under ``--compile`` (against the cold run: a compiled teacher's
  outputs have their own cache entry); then the compare table;
- writes its runs under ``--work`` (outside ``$OUT``), and puts one archive of the small files (JSON, logs,
  the compare table) and a ``summary.json`` into ``--out``;
- keeps each step inside the time left (``--budget-s``); a step cut short is recorded as such, and its run
  folder resumes when the script is run again on the same (warm) machine.

    # here: wheels and the data into ignored folders of the checkout (once)
    bash benchmarks/gpu_wheels.sh && mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
    # there (device run, carry [".whl", ".data"], timeout_s 540):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site &&
        PYTHONUNBUFFERED=1 python3 benchmarks/gpu_day_one.py --data .data/cifar10-jpeg.tar.gz --out $OUT
    # a longer slot: the same steps at a longer schedule, resumable step by step (rerun until it says done)
    python3 benchmarks/gpu_day_one.py --profile long --data .data/cifar10-jpeg.tar.gz --out $OUT --budget-s 540
    # here, in the test suite: the same script on the CPU with tiny settings, so that it cannot rot
    python benchmarks/gpu_day_one.py --profile check --data DIR --out OUT --work WORK
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Profile:
    device: str
    teacher: str
    student: str
    teacher_epochs: int
    epochs: int
    batch_size: int
    lr: float
    data: tuple[str, ...] = ()  # subset flags
    throughput: tuple[str, ...] = ()  # benchmarks/train_throughput.py flags
    prune: tuple[str, ...] = ("--target-macs", "50%")  # how the KD student is pruned (then fine-tuned)
    # `--compile` (student and frozen teacher) against kd-cold; off on the CPU check, where inductor's C++
    # build alone takes minutes for nothing the check needs
    compile_step: bool = True


PROFILES = {
    # About 5 minutes on an H100 (estimated from the CPU's MAC counts; the first slot measures it).
    "day-one": Profile("cuda", "resnet50", "r4_3323", teacher_epochs=3, epochs=3, batch_size=512, lr=0.4,
                       throughput=("--images", "10000", "--batch-size", "512")),
    "long": Profile("cuda", "resnet50", "r4_3323", teacher_epochs=30, epochs=30, batch_size=512, lr=0.4,
                    throughput=("--images", "50000", "--batch-size", "512")),
    "check": Profile("cpu", "r2_11_c8-16", "r1_1_c4", teacher_epochs=1, epochs=1, batch_size=50, lr=0.05,
                     data=("--train-subset", "300", "--test-subset", "100"),
                     throughput=("--images", "300", "--batch-size", "50", "--workers", "0"),
                     prune=("--ratio", "0.5", "--round-to", "1"), compile_step=False),
}


def steps(p: Profile, data: str, work: Path) -> list[tuple[str, list[str], Path | None]]:
    """(name, command, run folder or None) for every step, in order."""
    py = [sys.executable]
    common = ["--data", data, *p.data, "--device", p.device, "--batch-size", str(p.batch_size), "--lr", str(p.lr),
              "--schedule", "onecycle", "--seed", "0"]
    teacher = work / "teacher"
    kd = ["--teacher", p.teacher, "--teacher-ckpt", str(teacher), "--kd-loss", "kd"]
    student = [*py, "-m", "distill", "run", "--student", p.student, "--epochs", str(p.epochs), *common]
    compiled = [("kd-compile", [*student, *kd, "--compile", "--out", str(work / "kd-compile")], work / "kd-compile")]
    return [
        ("throughput", [*py, "benchmarks/train_throughput.py", "--data", data, "--teacher", p.teacher, "--student",
                        p.student, "--device", p.device, *p.throughput, "--json", str(work / "throughput.json")], None),
        ("teacher", [*py, "-m", "distill", "teacher", "--teacher", p.teacher, "--epochs", str(p.teacher_epochs),
                     "--label-smoothing", "0.0", *common, "--out", str(teacher)], teacher),
        ("kd-cold", [*student, *kd, "--out", str(work / "kd-cold")], work / "kd-cold"),
        ("kd-warm", [*student, *kd, "--out", str(work / "kd-warm")], work / "kd-warm"),
        ("alone", [*student, "--out", str(work / "alone")], work / "alone"),
        ("pruned", [*py, "-m", "prune", str(work / "kd-cold"), *p.prune, "--finetune-epochs",
                    str(max(1, p.epochs // 3)), "--out", str(work / "pruned")], work / "pruned"),
        *(compiled if p.compile_step else []),
        ("compare", [*py, "-m", "distill", "compare", *(str(work / n) for n in ("teacher", "kd-cold", "kd-warm",
                                                                                 "alone", "pruned")),
                     *([str(work / "kd-compile")] if p.compile_step else []),
                     "--markdown", str(work / "compare.md"), "--csv", str(work / "compare.csv")], None),
    ]


def _finished(run: Path | None) -> bool:
    from distill.rundir import is_complete

    return run is not None and is_complete(run)


def _resume(cmd: list[str], run: Path) -> list[str]:
    """The command that continues ``run`` where a cut-short step left it."""
    if cmd[2] == "prune":
        return [*cmd[:3], "--resume", str(run)]
    return [*cmd[:3], "run", "--resume", str(run)]


def run_step(name: str, cmd: list[str], run: Path | None, work: Path, left_s: float) -> dict:
    """Run one step (or reuse its finished run), at most ``left_s`` seconds; what happened."""
    if _finished(run):
        return {"step": name, "status": "reused", "run": str(run)}
    if run is not None and (run / "last.pt").exists():
        cmd = _resume(cmd, run)
    log = work / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1", "DISTILL_CACHE": str(work / "cache"), "DISTILL_TEACHERS": str(work / "teachers")}
    print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: {shlex.join(cmd)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                  timeout=max(left_s, 1.0))
            status = "done" if proc.returncode == 0 else f"failed ({proc.returncode})"
        except subprocess.TimeoutExpired:  # killed: the run folder resumes on the next invocation
            status = "cut short (time budget)"
    record = {"step": name, "status": status, "seconds": round(time.perf_counter() - started, 1),
              "command": shlex.join(cmd)}
    if status.startswith("failed"):
        record["log_tail"] = log.read_text().splitlines()[-5:]
    if run is not None and (run / "summary.json").exists():
        from distill.rundir import read_metrics, read_summary

        record["summary"] = read_summary(run).to_dict()
        record["epochs"] = [{k: r.get(k) for k in ("epoch", "seconds", "train_img_s", "test_top1", "teacher_outputs")}
                            for r in read_metrics(run)]
    print(f"[{datetime.datetime.now():%H:%M:%S}] {name}: {status} in {record['seconds']} s", flush=True)
    return record


def environment() -> dict:
    import torch

    info = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "torch": torch.__version__,
            "python": sys.version.split()[0], "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda,
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    info["commit"] = commit.stdout.strip() or "unknown (not a git checkout)"
    missing = []
    for module in ("torch_pruning", "fvcore", "iopath", "termcolor", "yacs", "timm"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    info["missing_packages"] = missing
    return info


def pack(work: Path, out: Path, results: dict) -> Path:
    """``out/summary.json`` and ``out/gpu_day_one.tar.gz`` (every small file of ``work``): two files back."""
    out.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    archive = out / "gpu_day_one.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            small = path.is_file() and path.stat().st_size < 2 << 20 and path.suffix in (".json", ".jsonl", ".log",
                                                                                         ".md", ".csv", ".txt")
            if small and "cache" not in path.relative_to(work).parts:
                tar.add(path, arcname=str(path.relative_to(work)))
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="day-one")
    parser.add_argument("--data", required=True, help="the CIFAR-10 tarball (or any --data source)")
    parser.add_argument("--out", type=Path, required=True, help="where the two result files go ($OUT on the device)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-day-one"), help="run folders (not returned)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting steps after this many seconds")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"profile": args.profile, "environment": environment(), "steps": []}
    if profile.device == "cuda" and not results["environment"]["cuda"]:
        print("no CUDA device here; use --profile check on a CPU", file=sys.stderr)
        return 2
    if results["environment"]["missing_packages"]:
        print(f"missing packages {results['environment']['missing_packages']}: install the carried wheels first "
              "(benchmarks/gpu_wheels.sh)", file=sys.stderr)
        return 2
    for name, cmd, run in steps(profile, args.data, args.work):
        left = args.budget_s - (time.perf_counter() - started)
        if left < 10:
            results["steps"].append({"step": name, "status": "not started (time budget)"})
            continue
        results["steps"].append(run_step(name, cmd, run, args.work, left))
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["done"] = all(s["status"] in ("done", "reused") for s in results["steps"])
    archive = pack(args.work, args.out, results)
    print(f"{'done' if results['done'] else 'not done: run again to continue'} in {results['seconds']} s; "
          f"{args.out / 'summary.json'} and {archive}", flush=True)
    return 0 if results["done"] else 1


if __name__ == "__main__":
    sys.exit(main())
