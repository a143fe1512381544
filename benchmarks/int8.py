"""Int8 against fp32 on this CPU: ``distill quantize`` on trained runs, their pruned versions at three
roundings, and a card-sized student, measured on the artefacts themselves (onnxruntime, not MAC counts).

The study takes runs that are already trained (training them is other studies' work; the CPU-scale ones
come from ``benchmarks/teacher_cache.py --scale cpu``: the 308k teacher ``teacher-cpu``, the 78k KD students
``cell-KD-T4-w09-s{0,1}-cache`` and the r4_3323 ``card-alone``), copies each into ``--work`` (the originals
are never written), prunes every KD student to half its MACs at ``--round-to`` 1, 8 and 16 with a short KD
fine-tuning, then quantizes every model with calibration seeds 0 and 1 and records what ``distill quantize``
measured. Pruning may run ``--jobs`` at a time; quantization (which times latency) runs one at a time.

    python benchmarks/int8.py --kd ../bench/tc/cell-KD-T4-w09-s0-cache,../bench/tc/cell-KD-T4-w09-s1-cache \\
        --teacher ../bench/tc/teacher-cpu --card ../bench/tc/card-alone --work /tmp/int8 [--jobs 2]
    python benchmarks/int8.py --table-only      # rebuild the table in docs/RESULTS.md from docs/int8_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO, publish, republish, run_command  # noqa: E402  (puts the checkout on sys.path)

JSON_NAME = "int8_cpu.json"
BLOCK = "int8:cpu"
ROUNDINGS = (1, 8, 16)


def _copy_run(source: Path, dest: Path) -> Path:
    """The run's files without last.pt (quantize reads best.pt); an existing copy is kept."""
    if not (dest / "summary.json").exists():
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("last.pt", "*.onnx", "*.log"), dirs_exist_ok=True)
    return dest


def _prune(kd_run: Path, rounding: int, work: Path, finetune_epochs: int) -> Path:
    """Half the MACs at ``rounding``; where that rounding cannot get so low (round-to 16 keeps a 16-channel
    stage whole), the smallest size it can build, as prune's refusal names it."""
    out = work / f"{kd_run.name}-pruned-r{rounding}"
    if (out / "summary.json").exists() and json.loads((out / "summary.json").read_text()).get("complete"):
        return out
    cmd = [sys.executable, "-m", "prune", str(kd_run), "--target-macs", "50%", "--round-to", str(rounding),
           "--finetune-epochs", str(finetune_epochs), "--out", str(out)]
    if (out / "last.pt").exists():
        cmd = [sys.executable, "-m", "prune", "--resume", str(out)]
    log = work / f"{out.name}.log"
    print(f"[{datetime.datetime.now():%H:%M:%S}] {' '.join(cmd)}", flush=True)
    try:
        run_command(cmd, log)
    except SystemExit:
        smallest = re.search(r"the smallest size with that rounding is ([0-9,]+) macs", log.read_text())
        if smallest is None:
            raise
        cmd[cmd.index("50%")] = smallest.group(1).replace(",", "")
        print(f"[{datetime.datetime.now():%H:%M:%S}] 50% is out of reach at round-to {rounding}: {' '.join(cmd)}",
              flush=True)
        run_command(cmd, log.with_name(log.stem + "-smallest.log"))
    return out


def _quantize(run: Path, seed: int, work: Path, max_drop: float) -> dict:
    out = work / f"{run.name}.int8-seed{seed}.onnx"
    cmd = [sys.executable, "-m", "distill", "quantize", str(run), "--seed", str(seed), "--out", str(out),
           "--max-drop", str(max_drop)]
    print(f"[{datetime.datetime.now():%H:%M:%S}] {' '.join(cmd)}", flush=True)
    run_command(cmd, work / f"{run.name}.quantize-seed{seed}.log")
    summary = json.loads((run / "summary.json").read_text())
    record = summary["int8"]
    return {"run": run.name, "seed": seed, "model": summary["model"], "params": summary["num_params"],
            "macs": summary["macs"], "pruned": bool(summary.get("pruned")), "top1_run": summary["top1_best"],
            "test_images": summary["test_images"], "command": " ".join(cmd[1:]), **record}


def _fmt(values: list[float], digits: int = 2) -> str:
    return f"{statistics.mean(values):.{digits}f}" if values else "-"


def table(payload: dict) -> str:
    """The RESULTS.md block: one row per model (means over calibration seeds), then how it was measured."""
    rows: dict[str, list[dict]] = {}
    for record in payload["records"]:
        rows.setdefault(record["label"], []).append(record)
    lines = ["| model | params | MACs | fp32 % | int8 % | drop (points) | int8 ms b1 / b64 / b256 | "
             "speed-up b1 / b64 / b256 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, records in rows.items():
        first = records[0]
        ms = " / ".join(_fmt([r["latency"]["int8"][f"batch{b}_ms"] for r in records], 3) for b in (1, 64, 256))
        speed = " / ".join(_fmt([r["speedup"][f"batch{b}"] for r in records]) + "x" for b in (1, 64, 256))
        lines.append(f"| {label} | {first['params']:,} | {first['macs'] / 1e6:.1f}M | "
                     f"{_fmt([r['top1_fp32'] for r in records])} | {_fmt([r['top1_int8'] for r in records])} | "
                     f"{_fmt([r['drop_points'] for r in records])} | {ms} | {speed} |")
    env = payload["environment"]
    lines += ["", f"{env['date']}, commit {env['commit']}, {env['cpu']} (VNNI: {env['vnni']}), onnxruntime "
              f"{env['onnxruntime']}, scheme {env['scheme']}, threads: onnxruntime's default; means over "
              f"calibration seeds {', '.join(str(s) for s in payload['seeds'])} ({payload['calibration']} training "
              "images each); top-1 on each run's own test images (10,000; the card net's 1,000). Command: "
              f"`{payload['command']}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kd", default="", help="comma-separated KD student runs (pruned at each rounding)")
    parser.add_argument("--teacher", default=None, help="a teacher run")
    parser.add_argument("--card", default=None, help="a card-sized student run (latency; top-1 as it is)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8"))
    parser.add_argument("--results", type=Path, default=REPO / "docs")
    parser.add_argument("--seeds", default="0,1", help="calibration seeds")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="prunes at a time (quantization runs alone)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if args.table_only:
        return republish(args.results, JSON_NAME, BLOCK, table)
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    kd = [_copy_run(Path(p), args.work / Path(p).name) for p in args.kd.split(",") if p]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.jobs > 1 else None
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        if env is not None:
            os.environ.update(env)
        pruned = list(pool.map(lambda job: _prune(*job, args.work, args.finetune_epochs),
                               [(k, r) for k in kd for r in ROUNDINGS]))
    os.environ.pop("OMP_NUM_THREADS", None)  # quantization and its timing: the whole machine
    models = [(f"78k KD student (seed {i})", k) for i, k in enumerate(kd)]
    models += [(f"78k KD pruned, round-to {r} (seed {i})", p)
               for (i, r), p in zip([(i, r) for i in range(len(kd)) for r in ROUNDINGS], pruned)]
    if args.teacher:
        models.append(("308k teacher", _copy_run(Path(args.teacher), args.work / Path(args.teacher).name)))
    if args.card:
        models.append(("r4_3323 (2,560-image run; latency only)", _copy_run(Path(args.card), args.work /
                                                                              Path(args.card).name)))
    records = []
    for label, run in models:
        for seed in seeds:
            max_drop = 100.0  # the study records every drop; the 1-point refusal is the command's default
            records.append({"label": label, **_quantize(run, seed, args.work, max_drop)})
    from distill import quantize

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    payload = {
        "environment": {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                        "commit": commit.stdout.strip(), "cpu": quantize.cpu_name(), "vnni": quantize.cpu_has_vnni(),
                        "onnxruntime": records[0]["onnxruntime"], "scheme": records[0]["scheme"]},
        "seeds": seeds, "calibration": records[0]["calibration"]["images"],
        "command": "python benchmarks/int8.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "records": records,
    }
    publish(args.results, JSON_NAME, payload, BLOCK, table(payload))
    print(table(payload))
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"done in {time.perf_counter() - started:.0f} s")
    sys.exit(code)
