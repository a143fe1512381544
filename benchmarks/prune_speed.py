"""Pruning speed: the budget search against raw torch-pruning, and the speed of pruned widths by rounding.

    OMP_NUM_THREADS=2 python benchmarks/prune_speed.py                  # timm resnet18 (10 classes), 11.2M -> 4.9M
    OMP_NUM_THREADS=2 python benchmarks/prune_speed.py --skip-naive --rounds 1,8 --json out/prune_speed.json

Part 1 (issue 16, point 2) times, side by side in one process on the same net:
  - ``prune_to_target`` (one dependency graph, importance once, analytic probes), whole call;
  - one raw torch-pruning prune (``BasePruner`` + ``step()``, graph build included) at the ratio it found;
  - optionally the naive search: bisection on raw torch-pruning, deep copy + new pruner per probe.
Part 2 (point 3) measures images/s of a training step (SGD, batch 64) and of inference (batch 256) on CPU
for a student (default ResNet-20, r3_333_c16-32-64) unpruned and with 40% of each layer's channels removed
at each rounding, in channels-last and contiguous format. Besides wall-clock images/s it reports images per
CPU-second of the process: with OMP_NUM_THREADS=1 that figure barely moves when other jobs share the CPU. Each
measurement runs in its own subprocess, so a oneDNN crash on odd widths is reported, not fatal.

Timings are only meaningful on a quiet machine: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INPUT = (3, 32, 32)

_MEASURE = r"""
import json, sys, time, torch
path, fmt, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = torch.load(path, weights_only=False)  # this benchmark's own temporary file
memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
model = model.to(memory_format=memory_format)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

def rate(mode, batch):
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))

    def step():
        if mode == "train":
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        else:
            model.eval()
            with torch.inference_mode():
                model(x)

    for _ in range(2):
        step()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        step(); n += 1
    return n * batch / (time.perf_counter() - t0), n * batch / (time.process_time() - c0)

(train, train_cpu), (infer, infer_cpu) = rate("train", 64), rate("infer", 256)
print(json.dumps({"train": train, "infer": infer, "train_cpu": train_cpu, "infer_cpu": infer_cpu}))
"""


def _images_per_s(model: torch.nn.Module, fmt: str, seconds: float) -> dict[str, float | str]:
    """Training (batch 64) and inference (batch 256) images/s in a subprocess; a crash or hang is reported."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model, path)
        try:
            done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), fmt, str(seconds)],
                                  capture_output=True, text=True, timeout=120 + 20 * seconds)
        except subprocess.TimeoutExpired:
            return {"train": "hung", "infer": "hung"}
    if done.returncode != 0:
        return {"train": f"crashed (exit {done.returncode})", "infer": "-"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _resnet18():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10)


def _raw_prune(model, ratio: float, round_to: int | None, global_pruning: bool = False) -> tuple[float, int]:
    import torch_pruning as tp

    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(model, torch.zeros(1, *INPUT), importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[model.get_classifier()], round_to=round_to,
                                  global_pruning=global_pruning)
    pruner.step()
    return time.perf_counter() - t0, sum(p.numel() for p in model.parameters())


def _naive_search(base, target: int, round_to: int | None, probes: int = 22) -> tuple[float, int]:
    """Bisection on raw torch-pruning: a deep copy and a new pruner (graph) per probe."""
    t0 = time.perf_counter()
    lo, hi, best = 0.0, 0.9, None
    for _ in range(probes):
        mid = 0.5 * (lo + hi)
        _, size = _raw_prune(copy.deepcopy(base), mid, round_to)
        if size <= target:
            hi, best = mid, size
        else:
            lo = mid
    return time.perf_counter() - t0, best or -1


def _prune(model, target: int, round_to: int):
    """Per-layer pruning to ``target``; global ranking where rounding leaves no per-layer size within 2%."""
    from prune import PruneError, PruneSettings, prune_to_target

    try:
        return prune_to_target(model, "params", target, PruneSettings(round_to=round_to)), "per-layer"
    except PruneError as err:  # refused before the model was touched; result.seconds times the global call only
        print(f"# round-to {round_to}, per-layer: {err}; using global ranking", flush=True)
        return prune_to_target(model, "params", target, PruneSettings(round_to=round_to, global_pruning=True)), "global"


def search_timing(target: int, rounds: list[int], naive: bool, repeats: int) -> list[dict]:
    rows = []
    base = _resnet18()
    _raw_prune(copy.deepcopy(base), 0.5, None)  # warm-up: first-call costs land on neither side
    for round_to in rounds:
        ours_times, raw_times, ours_cpu, raw_cpu = [], [], [], []
        for _ in range(repeats):  # interleaved, median of each: this machine's load moves both the same way
            c0 = time.process_time()
            result, scope = _prune(copy.deepcopy(base), target, round_to)
            ours_cpu.append(time.process_time() - c0)
            ours_times.append(result.seconds)  # the whole prune_to_target call: graph, importance, search, prune
            # torch-pruning's ratio is per layer, or of all channels under global ranking: the fraction removed
            c0 = time.process_time()
            raw_s, raw_params = _raw_prune(copy.deepcopy(base), result.ratio, round_to, scope == "global")
            raw_cpu.append(time.process_time() - c0)
            raw_times.append(raw_s)
        ours, raw_s = statistics.median(ours_times), statistics.median(raw_times)
        row = {"round_to": round_to, "scope": scope, "params_before": result.params_before,
               "params_after": result.after, "channels_removed": round(result.ratio, 4), "search_s": round(ours, 2),
               "raw_one_prune_s": round(raw_s, 2), "raw_params_at_that_ratio": raw_params,
               "search_over_raw": round(ours / raw_s, 2), "search_cpu_s": round(statistics.median(ours_cpu), 2),
               "raw_one_prune_cpu_s": round(statistics.median(raw_cpu), 2)}
        if naive:
            naive_s, naive_params = _naive_search(base, target, round_to)
            row |= {"naive_bisection_s": round(naive_s, 2), "naive_params": naive_params}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def speed_by_rounding(spec: str, ratio: float, rounds: list[int], seconds: float, repeats: int) -> list[dict]:
    """img/s of student ``spec`` unpruned and with ``ratio`` of each layer's channels removed at each rounding."""
    import students
    from prune import PruneSettings, prune_by_ratio

    torch.manual_seed(0)
    base = students.create(spec)
    models = {"unpruned": base}
    for round_to in rounds:
        pruned = copy.deepcopy(base)
        prune_by_ratio(pruned, ratio, PruneSettings(round_to=round_to))
        models[f"round-to {round_to}"] = pruned
    best: dict[tuple[str, str], dict] = {}
    for _ in range(repeats):  # interleaved rounds, best of each: on a shared machine the least-disturbed run
        for name, model in models.items():
            for fmt in ("channels_last", "contiguous"):
                got = _images_per_s(model, fmt, seconds)
                old = best.setdefault((name, fmt), got)
                for mode in ("train", "infer", "train_cpu", "infer_cpu"):
                    if isinstance(got.get(mode), float) and (not isinstance(old[mode], float) or got[mode] > old[mode]):
                        old[mode] = got[mode]
    rows = []
    for name, model in models.items():
        row = {"model": f"{spec} {name}", "params": students.count_params(model),
               "macs": students.count_macs(model, INPUT),
               "widths": sorted({w for n, w in model.widths.items() if n != "fc"})}
        for fmt in ("channels_last", "contiguous"):
            for mode in ("train", "infer", "train_cpu", "infer_cpu"):
                value = best[(name, fmt)].get(mode, "-")
                unit = "img_per_cpu_s" if mode.endswith("_cpu") else "img_s"
                row[f"{mode.removesuffix('_cpu')}_{unit}_{fmt}"] = round(value) if isinstance(value, float) else value
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target-params", type=int, default=4_900_000)
    p.add_argument("--rounds", default="1,4,8,16", help="comma-separated --round-to values")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per img/s measurement")
    p.add_argument("--skip-naive", action="store_true", help="skip the naive 22-probe bisection (about 50 s)")
    p.add_argument("--skip-speed", action="store_true", help="only the search timing")
    p.add_argument("--skip-search", action="store_true", help="only the img/s by rounding")
    p.add_argument("--speed-spec", default="r3_333_c16-32-64", help="student whose pruned widths are timed")
    p.add_argument("--speed-ratio", type=float, default=0.4, help="per-layer ratio for the img/s comparison")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed searches and raw prunes per rounding (median); img/s rounds (best of)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    rounds = [int(r) for r in args.rounds.split(",")]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    print(json.dumps(env), flush=True)
    result = {"env": env}
    if not args.skip_search:
        result["search"] = search_timing(args.target_params, rounds, not args.skip_naive, args.repeats)
    if not args.skip_speed:
        result["speed"] = speed_by_rounding(args.speed_spec, args.speed_ratio, rounds, args.seconds, args.repeats)
    result["env"]["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
