"""``distill``: train teachers, distill students, evaluate, compare and export checkpoints.

    distill teacher --teacher resnet50 --data cifar10 --epochs 200 --out runs/t-resnet50
    distill run --teacher resnet50 --student r4_3323 [--teacher-ckpt runs/t-resnet50] [--recipe seed000]
    distill run --resume runs/run-r4_3323-...
    distill eval runs/run-r4_3323-.../best.pt --data cifar10 [--report reports/r4_3323]
    distill compare runs/* [--sort top1] [--budget 5M] [--csv runs.csv] [--markdown runs.md] [--plot runs.png]
    distill export runs/run-r4_3323-... --onnx r4_3323.onnx [--torchscript r4_3323.ts] [--latency]
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from students.console import ArgumentParser, cli_entry, console, run as run_main, setup_logging
from students.errors import UserError
from students.sizes import format_count, parse_count

from .config import DEVICES, KD_LOSS_NAMES, OPTIMIZERS, SCHEDULES, TEACHER_MODES, TrainConfig
from .recipes import RECIPES, recipe_overrides

_DEFAULTS = TrainConfig()


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    return f" (default: {value})"


def _add_train_args(p: argparse.ArgumentParser, kind: str) -> None:
    S = argparse.SUPPRESS  # only flags the user gives override the recipe and the defaults
    model = p.add_argument_group("models")
    model.add_argument("--teacher", default=S, help="timm model name or student spec/preset")
    model.add_argument("--teacher-mode", choices=TEACHER_MODES, default=S,
                       help="cifar: stem adapted to 32x32 (default for CNNs); upsample: native resolution")
    model.add_argument("--teacher-pretrained", action="store_true", default=S,
                       help="start from timm's pretrained weights (needs network, or --teacher-weights)")
    model.add_argument("--teacher-weights", default=S, help="local pretrained state dict for the teacher")
    if kind in ("run", "prune"):  # prune: the fine-tuning run's settings (its student comes from SOURCE)
        model.add_argument("--teacher-ckpt", default=S, help="teacher checkpoint file or run directory")
    if kind == "run":
        model.add_argument("--student", default=S, help="student spec or preset" + _default("student"))
        model.add_argument("--max-params", default=S, help="fail if the student is bigger, e.g. 5M")
        model.add_argument("--recipe", choices=sorted(RECIPES), default=S,
                           help="a seed report's recipe and student; other flags override it")
    if kind in ("run", "prune"):
        kd = p.add_argument_group("distillation")
        kd.add_argument("--kd-loss", choices=KD_LOSS_NAMES, default=S, help="logit distillation loss" + _default("kd_loss"))
        kd.add_argument("--temperature", type=float, default=S,
                        help="softmax temperature T (default: the loss's own: kd 4, dkd 4, dist 1)")
        kd.add_argument("--alpha", type=float, default=S,
                        help="weight of the distillation term; cross-entropy gets 1 - alpha "
                             "(default: the loss's own: kd 0.9; dkd and dist weigh CE 1 + KD 1)")
    data = p.add_argument_group("data")
    data.add_argument("--data", default=S, help="cifar10, cifar100, an ImageFolder tree, a cifar-10-batches-py "
                      "folder or a .tar.gz of an ImageFolder tree" + _default("data"))
    data.add_argument("--train-subset", type=int, default=S, help="use this many training images (class-balanced)")
    data.add_argument("--test-subset", type=int, default=S, help="use this many test images")
    data.add_argument("--val-split", type=int, default=S, help="carve this many validation images out of train")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=S, help=_default("epochs").strip(" ()"))
    opt.add_argument("--batch-size", type=int, default=S, help="images per step" + _default("batch_size"))
    opt.add_argument("--lr", type=float, default=S, help="peak learning rate" + _default("lr"))
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help=_default("optimizer").strip(" ()"))
    opt.add_argument("--momentum", type=float, default=S, help=_default("momentum").strip(" ()"))
    opt.add_argument("--no-nesterov", dest="nesterov", action="store_false", default=S, help="plain momentum SGD")
    opt.add_argument("--weight-decay", type=float, default=S, help=_default("weight_decay").strip(" ()"))
    opt.add_argument("--decay-norm-and-bias", action="store_true", default=S,
                     help="also decay BatchNorm parameters and biases (off by default)")
    opt.add_argument("--schedule", choices=SCHEDULES, default=S, help=_default("schedule").strip(" ()"))
    opt.add_argument("--warmup-epochs", type=float, default=S, help=_default("warmup_epochs").strip(" ()"))
    opt.add_argument("--sgdr-t0", type=int, default=S, help="epochs of the first SGDR cycle" + _default("sgdr_t0"))
    opt.add_argument("--sgdr-mult", type=int, default=S, help="SGDR cycle growth" + _default("sgdr_mult"))
    opt.add_argument("--milestones", default=S,
                     help="multistep: comma-separated epochs, or fractions of the run (default: 0.5,0.75)")
    opt.add_argument("--gamma", type=float, default=S, help="multistep decay factor" + _default("gamma"))
    aug = p.add_argument_group("augmentation")
    aug.add_argument("--label-smoothing", type=float, default=S, help=_default("label_smoothing").strip(" ()"))
    aug.add_argument("--mixup", type=float, default=S, help="MixUp Beta alpha, 0 = off" + _default("mixup"))
    aug.add_argument("--cutmix", type=float, default=S, help="CutMix Beta alpha, 0 = off" + _default("cutmix"))
    aug.add_argument("--mix-prob", type=float, default=S, help="probability a batch is mixed" + _default("mix_prob"))
    aug.add_argument("--cutout", type=int, default=S, help="cutout square side in pixels, 0 = off")
    aug.add_argument("--crop-padding", type=int, default=S, help="random-crop padding in pixels" + _default("crop_padding"))
    aug.add_argument("--no-flip", dest="flip", action="store_false", default=S, help="no horizontal flips")
    run = p.add_argument_group("run")
    run.add_argument("--ema", dest="ema", action="store_true", default=S, help="keep an EMA of the weights (default)")
    run.add_argument("--no-ema", dest="ema", action="store_false", default=S, help="no EMA")
    run.add_argument("--ema-decay", type=float, default=S, help=_default("ema_decay").strip(" ()"))
    run.add_argument("--no-tta", dest="tta", action="store_false", default=S, help="skip the flip-TTA evaluation")
    run.add_argument("--device", choices=DEVICES, default=S, help=_default("device").strip(" ()"))
    run.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no bf16 autocast on CUDA")
    run.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=S)
    run.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    run.add_argument("--seed", type=int, default=S, help=_default("seed").strip(" ()"))
    run.add_argument("--eval-every", type=int, default=S, help="evaluate every N epochs (and at the end)")
    run.add_argument("--out", default=None, help="run directory (default: runs/<kind>-<model>-<time>)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run exactly")
    run.add_argument("--stop-after", type=int, default=None, metavar="N",
                     help="stop after N epochs in this invocation (resumable), e.g. for time-limited jobs")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="distill", description="Knowledge distillation of small image classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full warnings")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(sub.add_parser("run", help="distill a student from a teacher (or train it alone)"), "run")
    _add_train_args(sub.add_parser("teacher", help="train a teacher with the same engine"), "teacher")
    ev = sub.add_parser("eval", help="top-1 and per-class precision/recall of a checkpoint")
    ev.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses best.pt)")
    ev.add_argument("--data", default="cifar10", help="data to evaluate on (its test split)")
    ev.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test images")
    ev.add_argument("--batch-size", type=int, default=500)
    ev.add_argument("--device", choices=DEVICES, default="auto")
    ev.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    ev.add_argument("--report", default=None, metavar="DIR",
                    help="write per_class.csv, confusion.png and misclassified.png into DIR")
    cmp = sub.add_parser("compare", help="one table row per run: size, top-1, KD settings, speed, latency")
    cmp.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories, e.g. runs/*")
    cmp.add_argument("--sort", default=None, metavar="COLUMN",
                     help="order by this column, best first (e.g. top1, params, macs, latency_ms)")
    cmp.add_argument("--budget", default=None, help="mark runs within this many parameters, e.g. 5M")
    cmp.add_argument("--csv", default=None, metavar="FILE", help="also write the rows as CSV (raw numbers)")
    cmp.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as Markdown")
    cmp.add_argument("--plot", default=None, metavar="FILE.png",
                     help="top-1 against params and MACs, with the Pareto front")
    ex = sub.add_parser("export", help="ONNX / TorchScript export with a parity check, and latency")
    ex.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses best.pt)")
    ex.add_argument("--onnx", default=None, metavar="FILE", help="write an ONNX model (dynamic batch axis)")
    ex.add_argument("--torchscript", default=None, metavar="FILE", help="write a traced TorchScript model")
    ex.add_argument("--latency", action="store_true",
                    help="median batch-1 and batch-256 latency on the CPU (and CUDA when used); recorded "
                         "in the run's summary.json")
    ex.add_argument("--device", choices=DEVICES, default="auto",
                    help="auto: CPU, plus CUDA when present; cpu: CPU only; cuda: CPU and CUDA")
    ex.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the latency measurement (default: torch's, one per core)")
    return parser


_NON_CONFIG = {"command", "verbose", "out", "resume", "stop_after"}


def _config_from_args(args: argparse.Namespace, kind: str) -> TrainConfig:
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NON_CONFIG}
    settings: dict[str, Any] = {"kind": kind}
    if "recipe" in given:
        settings.update(recipe_overrides(given.pop("recipe")))
    if "max_params" in given:
        given["max_params"] = parse_count(given["max_params"], "--max-params")
    if "milestones" in given:
        try:
            given["milestones"] = tuple(float(m) for m in str(given["milestones"]).split(","))
        except ValueError:
            raise UserError(f"--milestones {given['milestones']!r}: write comma-separated numbers, e.g. 100,150") from None
    settings.update(given)
    if kind == "run" and "teacher" not in settings:
        settings["teacher"] = None
    return TrainConfig(**settings)


class RichReporter:
    """Draws the engine's progress: an epoch bar, a step bar with live loss, accuracy and images/s."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.epoch_task = None
        self.step_task = None

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.epoch_task is None:
            self.epoch_task = self.progress.add_task(f"{self.label} epochs", total=epochs, completed=epoch - 1, info="")
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
        self.step_task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, info="")

    def step(self, step: int, metrics: dict[str, float]) -> None:
        info = (f"loss {metrics['loss']:.3f}  acc {metrics['acc']:.1f}%  {metrics['img_s']:,.0f} img/s  "
                f"lr {metrics['lr']:.3g}")
        self.progress.update(self.step_task, completed=step, info=info)

    def end_epoch(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.3f}", f"train {record['train_top1']:.1f}%"]
        if "test_top1" in record:
            parts.append(f"test {record['test_top1']:.2f}%")
        if "ema_top1" in record:
            parts.append(f"ema {record['ema_top1']:.2f}%")
        parts += [f"{record['train_img_s']:,.0f} img/s", f"{record['seconds']:.1f} s"]
        self.progress.console.print("  ".join(parts))
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
            self.step_task = None
        self.progress.update(self.epoch_task, completed=record["epoch"],
                             info=f"test {record.get('test_top1', float('nan')):.2f}%")


def _decode_progress():
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "progress" not in state:
            state["progress"] = Progress(TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(),
                                         TimeElapsedColumn(), console=console, transient=True)
            state["progress"].start()
            state["task"] = state["progress"].add_task("decode", total=total)
        state["progress"].update(state["task"], completed=done)
        if done >= total:
            state.pop("progress").stop()

    return update


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def _summary_table(summary: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{summary['kind']} {summary['model']}: {run_dir}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("params", f"{summary['num_params']:,}"),
        ("MACs / FLOPs per image", f"{format_count(summary['macs'])} / {format_count(summary['flops'])}"),
        ("top-1 last / best", f"{_fmt(summary['top1_last'], '%')} / {_fmt(summary['top1_best'], '%')}"),
        ("top-1 EMA / flip-TTA", f"{_fmt(summary['top1_ema'], '%')} / {_fmt(summary['top1_tta'], '%')}"),
        ("measured on", summary["eval_set"]),
    ]
    if summary.get("teacher"):
        rows.append(("teacher", f"{summary['teacher']} ({_fmt(summary['teacher_top1'], '%')} top-1)"))
        kd = summary["kd"]
        rows.append(("distillation", f"{kd['loss']}, T={kd['temperature']}, alpha={kd['alpha']}"))
    rows += [
        ("epochs", f"{summary['epochs_done']}/{summary['epochs']}" + ("" if summary["complete"] else " (incomplete)")),
        ("train speed", f"{_fmt(summary['train_img_s'])} images/s (median epoch)"),
        ("wall time", f"{summary['wall_s']:.1f} s"),
        ("device", summary["device"]),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


def _train(args: argparse.Namespace, kind: str) -> int:
    from .pipeline import run_training

    if args.resume:
        ignored = sorted(k for k, v in vars(args).items() if k not in _NON_CONFIG and k not in ("epochs", "device"))
        if ignored:
            console.print(f"[yellow]--resume uses the run's saved settings; ignoring {', '.join(ignored)}[/]")
        run_dir = Path(args.resume)
        cfg = None
    else:
        cfg = _config_from_args(args, kind)
        run_dir = Path(args.out) if args.out else Path("runs") / f"{kind}-{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with RichReporter(kind) as reporter:
        summary = run_training(
            cfg if cfg is not None else TrainConfig(), run_dir, resume=bool(args.resume), reporter=reporter,
            progress=_decode_progress(), stop_after=args.stop_after, make_reporter=lambda label: reporter,
            epochs_override=getattr(args, "epochs", None) if args.resume else None,
        )
    console.print(_summary_table(summary, run_dir))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import teachers

    from . import report
    from .data import DeviceLoader, load_dataset
    from .engine import predict, resolve_device
    from .pipeline import find_checkpoint

    report_dir = _report_dir(args.report)
    path = find_checkpoint(args.checkpoint)
    model, ckpt = teachers.load_model(path)
    data = load_dataset(args.data, download=True, progress=_decode_progress())
    if args.test_subset:
        data = data.subset(test=args.test_subset)
    num_classes = int(ckpt["arch"].get("num_classes", -1))
    if num_classes != data.num_classes:
        raise UserError(f"{path} predicts {num_classes} classes but {args.data} has {data.num_classes}")
    meta = ckpt.get("meta", {})
    mean, std = tuple(meta.get("data_mean", data.mean)), tuple(meta.get("data_std", data.std))
    device = resolve_device(args.device)
    if ckpt["arch"].get("family") == "timm" and ckpt["arch"].get("mode") == "upsample":
        model = teachers.FrozenTeacher(model, student_mean=mean, student_std=std, teacher_mean=mean,
                                       teacher_std=std, resize_to=int(ckpt["arch"].get("resize_to") or 224))
    loader = DeviceLoader(data.test_images, data.test_labels, batch_size=args.batch_size, mean=mean, std=std,
                          train=False, device=device)
    logits, labels = predict(model.to(device), loader, device=device, tta=args.tta)
    preds = logits.argmax(1)
    top1 = 100.0 * (preds == labels).float().mean().item()
    confusion = report.confusion_matrix(preds, labels, num_classes)
    metrics = report.per_class_metrics(confusion, data.classes)
    table = Table(title=f"{path} on {data.source}: top-1 {top1:.2f}% ({labels.numel():,} images"
                        f"{', flip-TTA' if args.tta else ''})")
    for col in ("class", "images", "precision %", "recall %", "F1 %"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for m in metrics:
        table.add_row(m["class"], f"{m['images']:,}", _fmt(m["precision_pct"]), _fmt(m["recall_pct"]),
                      _fmt(m["f1_pct"]))
    console.print(table)
    console.print(f"top-1: {top1:.2f}%")
    if report_dir is not None:
        try:
            report_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--report {report_dir}: cannot create it ({err.strerror})") from None
        report.per_class_csv(metrics, report_dir / "per_class.csv")
        report.plot_confusion(confusion, data.classes, report_dir / "confusion.png",
                              title=f"{path}: top-1 {top1:.2f}% on {labels.numel():,} images")
        shown = report.plot_misclassified(data.test_images, labels, preds, data.classes,
                                          report_dir / "misclassified.png")
        console.print(f"report: {report_dir}/per_class.csv, confusion.png, misclassified.png "
                      f"({shown} of {int((preds != labels).sum()):,} misclassified images shown)", soft_wrap=True)
    return 0


def _check_writable(path: str | Path, flag: str) -> Path:
    """Fail before any work when an output file cannot be written: one line naming the flag."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: folder {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{flag} {path} is not writable; choose another path")
    return path


def _report_dir(value: str | None) -> Path | None:
    """Check before any work that ``--report DIR`` can be created (it is created only when writing)."""
    if value is None:
        return None
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise UserError(f"--report {path} is a file; give a directory to write the report into")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"--report {path}: cannot write into {existing}; choose another directory")
    return path


def _expand_runs(args: Sequence[str]) -> list[Path]:
    """The run paths in the order given, without repeats; patterns the shell did not expand are globbed here."""
    seen: dict[str, Path] = {}
    for arg in args:
        matches = sorted(glob.glob(arg)) if any(c in arg for c in "*?[") and not os.path.exists(arg) else [arg]
        for match in matches or [arg]:
            seen.setdefault(os.path.realpath(match), Path(match))
    return list(seen.values())


def _compare(args: argparse.Namespace) -> int:
    from . import compare

    compare.check_sort(args.sort)
    budget = parse_count(args.budget, "--budget") if args.budget is not None else None
    for flag, value in (("--csv", args.csv), ("--markdown", args.markdown), ("--plot", args.plot)):
        if value is not None:
            _check_writable(value, flag)
    if args.plot is not None and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"--plot {args.plot}: name a .png (or .svg, .pdf) file")
    if not args.runs:
        raise UserError("no run directories given; pass one or more, e.g. distill compare runs/*")
    paths = _expand_runs(args.runs)
    if not any(p.exists() for p in paths):
        raise UserError(f"no run directories matched {' '.join(args.runs)}; check the paths (e.g. runs/*)")
    rows = [compare.load_run(p) for p in paths]
    console.print(compare.compare_table(rows, args.sort, budget))
    try:
        if args.csv is not None:
            Path(args.csv).write_text(compare.to_csv(rows, args.sort, budget))
            console.print(f"wrote {args.csv}", soft_wrap=True)
        if args.markdown is not None:
            Path(args.markdown).write_text(compare.to_markdown(rows, args.sort, budget))
            console.print(f"wrote {args.markdown}", soft_wrap=True)
        if args.plot is not None:
            counts = compare.plot(rows, args.plot)
            console.print(f"wrote {args.plot} ({counts['params']} runs against params, {counts['macs']} against MACs)",
                          soft_wrap=True)
    except OSError as err:
        raise UserError(f"cannot write {err.filename}: {err.strerror}") from None
    return 0


def _file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _latency_table(latency: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="latency (median, fp32 eager PyTorch)")
    for col in ("device", "batch", "ms / batch", "images/s", "runs"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for figures in latency.values():
        for key, runs in figures["repeats"].items():
            batch = key.removeprefix("batch")
            table.add_row(figures["device"], batch, f"{figures[f'{key}_ms']:.3f}",
                          f"{figures[f'{key}_img_s']:,.0f}", str(runs))
    return table


def _export(args: argparse.Namespace) -> int:
    import torch

    from . import export
    from .engine import resolve_device

    if not (args.onnx or args.torchscript or args.latency):
        raise UserError("nothing to do: pass --onnx FILE, --torchscript FILE and/or --latency")
    if args.onnx:
        export.require_onnxruntime()
        _check_writable(args.onnx, "--onnx")
    if args.torchscript:
        _check_writable(args.torchscript, "--torchscript")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    device = resolve_device(args.device)
    item = export.load_exportable(args.checkpoint)
    shape = "x".join(str(s) for s in item.input_shape)
    if args.onnx:
        path = export.export_onnx(item.model, args.onnx, item.input_shape)
        diff = export.check_onnx(path, item.model, item.input_shape)
        console.print(f"ONNX: {path} ({_file_size(path)}, opset {export.ONNX_OPSET}, input "
                      f"images N x {shape}); onnxruntime vs PyTorch: max abs diff {diff:.2e}", soft_wrap=True)
    if args.torchscript:
        path = export.export_torchscript(item.model, args.torchscript, item.input_shape)
        diff = export.check_torchscript(path, item.model, item.input_shape)
        console.print(f"TorchScript: {path} ({_file_size(path)}); reloaded vs PyTorch: "
                      f"max abs diff {diff:.2e}", soft_wrap=True)
    if args.latency:
        latency = {"cpu": export.measure_latency(item.model, item.input_shape, torch.device("cpu"),
                                                 threads=args.threads)}
        if device.type == "cuda":
            latency["cuda"] = export.measure_latency(item.model, item.input_shape, device)
        console.print(_latency_table(latency))
        run_dir = export.run_dir_of(args.checkpoint)
        if run_dir is not None:
            console.print(f"recorded in {export.record_latency(run_dir, latency)}", soft_wrap=True)
        else:
            console.print("[yellow]the checkpoint is not inside a run directory: latency not recorded[/]")
    return 0


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 prints
        console.quiet = True
    if args.command in ("run", "teacher"):
        return _train(args, args.command)
    if args.command == "compare":
        return _compare(args)
    if args.command == "export":
        return _export(args)
    return _eval(args)


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
