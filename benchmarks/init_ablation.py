"""How a student's weights start, measured: the 78k CPU-scale student alone at 5 epochs under each
``--weight-init`` (and ``--zero-init-last``), 2 seeds, then KD into the best-initialised student.

Every run is the KD ablation's reference command (``benchmarks/kd_ablation.py``: one-cycle SGD lr 0.2, batch
256, 5 epochs, the full CIFAR-10 JPEG) with one setting changed, so the table compares like with like; the
``kaiming-fan-out`` row is today's default measured again beside the others. ``--teacher`` (a finished
``distill teacher`` run, e.g. the 308k ``r3_111_c32-64-128`` of 6 epochs) adds KD (T=4, weight 0.9) into the
student with the best mean init and with today's default.

    python benchmarks/init_ablation.py --data ../shared/data/cifar10-jpeg.tar.gz --work /tmp/init \\
        --teacher ../bench/tc/teacher-cpu [--jobs 2]
    python benchmarks/init_ablation.py --table-only      # rebuild the RESULTS.md block from docs/init_ablation_cpu.json

A run already finished in ``--work`` is reused, one cut short is resumed; the results are published after
every run, so a study stopped early still shows what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DEFAULT_DATA, REPO, publish, republish, run_stage  # noqa: E402

JSON_NAME = "init_ablation_cpu.json"
BLOCK = "init-ablation:cpu"
STUDENT = "r3_111_c16-32-64"
TODAY = ("kaiming-fan-out", False)
SCHEMES = (TODAY, ("torch-default", False), ("kaiming-fan-in", False), ("kaiming-fan-out", True),
           ("torch-default", True))
BASE = ["--student", STUDENT, "--schedule", "onecycle", "--batch-size", "256", "--lr", "0.2", "--device", "cpu"]


def _label(scheme: tuple[str, bool]) -> str:
    return scheme[0] + (" + zero-init last BN" if scheme[1] else "")


def _name(scheme: tuple[str, bool], seed: int, kd: bool = False) -> str:
    return ("kd-" if kd else "") + scheme[0] + ("-zero" if scheme[1] else "") + f"-s{seed}"


def _cmd(scheme: tuple[str, bool], seed: int, data: str, out: Path, teacher: str | None, epochs: int) -> list[str]:
    kd = ["--teacher-ckpt", teacher, "--kd-loss", "kd", "--temperature", "4", "--kd-weight", "0.9"] if teacher else []
    return [sys.executable, "-m", "distill", "run", *BASE, "--epochs", str(epochs), "--data", data, "--seed",
            str(seed), "--weight-init",
            scheme[0], *(["--zero-init-last"] if scheme[1] else []), *kd, "--out", str(out)]


def table(payload: dict) -> str:
    """One row per setting (top-1 per seed, mean) and its gain over the row it is measured against."""
    rows: dict[str, dict[int, float]] = {}
    against: dict[str, str | None] = {}
    for record in payload["records"]:
        rows.setdefault(record["label"], {})[record["seed"]] = record["top1_last"]
        against[record["label"]] = record.get("baseline")

    def mean(label: str | None) -> float | None:
        tops = rows.get(label or "", {})
        return statistics.mean(tops.values()) if len(tops) == len(payload["seeds"]) else None

    lines = ["| student (5 epochs unless said) | top-1 per seed | mean | gain over its kaiming-fan-out row |",
             "|---|---|---:|---:|"]
    for label, tops in rows.items():
        seeds = " / ".join(f"{tops[s]:.2f}" if s in tops else "-" for s in payload["seeds"])
        m, base = mean(label), mean(against[label])
        gain = "" if m is None or base is None else f"{m - base:+.2f}"
        lines.append(f"| {label} | {seeds} | {'-' if m is None else f'{m:.2f}'} | {gain} |")
    lines += ["", f"{payload['date']}, commit {payload['commit']}, {payload['device']}, {payload['jobs']} run(s) at "
              "a time (one thread each; accuracy does not depend on load). Top-1 at the last epoch on the 10,000 "
              f"test images. Commands: `python -m distill run {' '.join(BASE)} --epochs {payload['epochs']} --data "
              "<tarball> --seed S --weight-init X [--zero-init-last]` (KD rows add `--teacher-ckpt <teacher> "
              f"--kd-loss kd --temperature 4 --kd-weight 0.9`); the study: `{payload['command']}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--work", type=Path, default=Path("/tmp/init-ablation"))
    parser.add_argument("--results", type=Path, default=REPO / "docs")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--teacher", default=None, help="a finished teacher run: adds the KD rows")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each when above 1)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--schemes", default=None,
                        help="which, by index into SCHEMES, comma-separated (default: all); 0 is today's default")
    parser.add_argument("--kd-reference", default=None, metavar="RUN,RUN",
                        help="finished KD runs into today's default init, one per seed and with the KD rows' "
                             "settings (e.g. the teacher-output cache study's cells): used instead of training them")
    parser.add_argument("--long-epochs", type=int, default=0,
                        help="also train the best init at this many epochs, against today's default at that length")
    parser.add_argument("--long-reference", default=None, metavar="JSON:KEY,KEY",
                        help="today's default at --long-epochs from a study's recorded runs (one key per seed) "
                             "instead of training it, e.g. docs/kd_ablation_cpu.json:ref-onecycle-10ep-s0,...")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if args.table_only:
        return republish(args.results, JSON_NAME, BLOCK, table)
    import os

    from distill.device import device_name, resolve_device

    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    payload = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
               "commit": commit.stdout.strip(), "device": device_name(resolve_device("cpu")), "jobs": args.jobs,
               "seeds": seeds, "epochs": args.epochs, "command": "python benchmarks/init_ablation.py "
               + " ".join(argv if argv is not None else sys.argv[1:]), "records": []}
    lock = threading.Lock()

    def one(label: str, scheme: tuple[str, bool], seed: int, teacher: str | None, baseline: str | None,
            epochs: int = args.epochs) -> None:
        out = args.work / (_name(scheme, seed, kd=teacher is not None) + ("" if epochs == args.epochs
                                                                         else f"-{epochs}ep"))
        cmd = _cmd(scheme, seed, args.data, out, teacher, epochs)
        record = run_stage(out.name, cmd, out, [sys.executable, "-m", "distill", "run", "--resume", str(out)],
                           args.work / f"{out.name}.log")
        add({"label": label, "baseline": baseline, "scheme": scheme[0], "zero_init_last": scheme[1], "seed": seed,
             "epochs": epochs, "top1_last": record["top1_last"], "command": " ".join(cmd[1:]),
             "wall_s": record.get("wall_s")})

    def add(record: dict) -> None:
        with lock:
            payload["records"].append(record)
            publish(args.results, JSON_NAME, payload, BLOCK, table(payload))

    schemes = SCHEMES if args.schemes is None else tuple(SCHEMES[int(i)] for i in args.schemes.split(","))
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(lambda job: one(_label(job[0]), *job, None, None if job[0] == TODAY else _label(TODAY)),
                      [(s, seed) for s in schemes for seed in seeds]))
    if args.teacher:
        means = {}
        for scheme in schemes:
            tops = [r["top1_last"] for r in payload["records"] if (r["scheme"], r["zero_init_last"]) == scheme]
            means[scheme] = statistics.mean(tops)
        best = max(means, key=means.get)
        kd = [TODAY] + ([best] if best != TODAY else [])
        if args.kd_reference:  # today's KD rows from runs already made with these settings
            from common import run_summary

            kd.remove(TODAY)
            for seed, ref in zip(seeds, args.kd_reference.split(",")):
                add({"label": f"KD into {_label(TODAY)}", "baseline": None, "scheme": TODAY[0],
                     "zero_init_last": TODAY[1], "seed": seed, "epochs": args.epochs,
                     "top1_last": run_summary(Path(ref))["top1_last"], "command": f"reused run {ref}"})
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda job: one(f"KD into {_label(job[0])}", *job, args.teacher,
                                          None if job[0] == TODAY else f"KD into {_label(TODAY)}"),
                          [(s, seed) for s in kd for seed in seeds]))
    if args.long_epochs:  # the best init at a longer schedule, against today's at that length
        best = max(schemes, key=lambda sc: statistics.mean(
            r["top1_last"] for r in payload["records"] if r["label"] == _label(sc)))
        reference = f"{_label(TODAY)}, {args.long_epochs} epochs"
        if args.long_reference:  # e.g. docs/kd_ablation_cpu.json:ref-onecycle-10ep-s0,ref-onecycle-10ep-s1
            path, keys = args.long_reference.rsplit(":", 1)
            recorded = json.loads(Path(path).read_text())
            for seed, key in zip(seeds, keys.split(",")):
                add({"label": reference + f" ({Path(path).name})", "baseline": None, "scheme": TODAY[0],
                     "zero_init_last": TODAY[1], "seed": seed, "epochs": args.long_epochs,
                     "top1_last": recorded[key]["top1_last"], "command": recorded[key].get("cmd", key)})
            reference += f" ({Path(path).name})"
        else:
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                list(pool.map(lambda seed: one(reference, TODAY, seed, None, None, args.long_epochs), seeds))
        if best != TODAY:
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                list(pool.map(lambda seed: one(f"{_label(best)}, {args.long_epochs} epochs", best, seed, None,
                                               reference, args.long_epochs), seeds))
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
