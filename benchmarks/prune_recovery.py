"""Recovery ablation for pruning (issue 16, point 5): which fine-tuning recipe keeps accuracy at half the MACs.

    python benchmarks/prune_recovery.py runs/run-r3_111_c16-32-64 --seeds 0 1 --out runs/prune-recovery
    python benchmarks/prune_recovery.py SOURCE --only baseline epochs-6 --dry-run     # print the commands

One factor at a time around a baseline (half the MACs, --global, 3 KD fine-tuning epochs at lr 0.05, prune's
default teacher: the source run's own teacher when it had one, else the unpruned model; one pruning step, no
sparse stage): more epochs, a lower lr, the unpruned model as teacher instead, a sparse stage, three
iterative steps. ``--target-macs`` replaces "half" when half the MACs is not reachable at --round-to 8 (prune
names the nearest sizes). Every variant runs once per
seed with ``prune``; the table gives each variant's top-1 after fine-tuning as mean and spread over seeds,
and its difference from the unpruned source (the goal: within 0.5 point). A long CPU job: run it by hand on
a quiet machine (two trainings at once on 2 cores slow each other 5-9x); finished variants are skipped when
run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "epochs-6": ["--finetune-epochs", "6"],
    "lr-0.02": ["--lr", "0.02"],
    "teacher-unpruned": ["--teacher", "SOURCE_SPEC", "--teacher-ckpt", "SOURCE_DIR"],  # the unpruned source teaches
    "sparse-2": ["--sparse-epochs", "2"],
    "iterative-3": ["--iterative-steps", "3"],
}
BASELINE = ["--global", "--finetune-epochs", "3", "--lr", "0.05"]


def _source_info(source: Path) -> tuple[int, float, str]:
    summary = json.loads((source / "summary.json").read_text())
    config = json.loads((source / "config.json").read_text())
    return int(summary["macs"]), float(summary["top1_last"]), str(config["student"])


def _command(source: Path, out: Path, seed: int, extra: list[str], macs: int) -> list[str]:
    return [sys.executable, "-m", "prune", str(source), "--target-macs", str(macs), *BASELINE, *extra,
            "--seed", str(seed), "--out", str(out)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a finished `distill run` directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run only these variants")
    p.add_argument("--out", type=Path, default=Path("runs/prune-recovery"))
    p.add_argument("--target-macs", type=int, default=None, help="MACs to prune to (default: half the source's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args()
    macs, source_top1, spec = _source_info(args.source)
    target = args.target_macs or macs // 2
    rows = []
    for name in args.only or list(VARIANTS):
        subst = {"SOURCE_SPEC": spec, "SOURCE_DIR": str(args.source)}
        extra = [subst.get(x, x) for x in VARIANTS[name]]
        top1s = []
        for seed in args.seeds:
            out = args.out / f"{name}-seed{seed}"
            cmd = _command(args.source, out, seed, extra, target)
            if args.dry_run:
                print(" ".join(cmd))
                continue
            if not (out / "summary.json").exists() or not json.loads((out / "summary.json").read_text())["complete"]:
                subprocess.run(cmd, check=True)
            top1s.append(float(json.loads((out / "summary.json").read_text())["top1_last"]))
        if top1s:
            mean = statistics.mean(top1s)
            spread = statistics.stdev(top1s) if len(top1s) > 1 else 0.0
            rows.append((name, mean, spread, mean - source_top1, len(top1s)))
    if rows:
        print(f"source top-1 {source_top1:.2f}% at {macs:,} MACs; pruned to at most {target:,} MACs "
              f"({100 * target / macs:.1f}%)")
        print("| variant | top-1 after fine-tuning (mean +- sd) | vs unpruned | seeds |")
        print("|---|---|---|---|")
        for name, mean, spread, delta, n in rows:
            print(f"| {name} | {mean:.2f} +- {spread:.2f} | {delta:+.2f} | {n} |")


if __name__ == "__main__":
    main()
