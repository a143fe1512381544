"""``prune``: structured channel pruning of a trained student to an exact budget, then KD fine-tuning.

    prune runs/run-r4_3323 --target-params 2.5M --finetune-epochs 30 --out runs/pruned
    prune runs/run-r4_3323/best.pt --target-macs 250M --importance taylor --global --round-to 8
    prune runs/run-r4_3323 --ratio 0.5 --sparse-epochs 10 --sparse-reg 5e-4
    prune --resume runs/pruned

The fine-tuning run is an ordinary run directory (``distill eval``, ``distill compare`` and
``distill run --resume`` work on it); ``prune.json`` beside it records what was pruned and how.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

import students
from distill.cli import RichReporter, _NON_CONFIG, _add_train_args, _decode_progress, _summary_table
from distill.config import TrainConfig
from distill.data import DeviceLoader
from distill.engine import CONFIG_FILE, LAST_CKPT, PRUNE_RECORD, atomic_write_json, evaluate, resolve_device
from distill.pipeline import find_checkpoint, load_data, run_training
from students.console import ArgumentParser, cli_entry, console, run as run_main, setup_logging
from students.errors import UserError
from students.sizes import format_count, parse_count

from .core import (
    IMPORTANCES,
    PruneSettings,
    prune_by_ratio,
    prune_to_target,
    recalibrate_bn,
    sparsity_regularizer,
)

PRUNED_CKPT = "pruned.pt"
BN_CALIBRATION_BATCHES = 50


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="prune", description="Prune a trained student's channels to an exact budget.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full warnings")
    p.add_argument("source", nargs="?", help="a run directory (its best.pt) or a student checkpoint")
    target = p.add_argument_group("target (one of)")
    target.add_argument("--target-params", help="parameter budget, e.g. 4.9M, 350k or 4900000")
    target.add_argument("--target-macs", help="MAC budget per image (fvcore count), e.g. 250M")
    target.add_argument("--ratio", type=float, help="fraction of channels to remove, e.g. 0.5")
    how = p.add_argument_group("pruning")
    how.add_argument("--importance", choices=IMPORTANCES, default="l2", help="channel importance (default: l2)")
    how.add_argument("--global", dest="global_pruning", action="store_true",
                     help="rank channels across all layers (default: prune each layer by the same ratio)")
    how.add_argument("--iterative-steps", type=int, default=1, help="reach the target in this many steps")
    how.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this, e.g. 8")
    how.add_argument("--max-layer-ratio", type=float, default=0.9,
                     help="no layer loses more than this fraction of its channels (default: 0.9)")
    how.add_argument("--sparse-epochs", type=int, default=0,
                     help="sparsity-learning epochs before pruning (torch-pruning's regulariser; default: 0)")
    how.add_argument("--sparse-method", choices=("group-norm", "bn-scale"), default="group-norm")
    how.add_argument("--sparse-reg", type=float, default=5e-4, help="sparsity regularisation strength")
    how.add_argument("--finetune-epochs", dest="epochs", type=int, default=argparse.SUPPRESS,
                     help="KD fine-tuning epochs after pruning (default: the source run's epochs)")
    _add_train_args(p, "prune")
    return p


def _load_source(source: str) -> tuple[Path, students.CifarResNet, dict[str, Any], TrainConfig | None]:
    """The source checkpoint path, its student, the checkpoint, and the run's config when there is one."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"SOURCE {source} does not exist; pass a run directory or a student checkpoint")
    ckpt_path = find_checkpoint(path)
    from students.checkpoint import load_file

    ckpt = load_file(ckpt_path)
    arch = ckpt.get("arch", {})
    if arch.get("family") != "student":
        what = arch.get("name") or arch.get("family")
        raise UserError(f"SOURCE {ckpt_path} holds {what!r}, not a student; prune works on student checkpoints")
    model, ckpt = students.load_checkpoint(ckpt_path)
    cfg = None
    run_cfg = ckpt_path.parent / CONFIG_FILE
    if run_cfg.exists():
        cfg = TrainConfig.load(run_cfg)
    elif isinstance(ckpt.get("meta", {}).get("config"), dict):
        cfg = TrainConfig.from_dict(ckpt["meta"]["config"])
    return ckpt_path, model, ckpt, cfg


def _target(args: argparse.Namespace) -> tuple[str, float]:
    given = [(k, v) for k, v in (("params", args.target_params), ("macs", args.target_macs), ("ratio", args.ratio))
             if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --target-params, --target-macs or --ratio")
    kind, value = given[0]
    if kind == "ratio":
        if not 0.0 < value < 1.0:
            raise UserError(f"--ratio must be between 0 and 1 (a fraction of channels), got {value}")
        return kind, float(value)
    return kind, float(parse_count(value, f"--target-{kind}"))


def _finetune_config(args: argparse.Namespace, source_cfg: TrainConfig | None, ckpt_path: Path,
                     model: students.CifarResNet, out: Path) -> TrainConfig:
    """Fine-tuning settings: the source run's, then the flags given here; the teacher is the source's,
    or the unpruned student itself when the source had none."""
    base = source_cfg.to_dict() if source_cfg is not None else {}
    for key in ("recipe", "max_params", "teacher_top1", "init_ckpt"):
        base.pop(key, None)
    given = {k: v for k, v in vars(args).items() if k not in _NON_CONFIG and k not in _PRUNE_ONLY}
    settings = {**base, **given, "kind": "run", "student": model.spec_name, "init_ckpt": str(out / PRUNED_CKPT)}
    if "teacher" not in given and not (source_cfg and source_cfg.teacher):
        settings["teacher"] = model.spec_name  # self-distillation from the unpruned student
        settings["teacher_ckpt"] = str(ckpt_path.resolve())
    elif "teacher" not in given and source_cfg and source_cfg.teacher and not settings.get("teacher_ckpt"):
        settings["teacher_ckpt"] = None  # the teacher store keyed by (model, data, mode) finds it
    if "milestones" in settings:
        settings["milestones"] = tuple(settings["milestones"])
    settings.setdefault("epochs", source_cfg.epochs if source_cfg else 10)
    return TrainConfig(**settings)


_PRUNE_ONLY = {"source", "target_params", "target_macs", "ratio", "importance", "global_pruning", "iterative_steps",
               "round_to", "max_layer_ratio", "sparse_epochs", "sparse_method", "sparse_reg"}


def _cost_table(title: str, before: students.CostReport, after: students.CostReport) -> Table:
    table = Table(title=title)
    for col in ("part", "channels before", "channels after", "params before", "params after", "MACs before",
                "MACs after"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for b, a in zip(before.stages, after.stages):
        table.add_row(b.name, str(b.out_channels or ""), str(a.out_channels or ""), f"{b.num_params:,}",
                      f"{a.num_params:,}", f"{b.macs:,}", f"{a.macs:,}")
    table.add_section()
    table.add_row("total", "", "", f"{before.num_params:,}", f"{after.num_params:,}", f"{before.macs:,}",
                  f"{after.macs:,}")
    return table


def _prune(args: argparse.Namespace) -> int:
    if not args.source:
        raise UserError("pass SOURCE (a run directory or student checkpoint), or --resume RUN_DIR")
    kind, target = _target(args)
    settings = PruneSettings(importance=args.importance, global_pruning=args.global_pruning,
                             iterative_steps=args.iterative_steps, round_to=args.round_to,
                             max_layer_ratio=args.max_layer_ratio)
    if args.sparse_epochs < 0:
        raise UserError(f"--sparse-epochs must not be negative, got {args.sparse_epochs}")
    ckpt_path, model, ckpt, source_cfg = _load_source(args.source)
    out = Path(args.out) if args.out else Path("runs") / f"pruned-{model.spec_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / CONFIG_FILE).exists() or (out / PRUNE_RECORD).exists():
        raise UserError(f"{out} already holds a run; continue it with prune --resume {out} or choose another --out")
    cfg = _finetune_config(args, source_cfg, ckpt_path, model, out)
    input_size = (3, 32, 32)
    if kind != "ratio":
        current = students.count_params(model) if kind == "params" else students.count_macs(model, input_size)
        if target >= current:
            raise UserError(f"--target-{kind} {format_count(target)} is not below the source's {current:,} {kind}; "
                            "choose a smaller target")

    data = load_data(cfg, _decode_progress())
    device = resolve_device(cfg.device)
    test_loader = DeviceLoader(data.test_images, data.test_labels, batch_size=500, mean=data.mean, std=data.std,
                               train=False, device=device)
    train_loader = DeviceLoader(data.train_images, data.train_labels, batch_size=min(cfg.batch_size, 256),
                                mean=data.mean, std=data.std, train=True, device=device, seed=cfg.seed)
    model = model.to(device)
    top1_before = evaluate(model, test_loader, device=device)["top1"]
    console.print(f"source {ckpt_path}: {model.spec_name}, {students.count_params(model):,} params, "
                  f"top-1 {top1_before:.2f}%")

    if args.sparse_epochs:
        model = _sparse_stage(args, cfg, model, out, ckpt_path)
        top1_before_sparse, top1_before = top1_before, evaluate(model, test_loader, device=device)["top1"]
        console.print(f"after {args.sparse_epochs} sparsity epochs: top-1 {top1_before:.2f}% "
                      f"(was {top1_before_sparse:.2f}%)")

    cost_before = students.cost_report(model)
    calib = next(iter(train_loader))

    def grad_fn(net: torch.nn.Module) -> None:  # Taylor importance: gradients of the loss on one batch
        net.train()
        torch.nn.functional.cross_entropy(net(calib[0]), calib[1]).backward()

    torch.manual_seed(cfg.seed)
    if kind == "ratio":
        result = prune_by_ratio(model, target, settings, input_size=input_size, grad_fn=grad_fn)
    else:
        result = prune_to_target(model, kind, target, settings, input_size=input_size, grad_fn=grad_fn)
    model.eval()
    top1_pruned = evaluate(model, test_loader, device=device)["top1"]
    train_loader.set_epoch(0)
    recalibrate_bn(model, (x for i, (x, _) in enumerate(train_loader) if i < BN_CALIBRATION_BATCHES))
    top1_recal = evaluate(model, test_loader, device=device)["top1"]
    cost_after = students.cost_report(model)
    console.print(_cost_table(f"{model.spec_name} pruned ({args.importance}, "
                              f"{'global' if args.global_pruning else 'per-layer'})", cost_before, cost_after))
    if kind != "ratio":
        achieved = result.after
        console.print(f"target {kind}: {target:,.0f}  achieved: {achieved:,} "
                      f"({100.0 * (target - achieved) / target:.2f}% under the target)")
    console.print(f"top-1: before {top1_before:.2f}%  right after pruning {top1_pruned:.2f}%  "
                  f"after BN recalibration {top1_recal:.2f}%")
    record = {
        "source": str(ckpt_path),
        "target": {"kind": kind, "value": target},
        "importance": args.importance,
        "global": args.global_pruning,
        "iterative_steps": args.iterative_steps,
        "round_to": args.round_to,
        "max_layer_ratio": args.max_layer_ratio,
        "sparse_epochs": args.sparse_epochs,
        "ratios": list(result.ratios),
        "params_before": cost_before.num_params,
        "params_after": cost_after.num_params,
        "macs_before": cost_before.macs,
        "macs_after": cost_after.macs,
        "flops_before": cost_before.flops,
        "flops_after": cost_after.flops,
        "top1_before": top1_before,
        "top1_after_prune": top1_pruned,
        "top1_after_bn_recalibration": top1_recal,
        "cost_before": cost_before.to_dict(),
        "cost_after": cost_after.to_dict(),
    }
    if _rank() == 0:  # under torchrun every rank prunes identically; rank 0 writes
        out.mkdir(parents=True, exist_ok=True)  # only now: a target that cannot be met leaves nothing behind
        students.save_checkpoint(out / PRUNED_CKPT, model.cpu(), meta={
            "pruned": True, "data_mean": list(data.mean), "data_std": list(data.std),
            "classes": list(data.classes), "top1": top1_recal})
        atomic_write_json(out / PRUNE_RECORD, record)
    return _finetune(cfg, out, resume=False, stop_after=args.stop_after)


def _sparse_stage(args, cfg: TrainConfig, model, out: Path, ckpt_path: Path):
    """Train with torch-pruning's sparsity regulariser before pruning, as a run of its own in out/sparse."""
    sparse_dir = out / "sparse"
    out.mkdir(parents=True, exist_ok=True)
    start = out / "source.pt"
    students.save_checkpoint(start, model.cpu())
    sparse_cfg = cfg.replace(epochs=args.sparse_epochs, init_ckpt=str(start))
    hook_holder: dict[str, Any] = {}

    def make_hook(net):
        hook_holder.setdefault("hook", sparsity_regularizer(net, args.sparse_method, args.sparse_reg))
        hook_holder["hook"](net)

    with RichReporter("sparse") as reporter:
        run_training(sparse_cfg, sparse_dir, resume=(sparse_dir / LAST_CKPT).exists(), reporter=reporter,
                     after_backward=make_hook)
    sparse_model, _ = students.load_checkpoint(sparse_dir / LAST_CKPT)
    return sparse_model.to(resolve_device(cfg.device))


def _finetune(cfg: TrainConfig | None, out: Path, *, resume: bool, stop_after: int | None) -> int:
    record = json.loads((out / PRUNE_RECORD).read_text())
    with RichReporter("fine-tune") as reporter:
        summary = run_training(cfg or TrainConfig(), out, resume=resume, reporter=reporter, stop_after=stop_after,
                               make_reporter=lambda label: reporter)
    console.print(_summary_table(summary, out))
    console.print(f"top-1: before pruning {record['top1_before']:.2f}%  right after {record['top1_after_prune']:.2f}%"
                  f"  after BN recalibration {record['top1_after_bn_recalibration']:.2f}%  after fine-tuning "
                  f"{summary['top1_last']:.2f}% (EMA {summary['top1_ema'] or float('nan'):.2f}%)")
    return 0


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if _rank() != 0:  # under torchrun only rank 0 prints
        console.quiet = True
    if args.resume:
        out = Path(args.resume)
        if not (out / PRUNE_RECORD).exists():
            raise UserError(f"--resume {out}: not a prune run (no {PRUNE_RECORD})")
        if (out / LAST_CKPT).exists():
            return _finetune(None, out, resume=True, stop_after=args.stop_after)
        if not (out / CONFIG_FILE).exists():
            raise UserError(f"--resume {out}: pruning finished but fine-tuning never started; run prune again")
        cfg = TrainConfig.load(out / CONFIG_FILE)
        (out / CONFIG_FILE).unlink()  # fine-tuning died before its first checkpoint: start it again
        return _finetune(cfg, out, resume=False, stop_after=args.stop_after)
    return _prune(args)


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
