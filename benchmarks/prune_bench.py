"""Pruning benchmarks (issue "Structured pruning to an exact budget"), through the public commands.

(a) A distilled student pruned to half its MACs and KD fine-tuned: how much top-1 does it lose?
(b) A wider distilled student pruned to a smaller student's parameter count and KD fine-tuned, against
    that smaller student distilled directly with the same total number of epochs.

    python benchmarks/prune_bench.py --scale cpu --teacher-run runs/e2e-cpu/teacher \\
        --distilled runs/e2e-cpu/kd_mix-s0 --direct runs/e2e-cpu/kd-s0
    python benchmarks/prune_bench.py --scale gpu --teacher-run runs/t-resnet50 --distilled runs/kd-r4_3323 ...

At cpu scale the students are the end-to-end benchmark's (an ~83k-parameter student, a small teacher);
at gpu scale r4_3323 and r4_2222_c64-128-256-512 (about 11.2M parameters) to 4.9M. Results go to
docs/RESULTS.md between markers, and docs/prune_<scale>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import publish, run_stage, run_summary  # noqa: E402

SCALES = {
    "cpu": {"wide": "r3_111_c24-48-96", "finetune_epochs": 3, "wide_epochs": 4, "wide_finetune_epochs": 2,
            "finetune_lr": 0.05},
    "gpu": {"wide": "r4_2222_c64-128-256-512", "finetune_epochs": 60, "wide_epochs": 140, "wide_finetune_epochs": 60,
            "finetune_lr": 0.1},
    # The test's smoke mode, on the end-to-end benchmark's smoke runs (a few hundred images).
    "smoke": {"wide": "r3_111_c24-48-96", "finetune_epochs": 1, "wide_epochs": 1, "wide_finetune_epochs": 1,
              "finetune_lr": 0.02},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--teacher-run", type=Path, required=True, help="the teacher's run directory")
    p.add_argument("--distilled", type=Path, required=True, help="a distilled student's run directory, for (a)")
    p.add_argument("--direct", type=Path, required=True,
                   help="(b)'s reference: the small student distilled directly (its epochs set the budget)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--results", type=Path, default=REPO / "docs")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    work = args.work or REPO / "runs" / f"prune-bench-{args.scale}"
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    started = time.perf_counter()

    # (a) half the MACs, then KD fine-tuning from the source run's teacher.
    src = run_summary(args.distilled)
    a_dir = work / "a-half-macs"
    # --round-to 1: exact budgets, as recorded in docs/RESULTS.md (see e2e.py).
    a_cmd = [*py, "prune", str(args.distilled), "--target-macs", str(src["macs"] // 2), "--global", "--round-to", "1",
             "--finetune-epochs", str(scale["finetune_epochs"]), "--lr", str(scale["finetune_lr"]),
             "--device", args.device, "--out", str(a_dir)]
    a = run_stage("(a) pruned", a_cmd, a_dir, [*py, "prune", "--resume", str(a_dir)], work / "a.log")

    # (b) a wider student distilled, pruned to the direct student's size, fine-tuned; same total epochs.
    direct = run_summary(args.direct)
    direct_cfg = json.loads((args.direct / "config.json").read_text())
    wide_dir, b_dir = work / "b-wide", work / "b-pruned"
    subset = []  # the same images as the direct run
    for key in ("train_subset", "test_subset"):
        if direct_cfg.get(key):
            subset += [f"--{key.replace('_', '-')}", str(direct_cfg[key])]
    wide_cmd = [*py, "distill", "run", "--teacher", direct_cfg["teacher"], "--teacher-ckpt", str(args.teacher_run),
                "--student", scale["wide"], "--data", direct_cfg["data"], "--epochs", str(scale["wide_epochs"]),
                "--batch-size", str(direct_cfg["batch_size"]), "--lr", str(direct_cfg["lr"]),
                "--seed", str(direct_cfg["seed"]), *subset, "--device", args.device, "--out", str(wide_dir)]
    wide = run_stage("(b) wide", wide_cmd, wide_dir, [*py, "distill", "run", "--resume", str(wide_dir)],
                  work / "b-wide.log")
    b_cmd = [*py, "prune", str(wide_dir), "--target-params", str(direct["num_params"]), "--global", "--round-to", "1",
             "--finetune-epochs", str(scale["wide_finetune_epochs"]), "--lr", str(scale["finetune_lr"]),
             "--device", args.device, "--out", str(b_dir)]
    b = run_stage("(b) pruned", b_cmd, b_dir, [*py, "prune", "--resume", str(b_dir)], work / "b.log")

    from distill.device import git_commit

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "device": a["device"],
        "command": "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *(argv or sys.argv[1:])]),
        "seconds": time.perf_counter() - started,
    }
    drop = src["top1_last"] - a["top1_last"]
    gap = b["top1_last"] - direct["top1_last"]
    lines = [
        f"### Pruning, {args.scale} scale ({meta['date']}, commit {meta['commit']}, {meta['device']})",
        "",
        f"Command: `{meta['command']}`. Top-1 in percent on the {a['eval_set']}, last epoch (EMA in brackets).",
        "",
        "| run | model | params | MACs (M) | top-1 | epochs | command |",
        "|---|---|---|---|---|---|---|",
        f"| (a) source: distilled | {src['model']} | {src['num_params']:,} | {src['macs'] / 1e6:.1f} | "
        f"{src['top1_last']:.2f} ({src['top1_ema']:.2f}) | {src['epochs']} | see end-to-end table |",
        f"| (a) pruned to half the MACs + KD | {a['model']} | {a['num_params']:,} | {a['macs'] / 1e6:.1f} | "
        f"{a['top1_last']:.2f} ({a['top1_ema']:.2f}) | +{a['epochs']} | `{' '.join(a_cmd[2:])}` |",
        f"| (b) wide, distilled | {wide['model']} | {wide['num_params']:,} | {wide['macs'] / 1e6:.1f} | "
        f"{wide['top1_last']:.2f} ({wide['top1_ema']:.2f}) | {wide['epochs']} | `{' '.join(wide_cmd[2:])}` |",
        f"| (b) wide pruned to the small size + KD | {b['model']} | {b['num_params']:,} | {b['macs'] / 1e6:.1f} | "
        f"{b['top1_last']:.2f} ({b['top1_ema']:.2f}) | +{b['epochs']} | `{' '.join(b_cmd[2:])}` |",
        f"| (b) small, distilled directly | {direct['model']} | {direct['num_params']:,} | "
        f"{direct['macs'] / 1e6:.1f} | {direct['top1_last']:.2f} ({direct['top1_ema']:.2f}) | {direct['epochs']} | "
        "see end-to-end table |",
        "",
        f"- (a) top-1 drop after pruning to half the MACs and fine-tuning: {drop:+.2f} points "
        f"(target: at most 0.5): {'met' if drop <= 0.5 else 'MISSED'}. Pruning alone, before fine-tuning: "
        f"{a['pruned']['top1_after_prune']:.2f}%, after BN recalibration "
        f"{a['pruned']['top1_after_bn_recalibration']:.2f}%.",
        f"- (b) pruned-from-wide minus directly distilled, same total epochs "
        f"({wide['epochs']}+{b['epochs']} vs {direct['epochs']}): {gap:+.2f} points.",
    ]
    block = "\n".join(lines)
    payload = {"meta": meta, "a": {"source": src, "pruned": a}, "b": {"wide": wide, "pruned": b, "direct": direct}}
    publish(args.results, f"prune_{args.scale}.json", payload, f"prune-{args.scale}", block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
