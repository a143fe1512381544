"""Start-up time of the command-line tools, beside the cost of importing torch, in the same run.

    python benchmarks/startup.py                     # 5 runs of each command
    python benchmarks/startup.py --repeats 9 --json out/startup.json

Each command runs in a fresh subprocess (``python -m distill --help`` ...), ``--repeats`` times, round-robin
so that a burst of load from other jobs hits every command alike; the median wall time is reported with the
fastest and slowest runs. ``python -c "import torch"`` and ``python -c pass`` (the interpreter alone) are
timed the same way: a ``--help`` that costs about as much as ``import torch`` imports torch. Also reported:
whether torch was imported (``-X importtime`` of one extra run), which, unlike a timing, does not depend on
the machine's load. The load average is printed before and after, since other jobs slow everything down.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "distill --help": ["-m", "distill", "--help"],
    "distill run --help": ["-m", "distill", "run", "--help"],
    "prune --help": ["-m", "prune", "--help"],
    "students --help": ["-m", "students", "--help"],
    "students list": ["-m", "students", "list"],
}
HEAVY = ("torch", "timm")


def _env() -> dict[str, str]:
    # Runnable from a plain checkout, without `pip install -e .`.
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def time_once(args: list[str]) -> float:
    """Wall seconds of one fresh ``python ARGS`` (output discarded); fails loudly on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def heavy_imports(args: list[str]) -> list[str]:
    """Which of :data:`HEAVY` one run of ``python -X importtime ARGS`` imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min; {os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh runs of each command (default: 5)")
    parser.add_argument("--only", default=None, help="comma-separated command names to time (default: all)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    names = list(COMMANDS) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {unknown}; choose from {list(COMMANDS)}")

    load_before = load_average()
    print(f"python {sys.version.split()[0]} at {sys.executable}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"load average before: {load_before}")
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):  # round-robin: load bursts hit every command alike
        for name in names:
            times[name].append(time_once(COMMANDS[name]))
    heavy = {name: heavy_imports(COMMANDS[name]) for name in names}
    load_after = load_average()

    torch_s = statistics.median(times['python -c "import torch"']) if 'python -c "import torch"' in times else None
    print(f"\n{'command':28} {'median s':>9} {'min s':>7} {'max s':>7} {'x torch':>8}  imports")
    results = {}
    for name in names:
        median = statistics.median(times[name])
        ratio = f"{median / torch_s:.2f}" if torch_s else "-"
        imported = ", ".join(heavy[name]) or "neither torch nor timm"
        print(f"{name:28} {median:9.2f} {min(times[name]):7.2f} {max(times[name]):7.2f} {ratio:>8}  {imported}")
        results[name] = {"median_s": median, "min_s": min(times[name]), "max_s": max(times[name]),
                         "runs_s": times[name], "imports": heavy[name]}
    print(f"\nload average after: {load_after}")
    print(f"wall seconds per fresh process, median of {args.repeats}; 'x torch' = median / median of import torch")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"repeats": args.repeats, "load_before": load_before, "load_after": load_after,
                                   "python": sys.version.split()[0], "commands": results}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
