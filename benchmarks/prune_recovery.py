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

``--wide RUN --small RUN [RUN ...]`` adds the second goal, at equal total epochs: the wider RUN (e.g. the
teacher run, trained E_w epochs) pruned layer by layer to the small student's parameter count and KD fine-tuned for
E_s - E_w epochs by its unpruned self, against the small student distilled directly for E_s epochs (the
--small runs, one per seed).
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
    "lr-0.2": ["--lr", "0.2"],  # the source run's peak lr (prune's default when --lr is not given)
    "source-recipe": ["--finetune-epochs", "5", "--lr", "0.2"],  # prune's defaults for the CPU-scale source: its 5 epochs, its lr
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


def _wide_command(wide: Path, out: Path, seed: int, params: int, epochs: int, spec: str) -> list[str]:
    # Per-layer ratios (no --global): a uniform cut of a 2x-wide net lands on the small student's own widths,
    # so both sides of the comparison are the same architecture (--global at --round-to 8 misses it by 3%).
    # The lr is the wide run's own (prune's default), which recovered best in the variants above.
    return [sys.executable, "-m", "prune", str(wide), "--target-params", str(params),
            "--finetune-epochs", str(epochs), "--teacher", spec, "--teacher-ckpt", str(wide),
            "--seed", str(seed), "--out", str(out)]


def _top1(run: Path) -> float | None:
    """A finished run's last top-1, else None."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return float(summary["top1_last"]) if summary.get("complete") else None


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def _per_seed(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def wide_vs_small(wide: Path, small: list[Path], seeds: list[int], out: Path, dry_run: bool,
                  table_only: bool = False) -> None:
    """Prune the wide run to the small student's size at equal total epochs; print both."""
    wide_summary = json.loads((wide / "summary.json").read_text())
    small_summary = json.loads((small[0] / "summary.json").read_text())
    params, total = int(small_summary["num_params"]), int(small_summary["epochs"])
    epochs = total - int(wide_summary["epochs"])
    if epochs < 1:
        raise SystemExit(f"the small runs train {total} epochs, the wide run {wide_summary['epochs']}: "
                         "nothing left to fine-tune at equal total epochs")
    top1s = []
    for seed in seeds:
        run = out / f"wide-to-small-seed{seed}"
        cmd = _wide_command(wide, run, seed, params, epochs, str(wide_summary["model"]))
        if dry_run:
            print(" ".join(cmd))
            continue
        if _top1(run) is None and not table_only:
            subprocess.run(cmd, check=True)
        if _top1(run) is not None:
            top1s.append(_top1(run))
    smalls = [t for t in map(_top1, small) if t is not None]
    if top1s and smalls:
        print(f"equal total epochs ({total}): {wide_summary['model']} ({wide_summary['num_params']:,} params, "
              f"{wide_summary['top1_last']:.2f}%) trained {wide_summary['epochs']} epochs, pruned layer by layer "
              f"to {params:,} params and KD fine-tuned {epochs} by its unpruned self; {small_summary['model']} "
              f"distilled {total} epochs\n")
        print("| student | top-1 per seed (%) | mean +- sd | seeds |")
        print("|---|---|---|---|")
        print(f"| wide pruned to the small one's size | {_per_seed(top1s)} | {_mean_sd(top1s)} | {len(top1s)} |")
        print(f"| small distilled directly | {_per_seed(smalls)} | {_mean_sd(smalls)} | {len(smalls)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a finished `distill run` directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run only these variants")
    p.add_argument("--out", type=Path, default=Path("runs/prune-recovery"))
    p.add_argument("--target-macs", type=int, default=None, help="MACs to prune to (default: half the source's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--table-only", action="store_true", help="run nothing: the table of the runs finished under --out")
    p.add_argument("--wide", type=Path, help="a wider finished run to prune to the small student's size")
    p.add_argument("--small", type=Path, nargs="+", help="the small student distilled directly (one run per seed)")
    args = p.parse_args()
    if args.wide:
        if not args.small:
            raise SystemExit("--wide needs --small: the small student's runs to compare with")
        wide_vs_small(args.wide, args.small, args.seeds, args.out, args.dry_run, args.table_only)
        return
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
            if _top1(out) is None and not args.table_only:
                subprocess.run(cmd, check=True)
            if _top1(out) is not None:
                top1s.append(_top1(out))
        if top1s:
            flags = " ".join(extra).replace(str(args.source), "SOURCE") or "-"
            rows.append((name, flags, top1s, statistics.mean(top1s) - source_top1))
    if rows:
        print(f"source top-1 {source_top1:.2f}% at {macs:,} MACs; pruned to at most {target:,} MACs "
              f"({100 * target / macs:.1f}%); baseline: `{' '.join(BASELINE)}`\n")
        print("| variant | flags over the baseline | top-1 per seed (%) | mean +- sd | vs unpruned (points) | seeds |")
        print("|---|---|---|---|---|---|")
        for name, flags, top1s, delta in rows:
            print(f"| {name} | `{flags}` | {_per_seed(top1s)} | {_mean_sd(top1s)} | {delta:+.2f} | {len(top1s)} |")


if __name__ == "__main__":
    main()
