"""``prune``: structured channel pruning of a trained student or timm CNN to an exact budget, then KD fine-tuning.

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
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.cli_common import NON_CONFIG, RichReporter, add_train_args, decode_progress, summary_table
from distill.launch import launch_rank, launch_world_size
from distill.config import MAX_EPOCHS
from students.common.console import ArgumentParser, cli_entry, console, resumable, run as run_main, setup_logging
from students.common.errors import UserError
from students.common.sizes import format_count, parse_count

from .names import IMPORTANCES


def _import_runtime() -> None:
    """torch, the training engine and torch-pruning, imported once the arguments parse (so ``prune --help``
    answers at once); bound as this module's globals, where the functions below use them."""
    import torch
    from rich.table import Table

    import students
    import teachers
    from distill.config import TrainConfig
    from distill.data import DeviceLoader
    from distill.device import resolve_device
    from distill.engine import evaluate
    from distill.pipeline import check_classes, load_data, resolve_teacher, run_training
    from distill.rundir import CONFIG_FILE, LAST_CKPT, PRUNE_RECORD, RunDir, atomic_write_json, find_checkpoint

    from .core import PruneError, PruneResult, PruneSettings, prune_to_target, recalibrate_bn, sparsity_regularizer

    globals().update({name: value for name, value in locals().items()})


PRUNED_CKPT = "pruned.pt"
BN_CALIBRATION_BATCHES = 50
DEFAULT_ROUND_TO = 8  # benchmarks/prune_speed.py: odd widths train ~1.9x slower per image on CPU, crash oneDNN


class _Console:
    """The reporter of a check that prints only when it has something to say."""

    def message(self, text: str) -> None:
        console.print(text)


def _rank() -> int:
    return launch_rank()


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="prune", description="Prune a trained student's (or timm CNN's) channels to an exact "
                                                 "budget.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full warnings")
    p.add_argument("source", nargs="?", help="a run directory (its best.pt) or a checkpoint: a student, or a timm CNN "
                                             "trained by distill teacher")
    target = p.add_argument_group("target (one of)")
    target.add_argument("--target-params", help="parameter budget, e.g. 4.9M, 350k, 4900000, or 50%% of the source's")
    target.add_argument("--target-macs", help="MAC budget per image (fvcore count), e.g. 250M or 50%% of the source's")
    target.add_argument("--ratio", type=float, help="fraction of channels to remove, e.g. 0.5")
    how = p.add_argument_group("pruning")
    how.add_argument("--importance", choices=IMPORTANCES, default="l2", help="channel importance (default: l2)")
    how.add_argument("--global", dest="global_pruning", action="store_true",
                     help="rank channels across all layers (default: prune each layer by the same ratio)")
    how.add_argument("--iterative-steps", type=int, default=1, help="reach the target in this many steps")
    how.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, metavar="N",
                     help=f"keep pruned channel counts multiples of N (default: {DEFAULT_ROUND_TO}; a layer already "
                          "under N stays whole). Rounding costs exactness: fewer sizes can be built, so on a "
                          "small net a budget may have no size within 2%% under it (prune then takes the nearest "
                          "size under it, or with --exact refuses) or be out of reach. --round-to 1 is exact, but at the same --ratio its odd widths "
                          "trained 1.9x slower per image on CPU than widths rounded to 8 "
                          "(benchmarks/prune_speed.py) and "
                          "crash oneDNN in channels-last, so they train in the slower contiguous format there")
    how.add_argument("--exact", action="store_true",
                     help="refuse a budget no size meets within 2%% (default: take the nearest size under it "
                          "and say so)")
    how.add_argument("--max-layer-ratio", type=float, default=0.9,
                     help="no layer loses more than this fraction of its channels (default: 0.9)")
    how.add_argument("--sparse-epochs", type=int, default=0,
                     help="sparsity-learning epochs before pruning (torch-pruning's regulariser; default: 0)")
    how.add_argument("--sparse-method", choices=("group-norm", "bn-scale"), default="group-norm",
                     help="group-norm: DepGraph's group L2 (default); bn-scale: Network Slimming's L1 on BN scales")
    how.add_argument("--sparse-reg", type=float, default=5e-4, help="sparsity regularisation strength")
    how.add_argument("--finetune-epochs", dest="epochs", type=int, default=argparse.SUPPRESS,
                     help="KD fine-tuning epochs after pruning (default: the source run's epochs; 0 prunes only, "
                          "writing pruned.pt and prune.json)")
    add_train_args(p, "prune")
    return p


def _load_source(source: str) -> tuple[Path, torch.nn.Module, dict[str, Any], TrainConfig | None]:
    """The source checkpoint path, its model (a student or a cifar-mode timm model), the checkpoint, and the
    run's config when there is one."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"SOURCE {source} does not exist; pass a run directory or a student or timm checkpoint")
    ckpt_path = find_checkpoint(path)
    model, ckpt = teachers.load_model(ckpt_path)  # refuses a family it cannot rebuild, in one line
    cfg = None
    run_cfg = ckpt_path.parent / CONFIG_FILE
    if run_cfg.exists():
        cfg = TrainConfig.load(run_cfg)
    elif isinstance(ckpt.get("meta", {}).get("config"), dict):
        cfg = TrainConfig.from_dict(ckpt["meta"]["config"])
    return ckpt_path, model, ckpt, cfg


def _model_name(arch: dict[str, Any]) -> str:
    """The name a checkpoint's model goes by: a student's spec, a timm model's name."""
    return str(arch.get("spec") or arch.get("name"))


def _resize_to(arch: dict[str, Any]) -> int | None:
    """The side an upsample-mode timm model sees (its batches are resized on the device), else None."""
    return int(arch["resize_to"]) if arch.get("family") == "timm" and arch.get("resize_to") else None


def _as_trained(model: torch.nn.Module, arch: dict[str, Any]) -> torch.nn.Module:
    """``model`` as it trains and is evaluated: behind the resize of an upsample-mode timm model (sharing its
    parameters, so pruning ``model`` in place prunes this too), else itself."""
    adapter = teachers.arch_adapter(arch)
    return model if adapter is None else torch.nn.Sequential(adapter, model)


def _target(args: argparse.Namespace) -> tuple[str, float, float | None]:
    """The target's kind, its value (a count; 0 until resolved when given as a percentage) and the percentage of
    the source's count it asks for (None for a count or a ratio)."""
    given = [(k, v) for k, v in (("params", args.target_params), ("macs", args.target_macs), ("ratio", args.ratio))
             if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --target-params, --target-macs or --ratio")
    kind, value = given[0]
    if kind == "ratio":
        if not 0.0 < value < 1.0:
            raise UserError(f"--ratio must be between 0 and 1 (a fraction of channels), got {value}")
        return kind, float(value), None
    text = str(value).strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            percent = float("nan")
        if not 0.0 < percent < 100.0:
            raise UserError(f"--target-{kind} {value} is not a percentage between 0 and 100 (exclusive) of the "
                            f"source's {kind}; write e.g. 50%")
        return kind, 0.0, percent
    return kind, float(parse_count(value, f"--target-{kind}")), None


def _finetune_config(args: argparse.Namespace, source_cfg: TrainConfig | None, ckpt_path: Path,
                     arch: dict[str, Any], out: Path) -> TrainConfig:
    """Fine-tuning settings: the source run's, then the flags given here; the teacher is the source's,
    or the unpruned model itself (student or timm) when the source had none."""
    base = source_cfg.to_dict() if source_cfg is not None else {}
    for key in ("recipe", "max_params", "teacher_top1", "init_ckpt"):
        base.pop(key, None)
    given = {k: v for k, v in vars(args).items() if k not in NON_CONFIG and k not in _PRUNE_ONLY}
    name = _model_name(arch)
    settings = {**base, **given, "kind": "run", "student": name, "init_ckpt": str(out / PRUNED_CKPT)}
    # A source distilled from a teacher (`distill run --teacher`) keeps that teacher. Any other source (a
    # `distill teacher` run, a run without a teacher, a bare checkpoint) has no teacher of its own: the unpruned
    # model itself teaches its pruned copy. prune never trains a teacher, so never writes the teacher store.
    had_teacher = source_cfg is not None and source_cfg.uses_teacher
    if "teacher" not in given and not had_teacher:
        settings.update(teacher=name, teacher_ckpt=str(ckpt_path.resolve()), teacher_mode=arch.get("mode"),
                        teacher_pretrained=False, teacher_weights=None)
    elif "teacher" not in given and not settings.get("teacher_ckpt"):
        settings["teacher_ckpt"] = _source_teacher_ckpt(ckpt_path)  # None: looked up in the store, read-only
    if "milestones" in settings:
        settings["milestones"] = tuple(settings["milestones"])
    settings.setdefault("epochs", source_cfg.epochs if source_cfg else 10)
    return TrainConfig(**settings)


def _source_teacher_ckpt(ckpt_path: Path) -> str | None:
    """The teacher checkpoint the source run distilled from, as its summary recorded it (``teacher_ckpt``;
    runs before it was recorded name the store folder in ``teacher_source``); None when unknown."""
    try:
        summary = json.loads((ckpt_path.parent / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    recorded = summary.get("teacher_ckpt")
    if not isinstance(recorded, str):
        match = re.search(r"stored teacher (.+)$", str(summary.get("teacher_source") or ""))
        recorded = str(Path(match.group(1)) / "best.pt") if match else None
    return recorded if recorded and Path(recorded).is_file() else None


_PRUNE_ONLY = {"source", "target_params", "target_macs", "ratio", "importance", "global_pruning", "iterative_steps",
               "round_to", "max_layer_ratio", "exact", "sparse_epochs", "sparse_method", "sparse_reg"}


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


def _as_given(args: argparse.Namespace, kind: str) -> Any:
    """The target as the user wrote it (``50%``, ``4.9M``, ``0.5``)."""
    return {"params": args.target_params, "macs": args.target_macs, "ratio": args.ratio}[kind]


def _flag_names(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """How the library's argument names read on this command line (PruneError.render)."""
    return {
        "target": lambda v: f"--target-{kind} {_as_given(args, kind)}",
        "ratio": lambda v: f"--ratio {v}",
        "round_to": lambda v: f"--round-to {v}",
        "max_layer_ratio": lambda v: f"--max-layer-ratio {v}",
        "global_pruning": lambda v: "--global",
        "working": lambda v: f"--target-{kind} {v}",
        "exact": lambda v: "--exact",
        "iterative_steps": lambda v: f"--iterative-steps {v}",
        "importance": lambda v: f"--importance {v}",
    }


class _PruneProgress:
    """Draws the library's ``progress(phase, done, total)`` calls as transient rich progress bars."""

    LABELS = {"importance": "scoring channels", "search": "searching the budget"}

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(self.LABELS.get(phase, phase), total=total)
        self.progress.update(self.tasks[phase], completed=done, total=max(total, done))

    def __enter__(self) -> _PruneProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _run_pruning(args: argparse.Namespace, kind: str, target: float, model: torch.nn.Module, calib,
                 input_size: tuple[int, int, int]) -> PruneResult:
    """Prune ``model`` in place as the flags ask, with progress; library errors reworded as flags."""
    names = _flag_names(args, kind)

    def grad_fn(net: torch.nn.Module) -> None:  # Taylor importance: gradients of the loss on one batch
        net.train()
        torch.nn.functional.cross_entropy(net(calib[0]), calib[1]).backward()

    try:
        settings = PruneSettings(importance=args.importance, global_pruning=args.global_pruning,
                                 iterative_steps=args.iterative_steps, round_to=args.round_to,
                                 max_layer_ratio=args.max_layer_ratio, exact=args.exact)
        with _PruneProgress() as progress:
            return prune_to_target(model, kind, target, settings, input_size=input_size, grad_fn=grad_fn,
                                   progress=progress)
    except PruneError as err:
        raise UserError(err.render(names)) from None


def _check_args(args: argparse.Namespace) -> tuple[str, float, float | None]:
    """Everything that can be refused before the source is read (nothing is written before this passes)."""
    if not args.source:
        raise UserError("pass SOURCE (a run directory, or a student or timm checkpoint), or --resume RUN_DIR")
    kind, target, percent = _target(args)
    try:
        PruneSettings(importance=args.importance, global_pruning=args.global_pruning,
                      iterative_steps=args.iterative_steps, round_to=args.round_to,
                      max_layer_ratio=args.max_layer_ratio, exact=args.exact)
    except PruneError as err:
        raise UserError(err.render(_flag_names(args, kind))) from None
    if not 0 <= args.sparse_epochs <= MAX_EPOCHS:
        raise UserError(f"--sparse-epochs {args.sparse_epochs} is out of range; use 0..{MAX_EPOCHS}")
    if not (math.isfinite(args.sparse_reg) and 0.0 <= args.sparse_reg <= 1.0):
        raise UserError(f"--sparse-reg {args.sparse_reg} is not a regularisation strength; use 0..1 (5e-4 is usual)")
    return kind, target, percent


def _prune(args: argparse.Namespace) -> int:
    kind, target, percent = _check_args(args)
    prune_only = getattr(args, "epochs", None) == 0
    if prune_only:
        del args.epochs  # the source's settings still choose the data and the seed
    ckpt_path, model, ckpt, source_cfg = _load_source(args.source)
    name = _model_name(ckpt["arch"])
    out = Path(args.out) if args.out else Path("runs") / f"pruned-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / CONFIG_FILE).exists() or (out / PRUNE_RECORD).exists():
        raise UserError(f"{out} already holds a run; continue it with prune --resume {out} or choose another --out")
    arch = ckpt["arch"]
    cfg = _finetune_config(args, source_cfg, ckpt_path, arch, out)
    input_size = (3, _resize_to(arch) or cfg.image_size, _resize_to(arch) or cfg.image_size)  # what the model sees
    if kind != "ratio":
        current = students.count_params(model) if kind == "params" else students.count_macs(model, input_size)
        if percent is not None:
            target = float(int(current * percent / 100.0))  # the budget: at most this share of the source's count
        if target >= current:
            raise UserError(f"--target-{kind} {format_count(target)} is not below the source's {current:,} {kind}; "
                            "choose a smaller target")

    device = resolve_device(cfg.device)
    from distill import dist

    dist.setup(device.type)  # under torchrun: join the group first, so that rank 0's writes can be waited for
    data = load_data(cfg, decode_progress())
    check_classes(ckpt, data.classes, f"SOURCE {ckpt_path}")
    if not prune_only and cfg.uses_teacher:  # the fine-tuning's teacher, checked before anything is written
        resolve_teacher(cfg, data, _Console(), may_train=False)
    test_loader = DeviceLoader(data.test_images, data.test_labels, batch_size=500, mean=data.mean, std=data.std,
                               train=False, device=device)
    train_loader = DeviceLoader(data.train_images, data.train_labels, batch_size=min(cfg.batch_size, 256),
                                mean=data.mean, std=data.std, train=True, device=device, seed=cfg.seed)
    model = model.to(device)
    top1 = {"before": evaluate(_as_trained(model, arch), test_loader, device=device)["top1"]}
    console.print(f"source {ckpt_path}: {name}, {students.count_params(model):,} params, "
                  f"top-1 {top1['before']:.2f}%")
    if args.sparse_epochs:
        model = _sparse_stage(args, cfg, model, out, arch)
        top1_before_sparse = top1["before"]
        top1["before"] = evaluate(_as_trained(model, arch), test_loader, device=device)["top1"]
        console.print(f"after {args.sparse_epochs} sparsity epochs: top-1 {top1['before']:.2f}% "
                      f"(was {top1_before_sparse:.2f}%)")

    cost_before = students.cost_report(model, input_size)
    torch.manual_seed(cfg.seed)
    images, labels = next(iter(train_loader))
    with torch.no_grad():  # Taylor importance's batch, as the model sees it
        images = _as_trained(torch.nn.Identity(), arch)(images)
    result = _run_pruning(args, kind, target, model, (images, labels), input_size)
    teachers.sync_head_width(model)  # num_features / head_hidden_size of a timm model: the pruned widths
    model.eval()
    top1.update(_recalibrate(_as_trained(model, arch), train_loader, test_loader, device))
    cost_after = students.cost_report(model, input_size)
    _report(args, kind, target, result, cost_before, cost_after, top1, name)
    record = _record(args, ckpt_path, kind, target, result, cost_before, cost_after, top1, prune_only)
    if not prune_only:  # prune --resume starts fine-tuning from these when a kill came before it began
        record["finetune_config"] = cfg.to_dict()
    pruned_arch = _pruned_arch(model, arch)  # before anything is written
    if _rank() == 0:  # under torchrun every rank prunes identically; rank 0 writes
        out.mkdir(parents=True, exist_ok=True)  # only now: a target that cannot be met leaves nothing behind
        students.save_checkpoint(out / PRUNED_CKPT, model.cpu(), arch=pruned_arch, meta={
            "pruned": True, "data_mean": list(data.mean), "data_std": list(data.std),
            "classes": list(data.classes), "top1": top1["after_bn_recalibration"]})
        atomic_write_json(out / PRUNE_RECORD, record)
    dist.barrier()  # no rank reads pruned.pt or prune.json (fine-tuning) before rank 0 has written them
    if prune_only:
        console.print(f"pruned only (--finetune-epochs 0): {out / PRUNED_CKPT} and {out / PRUNE_RECORD} written")
        return 0
    return _finetune(cfg, out, resume=False, stop_after=args.stop_after)


def _recalibrate(net: torch.nn.Module, train_loader, test_loader, device) -> dict[str, float]:
    """Top-1 of the pruned ``net`` right after pruning, then after recalibrating its BatchNorm statistics."""
    top1 = {"after_prune": evaluate(net, test_loader, device=device)["top1"]}
    train_loader.set_epoch(0)
    recalibrate_bn(net, (x for i, (x, _) in enumerate(train_loader) if i < BN_CALIBRATION_BATCHES))
    top1["after_bn_recalibration"] = evaluate(net, test_loader, device=device)["top1"]
    return top1


def _pruned_arch(model: torch.nn.Module, source_arch: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint architecture of the pruned model; a timm model whose pruning touched a layer that cannot
    be rebuilt from recorded widths (a ViT's tokens, ConvNeXt's layer scale) is refused in one line."""
    try:
        return teachers.pruned_arch(model, source_arch)
    except teachers.PrunedModelError as err:
        raise UserError(f"{err.reason}; prune supports students and timm CNNs built of those layers, and wrote "
                        "nothing") from None


def _report(args, kind: str, target: float, result: PruneResult, cost_before, cost_after, top1: dict,
            name: str) -> None:
    console.print(_cost_table(f"{name} pruned ({args.importance}, "
                              f"{'global' if args.global_pruning else 'per-layer'}, round-to {args.round_to})",
                              cost_before, cost_after))
    if kind != "ratio":
        console.print(f"target {kind}: {_as_given(args, kind)} ({target:,.0f})  achieved: {result.after:,} "
                      f"({100.0 * (target - result.after) / target:.2f}% under the target)")
        measured = _measured(kind, cost_after)
        if result.note:
            note = result.note_message.render(_flag_names(args, kind)) if result.note_message else result.note
            console.print(f"[yellow]note: {note}; --exact refuses such a budget instead[/]", soft_wrap=True)
        if _missed(target, measured) and not (result.note and measured == result.after):
            console.print(f"[yellow]warning: target missed: fvcore counts {measured:,} {kind} after pruning, "
                          f"{100.0 * (target - measured) / target:+.2f}% against the target (the search's own count "
                          f"was {result.after:,}); prune.json records the miss[/]")
    console.print(f"pruning took {result.seconds:.1f} s and removed {100 * result.ratio:.1f}% of the prunable "
                  "channels")
    console.print(f"top-1: before {top1['before']:.2f}%  right after pruning {top1['after_prune']:.2f}%  "
                  f"after BN recalibration {top1['after_bn_recalibration']:.2f}%")


TARGET_TOLERANCE = 0.02  # a budget is met when the re-measured count is at most the target and within 2% of it


def _measured(kind: str, cost: Any) -> int:
    """The pruned model's own count of ``kind`` (fvcore), independent of the search's analytic one."""
    return int(cost.macs if kind == "macs" else cost.num_params)


def _missed(target: float, measured: int) -> bool:
    return measured > target or (target - measured) / target > TARGET_TOLERANCE


def _record(args, ckpt_path: Path, kind: str, target: float, result: PruneResult, cost_before, cost_after,
            top1: dict, prune_only: bool) -> dict[str, Any]:
    """What prune.json keeps (the fine-tuning run's summary.json embeds it as ``pruned``)."""
    measured = None if kind == "ratio" else _measured(kind, cost_after)
    return {
        "source": str(ckpt_path),
        "target": {"kind": kind, "value": target, "as_given": _as_given(args, kind), "measured": measured,
                   "missed": None if measured is None else _missed(target, measured)},
        "importance": args.importance,
        "global": args.global_pruning,
        "iterative_steps": args.iterative_steps,
        "round_to": args.round_to,
        "max_layer_ratio": args.max_layer_ratio,
        "exact": args.exact,
        "note": result.note_message.render(_flag_names(args, kind)) if result.note_message else result.note,
        "sparse_epochs": args.sparse_epochs,
        "prune_only": prune_only,
        "prune_seconds": round(result.seconds, 3),  # wall time of the search and the pruning itself
        "ratios": list(result.ratios),
        "channels_removed": result.ratio,
        "channels": {name: {"kept": kept, "before": n0} for name, (kept, n0) in result.channels.items()},
        "params_before": cost_before.num_params,
        "params_after": cost_after.num_params,
        "macs_before": cost_before.macs,
        "macs_after": cost_after.macs,
        "flops_before": cost_before.flops,
        "flops_after": cost_after.flops,
        "top1_before": top1["before"],
        "top1_after_prune": top1["after_prune"],
        "top1_after_bn_recalibration": top1["after_bn_recalibration"],
        "cost_before": cost_before.to_dict(),
        "cost_after": cost_after.to_dict(),
    }


def _sparse_stage(args, cfg: TrainConfig, model, out: Path, source_arch: dict[str, Any]):
    """Train with torch-pruning's sparsity regulariser before pruning, as a run of its own in out/sparse."""
    sparse_dir = out / "sparse"
    start = out / "source.pt"
    arch = _pruned_arch(model, source_arch)
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        students.save_checkpoint(start, model.cpu(), arch=arch)
    from distill import dist

    dist.barrier()  # every rank starts the sparse run from the file rank 0 wrote
    sparse_cfg = cfg.replace(epochs=args.sparse_epochs, init_ckpt=str(start))
    hook_holder: dict[str, Any] = {}

    def make_hook(net):  # the regulariser's dependency graph is built once, on the first step's model
        if "hook" not in hook_holder:
            hook_holder["hook"] = sparsity_regularizer(net, args.sparse_method, args.sparse_reg)
        hook_holder["hook"](net)

    with RichReporter("sparse") as reporter:
        run_training(sparse_cfg, sparse_dir, resume=(sparse_dir / LAST_CKPT).exists(), reporter=reporter,
                     after_backward=make_hook, may_train_teacher=False)
    sparse_model, _ = teachers.load_model(sparse_dir / LAST_CKPT)
    return sparse_model.to(resolve_device(cfg.device))


def _finetune(cfg: TrainConfig | None, out: Path, *, resume: bool, stop_after: int | None) -> int:
    record = json.loads((out / PRUNE_RECORD).read_text())
    with resumable(f"prune --resume {out}", sigterm=launch_world_size() == 1), RichReporter("fine-tune") as reporter:
        summary = run_training(cfg or TrainConfig(), out, resume=resume, reporter=reporter, stop_after=stop_after,
                               make_reporter=reporter.for_run, may_train_teacher=False)
    console.print(summary_table(summary, out))
    def pct(value: float | None) -> str:  # no epoch finished yet (--stop-after 0): no top-1 to show
        return "-" if value is None else f"{value:.2f}%"

    console.print(f"top-1: before pruning {pct(record['top1_before'])}  right after {pct(record['top1_after_prune'])}"
                  f"  after BN recalibration {pct(record['top1_after_bn_recalibration'])}  after fine-tuning "
                  f"{pct(summary.get('top1_last'))} (EMA {pct(summary.get('top1_ema'))})"
                  f"  pruning took {record.get('prune_seconds', float('nan')):.1f} s")
    return 0


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _import_runtime()
    setup_logging(args.verbose)
    if _rank() != 0:  # under torchrun only rank 0 prints
        console.quiet = True
    if args.resume:
        out = Path(args.resume)
        if not (out / PRUNE_RECORD).exists():
            raise UserError(f"--resume {out}: not a prune run (no {PRUNE_RECORD})")
        if (out / LAST_CKPT).exists() or (out / CONFIG_FILE).exists():
            # Fine-tuning began: it continues, or starts again when it never reached its first checkpoint.
            return _finetune(None, out, resume=True, stop_after=args.stop_after)
        return _finetune(_never_started(out), out, resume=False, stop_after=args.stop_after)
    return _prune(args)


def _never_started(out: Path) -> TrainConfig:
    """The fine-tuning settings prune.json recorded, for a run killed after pruning and before fine-tuning."""
    record = RunDir(out).prune_record(full=True) or {}
    if record.get("prune_only"):
        raise UserError(f"--resume {out}: pruned only (--finetune-epochs 0), nothing to resume; the pruned "
                        f"model is {out / PRUNED_CKPT}")
    settings = record.get("finetune_config")
    if not isinstance(settings, dict):
        raise UserError(f"--resume {out}: pruning finished but fine-tuning never started, and this {PRUNE_RECORD} "
                        "(from an older version) does not hold its settings; prune again into another --out")
    return TrainConfig.from_dict(settings)


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
