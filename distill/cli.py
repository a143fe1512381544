"""``distill``: train teachers, distill students, evaluate, compare and export checkpoints.

    distill teacher --teacher resnet50 --data cifar10 --epochs 200 --out runs/t-resnet50
    distill run --teacher resnet50 --student r4_3323 [--teacher-ckpt runs/t-resnet50] [--recipe seed000]
    distill run --resume runs/run-r4_3323-...
    distill sweep --teacher resnet50 --students r4_3323,r3_333_c16-32-64 --out runs/sweep1   (one teacher pass per batch)
    distill run --config runs/run-r4_3323-.../config.json --seed 1 --out runs/seed1   (a run's settings, one changed)
    distill eval runs/run-r4_3323-.../best.pt --data cifar10 [--report reports/r4_3323]
    distill compare runs/* [--sort top1] [--budget 5M] [--csv runs.csv] [--markdown runs.md] [--plot runs.png]
    distill export runs/run-r4_3323-... --onnx r4_3323.onnx [--torchscript r4_3323.ts] [--latency]
    distill quantize runs/run-r4_3323-... [--calibration 512] [--max-drop 1]   (int8 ONNX, measured)
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from students.common.console import ArgumentParser, cli_entry, console, resumable, run as run_main, setup_logging
from students.common.errors import UserError
from students.common.files import atomic_write_text
from students.common.sizes import parse_count

from .launch import launch_rank, launch_world_size
from .cli_common import (NON_CONFIG, RichReporter, TimingProgress, add_train_args, config_from_args, decode_progress,
                         fmt, summary_table)
from .config import DEVICES, TrainConfig, data_name
from .quantize import METHODS as QUANTIZE_METHODS, SCHEMES as QUANTIZE_SCHEMES, QuantizeSettings

QUANTIZE = QuantizeSettings()  # the library's defaults, shown and used by `distill quantize`


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="distill", description="Knowledge distillation of small image classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full warnings")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("run", help="distill a student from a teacher (or train it alone)"), "run")
    add_train_args(sub.add_parser("teacher", help="train a teacher with the same engine"), "teacher")
    _sweep_args(sub.add_parser("sweep", help="several students against one teacher pass per batch, then compare"))
    ev = sub.add_parser("eval", help="top-1 and per-class precision/recall of a checkpoint")
    ev.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses best.pt)")
    ev.add_argument("--data", default=None,
                    help="data to evaluate on, its whole test split (default: the run's own data and test images, "
                         "chosen as the run chose them: its --test-subset / --val-split and seed)")
    ev.add_argument("--test-subset", type=int, default=None,
                    help="evaluate on this many test images (class-balanced, seed 0) of --data or the run's data")
    ev.add_argument("--batch-size", type=int, default=500, help="images per forward pass (default: 500)")
    ev.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when present, else CPU")
    ev.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    ev.add_argument("--report", default=None, metavar="DIR",
                    help="write per_class.csv, confusion.png and misclassified.png into DIR")
    cmp = sub.add_parser("compare", help="one table row per run: size, top-1, KD settings, speed, latency")
    cmp.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories, e.g. runs/*")
    cmp.add_argument("--sort", default=None, metavar="COLUMN",
                     help="order by this column, best first (e.g. top1, params, macs, latency_ms)")
    cmp.add_argument("--budget", default=None, help="mark runs within this many parameters, e.g. 5M")
    cmp.add_argument("--columns", default=None, metavar="KEYS",
                     help="table columns, comma-separated (e.g. model,params,top1,top1_ema), or all "
                          "(default: the ones that fit 100 characters; CSV and Markdown keep every column)")
    cmp.add_argument("--csv", default=None, metavar="FILE", help="also write the rows as CSV (raw numbers)")
    cmp.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as Markdown")
    cmp.add_argument("--plot", default=None, metavar="FILE.png",
                     help="top-1 against params and MACs, with the Pareto front")
    ex = sub.add_parser("export", help="ONNX / TorchScript export with a parity check, and latency")
    ex.add_argument("checkpoint", help="a .pt checkpoint or a run directory (uses best.pt)")
    ex.add_argument("--onnx", default=None, metavar="FILE", help="write an ONNX model (dynamic batch axis)")
    ex.add_argument("--torchscript", default=None, metavar="FILE", help="write a traced TorchScript model")
    ex.add_argument("--latency", action="store_true",
                    help="median batch-1 and batch-256 latency in ms of eager PyTorch on the CPU (and CUDA "
                         "when used), and of onnxruntime with --onnx; recorded in the run's summary.json")
    ex.add_argument("--device", choices=DEVICES, default="auto",
                    help="auto: CPU, plus CUDA when present; cpu: CPU only; cuda: CPU and CUDA")
    ex.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the latency measurement (default: torch's, one per core)")
    qz = sub.add_parser("quantize", help="int8 ONNX of a run (onnxruntime static quantization), with its top-1 "
                                         "and latency against fp32")
    qz.add_argument("run", help="a run folder (distill run, teacher, sweep member or prune output)")
    qz.add_argument("--out", default=None, metavar="FILE", help="the int8 file (default: RUN/model.int8.onnx)")
    qz.add_argument("--calibration", type=int, default=QUANTIZE.calibration, metavar="N",
                    help=f"training images that calibrate the activation ranges (default: {QUANTIZE.calibration})")
    qz.add_argument("--method", choices=QUANTIZE_METHODS, default=QUANTIZE.method,
                    help=f"how activation ranges are fitted (default: {QUANTIZE.method})")
    qz.add_argument("--scheme", choices=QUANTIZE_SCHEMES, default=QUANTIZE.scheme,
                    help="activations/weights: s8s8, u8s8, u8s8-7bit (7-bit weights: no saturation on CPUs "
                         "without VNNI); auto: s8s8 on a CPU with VNNI, else u8s8-7bit (default: auto)")
    qz.add_argument("--seed", type=int, default=QUANTIZE.seed, help="picks the calibration images (default: 0)")
    qz.add_argument("--max-drop", type=float, default=QUANTIZE.max_drop, metavar="POINTS",
                    help="refuse (and write nothing) when int8 top-1 is more than this many points below fp32 "
                         f"(default: {QUANTIZE.max_drop:g})")
    qz.add_argument("--test-subset", type=int, default=None, metavar="N",
                    help="classify only N of the run's test images (default: all of them)")
    qz.add_argument("--threads", type=int, default=None,
                    help="onnxruntime threads for evaluation and latency (default: onnxruntime's, one per core)")
    for command in sub.choices.values():  # -v also after the command: distill run ... -v
        if "-v" not in command._option_string_actions:
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help="debug logging and full warnings (also accepted before the command)")
    return parser


def _sweep_args(sw: argparse.ArgumentParser) -> None:
    add_train_args(sw, "run")
    sw.add_argument("--students", default=None, metavar="SPECS",
                    help="the students, comma-separated (e.g. r3_111_c16-32-64,r2_11_c8-16); each gets a run "
                         "folder OUT/<student>; every other setting is shared, the batches and teacher pass too")


def _sweep(args: argparse.Namespace) -> int:
    """``distill sweep``: train the students together (distill.sweep), then print their compare table."""
    names = vars(args).pop("students", None)
    if getattr(args, "dry_run", False):
        raise UserError("distill sweep has no --dry-run; plan one student with distill run --dry-run")
    if "student" in vars(args):
        raise UserError("distill sweep trains --students A,B,...; --student names a single run's student")
    if args.resume:
        ignored = sorted(k for k in vars(args) if k not in NON_CONFIG | {"dry_run"})
        if ignored or names:
            console.print(f"[yellow]--resume uses the sweep's saved settings; ignoring "
                          f"{', '.join(ignored + (['students'] if names else []))}[/]")
        cfg, students, root = TrainConfig(), [], Path(args.resume)
    else:
        students = [n.strip() for n in (names or "").split(",") if n.strip()]
        if not students:
            raise UserError("distill sweep needs --students SPEC,SPEC,... (the students to train together)")
        cfg = config_from_args(args, "run")
        root = Path(args.out) if args.out else Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    from . import compare
    from .sweep import run_sweep

    with resumable(f"distill sweep --resume {root}", sigterm=launch_world_size() == 1), \
            RichReporter("sweep") as reporter:
        summaries = run_sweep(cfg, students, root, resume=bool(args.resume), reporter=reporter,
                              progress=decode_progress(), stop_after=args.stop_after,
                              make_reporter=reporter.for_run)
    rows = [compare.load_run(s.run_dir) for s in summaries]
    console.print(compare.compare_table(rows, title=f"sweep {root}", columns=compare.select_columns(None)))
    return 0


def _train(args: argparse.Namespace, kind: str) -> int:
    if args.resume and args.dry_run:
        from .rundir import RunDir

        cfg, checkpoint = RunDir(args.resume).load_resume()
        console.print(f"plan: resume {args.resume} ({cfg.kind} {cfg.model_name}) after epoch "
                      f"{checkpoint['meta']['epoch']} of {args.epochs if 'epochs' in args else cfg.epochs} "
                      "(dry run: nothing was trained or written)", soft_wrap=True)
        return 0
    if args.resume:
        from .pipeline import run_training

        ignored = sorted(k for k, v in vars(args).items()
                         if k not in NON_CONFIG and k not in ("epochs", "device", "extend"))
        if ignored:
            console.print(f"[yellow]--resume uses the run's saved settings; ignoring {', '.join(ignored)}[/]")
        with resumable(f"distill {kind} --resume {args.resume}", sigterm=launch_world_size() == 1), \
                RichReporter(kind) as reporter:
            summary = run_training(TrainConfig(), Path(args.resume), resume=True, reporter=reporter,
                                   progress=decode_progress(), stop_after=args.stop_after,
                                   make_reporter=reporter.for_run, epochs_override=getattr(args, "epochs", None),
                                   extend=getattr(args, "extend", False))
        console.print(summary_table(summary, Path(args.resume)))
        return 0
    cfg = config_from_args(args, kind)
    run_dir = Path(args.out) if args.out else Path("runs") / f"{kind}-{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # The plan comes first: its first line before torch is even imported, the rest before any training.
    teacher = f" from teacher {cfg.teacher}" if cfg.uses_teacher else ""
    console.print(f"plan: distill {kind} {cfg.model_name}{teacher}, data {cfg.data}"
                  + (" (dry run: nothing is written)" if args.dry_run else f", into {run_dir}"), soft_wrap=True)
    from .pipeline import check_run, load_data, plan_run, run_training

    check_run(cfg, run_dir)
    data = load_data(cfg, decode_progress(), write_cache=not args.dry_run)
    plan = None
    if launch_rank() == 0 or args.dry_run:  # under torchrun rank 0 plans for all
        with TimingProgress() as timing:
            plan = plan_run(cfg, data, progress=timing, described=lambda p: _print_lines(p.describe_lines()))
        _print_lines(plan.estimate_lines())
    if args.dry_run:
        console.print("dry run: nothing was trained or written")
        return 0
    with resumable(f"distill {kind} --resume {run_dir}", sigterm=launch_world_size() == 1), \
            RichReporter(kind) as reporter:
        summary = run_training(cfg, run_dir, reporter=reporter, progress=decode_progress(), stop_after=args.stop_after,
                               make_reporter=reporter.for_run, data=data, plan=plan)
    console.print(summary_table(summary, run_dir))
    return 0


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _eval(args: argparse.Namespace) -> int:
    import teachers

    from . import report
    from .data import DeviceLoader, load_dataset
    from .device import resolve_device
    from .engine import predict
    from .rundir import find_checkpoint

    if args.test_subset is not None and args.test_subset < 1:  # 0 would silently mean "all"
        raise UserError(f"--test-subset must be at least 1, got {args.test_subset}")
    if not 1 <= args.batch_size <= 1 << 20:
        raise UserError(f"--batch-size {args.batch_size} is out of range; use 1..{1 << 20}")
    report_dir = _report_dir(args.report)
    path = find_checkpoint(args.checkpoint)
    model, ckpt = teachers.load_model(path)
    run_cfg = _run_config(ckpt)
    if args.data is None and args.test_subset is None and run_cfg is not None:
        from .pipeline import load_data, test_selection

        data = load_data(run_cfg, decode_progress())  # the run's own test images, picked exactly as it did
        console.print(f"images: {test_selection(run_cfg)['how']}", soft_wrap=True)
    else:
        data = load_dataset(args.data or (run_cfg.data if run_cfg else "cifar10"), download=True,
                            image_size=run_cfg.image_size if run_cfg else 32, progress=decode_progress())
        if args.test_subset:
            data = data.subset(test=args.test_subset)
    num_classes = int(ckpt["arch"].get("num_classes", -1))
    if num_classes != data.num_classes:
        raise UserError(f"{path} predicts {num_classes} classes but {data.source} has {data.num_classes}")
    from .pipeline import check_classes

    check_classes(ckpt, data.classes, str(path))
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
        table.add_row(m["class"], f"{m['images']:,}", fmt(m["precision_pct"]), fmt(m["recall_pct"]),
                      fmt(m["f1_pct"]))
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


def _run_config(ckpt: dict[str, Any]) -> TrainConfig | None:
    """The settings of the run that wrote a checkpoint (recorded in its meta), or None when it has none or
    its data cannot be loaded by name (e.g. a notebook run on Python iterables)."""
    recorded = ckpt.get("meta", {}).get("config")
    if not isinstance(recorded, dict):
        return None
    try:
        cfg = TrainConfig.from_dict(recorded)
    except UserError:
        return None
    return cfg if data_name(cfg.data) or os.path.exists(cfg.data) else None


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
    columns = compare.select_columns(args.columns)
    budget = parse_count(args.budget, "--budget") if args.budget is not None else None
    for flag, value in (("--csv", args.csv), ("--markdown", args.markdown), ("--plot", args.plot)):
        if value is not None:
            _check_writable(value, flag)
    if args.plot is not None and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"--plot {args.plot}: name a .png (or .svg, .pdf) file")
    if not args.runs:
        raise UserError("no run directories given; pass one or more, e.g. distill compare runs/*")
    paths = compare.expand_sweeps(_expand_runs(args.runs))
    if not any(p.exists() for p in paths):
        raise UserError(f"no run directories matched {' '.join(args.runs)}; check the paths (e.g. runs/*)")
    rows = [compare.load_run(p) for p in paths]
    if args.columns is None:  # the defaults, less what the terminal has no room for (--columns shows any)
        wide = console.options.update_width(10_000)  # the table's own width, not what fits the terminal now
        columns = compare.fit_columns(compare.default_columns(rows), console.width, lambda keys: console.measure(
            compare.compare_table(rows, args.sort, budget, columns=keys), options=wide).maximum)
    console.print(compare.compare_table(rows, args.sort, budget, columns=columns))
    try:
        if args.csv is not None:
            atomic_write_text(args.csv, compare.to_csv(rows, args.sort, budget))
            console.print(f"wrote {args.csv}", soft_wrap=True)
        if args.markdown is not None:
            atomic_write_text(args.markdown, compare.to_markdown(rows, args.sort, budget))
            console.print(f"wrote {args.markdown}", soft_wrap=True)
        if args.plot is not None:
            counts = compare.plot(rows, args.plot)
            console.print(f"wrote {args.plot} ({counts['params']} runs against params, {counts['macs']} against MACs"
                          + (f", {counts['int8_ms']} against int8 latency" if counts.get("int8_ms") else "") + ")",
                          soft_wrap=True)
    except OSError as err:
        raise UserError(f"cannot write {err.filename}: {err.strerror}") from None
    return 0


def _file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _latency_table(latency: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="latency (median of timed runs, fp32)")
    for col in ("runtime", "device", "batch", "ms / batch", "images/s", "runs"):
        table.add_column(col, justify="left" if col in ("runtime", "device") else "right")
    for figures in latency.values():
        for key, runs in figures["repeats"].items():
            batch = key.removeprefix("batch")
            table.add_row(figures["runtime"], figures["device"], batch, f"{figures[f'{key}_ms']:.3f}",
                          f"{figures[f'{key}_img_s']:,.0f}", str(runs))
    return table


def _checked(path: Path, check: Any) -> float:
    """``check()``'s parity figure; a file that fails its check is removed, not left where it was asked for."""
    try:
        return check()
    except UserError as err:
        path.unlink(missing_ok=True)
        raise UserError(f"{err}; {path} was removed") from None


def _export(args: argparse.Namespace) -> int:
    import torch

    from . import export
    from .device import resolve_device

    if not (args.onnx or args.torchscript or args.latency):
        raise UserError("nothing to do: pass --onnx FILE, --torchscript FILE and/or --latency")
    if args.onnx:
        export.require_onnxruntime()
        export.check_output(args.onnx, "--onnx")  # a missing folder is created, as --out and --report do
    if args.torchscript:
        export.check_output(args.torchscript, "--torchscript")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    device = resolve_device(args.device)
    item = export.load_exportable(args.checkpoint)
    shape = "x".join(str(s) for s in item.input_shape)
    if args.onnx:
        path = export.export_onnx(item.model, args.onnx, item.input_shape)
        diff = _checked(path, lambda: export.check_onnx(path, item.model, item.input_shape))
        console.print(f"ONNX: {path} ({_file_size(path)}, opset {export.ONNX_OPSET}, input "
                      f"images N x {shape}); onnxruntime vs PyTorch: max abs diff {diff:.2e}", soft_wrap=True)
    if args.torchscript:
        path = export.export_torchscript(item.model, args.torchscript, item.input_shape)
        diff = _checked(path, lambda: export.check_torchscript(path, item.model, item.input_shape))
        console.print(f"TorchScript: {path} ({_file_size(path)}); reloaded vs PyTorch: "
                      f"max abs diff {diff:.2e}", soft_wrap=True)
    if args.latency:
        latency = {"cpu": export.measure_latency(item.model, item.input_shape, torch.device("cpu"),
                                                 threads=args.threads)}
        if device.type == "cuda":
            latency["cuda"] = export.measure_latency(item.model, item.input_shape, device)
        if args.onnx:  # the file just exported, as a deployment would run it
            latency["onnxruntime_cpu"] = export.measure_onnx_latency(args.onnx, item.input_shape, threads=args.threads)
        console.print(_latency_table(latency))
        run_dir = export.run_dir_of(args.checkpoint)
        if run_dir is not None:
            console.print(f"recorded in {export.record_latency(run_dir, latency)}", soft_wrap=True)
        else:
            console.print("[yellow]the checkpoint is not inside a run directory: latency not recorded[/]")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import quantize

    settings = quantize.QuantizeSettings(calibration=args.calibration, method=args.method, scheme=args.scheme,
                                         seed=args.seed, max_drop=args.max_drop, threads=args.threads,
                                         test_subset=args.test_subset)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)

        record = quantize.quantize_run(args.run, settings, out=args.out, progress=progress,
                                       load_data=_run_data, say=lambda line: console.print(line, soft_wrap=True))
    console.print(_int8_table(record))
    console.print(f"int8 model: {record['file']} ({record['size_bytes'] / 1e6:.2f} MB, fp32 "
                  f"{record['fp32_size_bytes'] / 1e6:.2f} MB); recorded in {Path(args.run) / 'summary.json'}",
                  soft_wrap=True)
    return 0


def _run_data(cfg: Any) -> Any:
    from .pipeline import load_data

    return load_data(cfg, decode_progress())


def _int8_table(record: dict[str, Any]) -> Table:
    threads = record["threads"] or "onnxruntime default"
    table = Table(title=f"int8 ({record['scheme']}, {record['calibration']['images']} calibration images, "
                        f"{record['calibration']['method']}) against fp32, onnxruntime on the CPU, threads {threads}")
    for col in ("model", "top-1 %", *(f"batch {k.removeprefix('batch')} ms" for k in record["speedup"])):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in ("fp32", "int8"):
        lat = record["latency"][name]
        table.add_row(name, f"{record[f'top1_{name}']:.2f}", *(f"{lat[f'{k}_ms']:.3f}" for k in record["speedup"]))
    table.add_row("int8 vs fp32", f"{0.0 - record['drop_points'] + 0.0:+.2f}", *(f"{v:.2f}x speed" for v in
                                                                       record["speedup"].values()))
    return table


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if launch_rank() != 0:  # under torchrun only rank 0 prints
        console.quiet = True
    if args.command == "sweep":
        return _sweep(args)
    if args.command in ("run", "teacher"):
        return _train(args, args.command)
    if args.command == "compare":
        return _compare(args)
    if args.command == "export":
        return _export(args)
    if args.command == "quantize":
        return _quantize(args)
    return _eval(args)


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
