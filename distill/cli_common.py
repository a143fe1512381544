"""What the training CLIs share (``distill run``/``teacher`` and ``prune``): the flag table, the one place
flags and config files become a :class:`TrainConfig`, the rich progress reporter and the summary table.

Precedence of settings, lowest first: TrainConfig's defaults, ``--config FILE``, ``--recipe NAME``, flags.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from students.common.console import console
from students.common.errors import UserError
from students.common.sizes import format_count, parse_count

from .config import DEVICES, KD_LOSS_NAMES, OPTIMIZERS, SCHEDULES, TEACHER_MODES, WEIGHT_INITS, TrainConfig, read_settings
from .recipes import RECIPES, recipe_overrides

__all__ = ["NON_CONFIG", "add_train_args", "config_from_args", "RichReporter", "TimingProgress", "decode_progress",
           "summary_table", "fmt"]

_DEFAULTS = TrainConfig()


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    return f" (default: {value})"


class _DeprecatedAlias(argparse.Action):
    """An old flag name: stores into the new one's setting and says so."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        console.print(f"[yellow]{option_string} is deprecated; use {new}[/]")
        setattr(namespace, self.dest, values)


S = argparse.SUPPRESS  # only flags the user gives override the config file, the recipe and the defaults


def add_train_args(p: argparse.ArgumentParser, kind: str) -> None:
    """The TrainConfig flags of ``kind`` (``run``, ``teacher`` or ``prune``'s fine-tuning), in groups."""
    if kind in ("run", "teacher"):
        p.add_argument("--config", default=S, metavar="FILE",
                       help="settings from a .json/.yaml file, e.g. a run's config.json; flags override it")
    first = len(p._actions)
    _model_args(p.add_argument_group("models"), kind)
    if kind in ("run", "prune"):
        _kd_args(p.add_argument_group("distillation"))
    _data_args(p.add_argument_group("data"))
    _optim_args(p.add_argument_group("optimisation"))
    _augment_args(p.add_argument_group("augmentation"))
    _run_args(p.add_argument_group("run"))
    if kind == "prune":  # fine-tuning starts from the source run's settings, not from TrainConfig's defaults
        for action in p._actions[first:]:
            if action.help:
                action.help = re.sub(r"\(default: [^()]*\)", "(default: the source run's)", action.help)
                action.help = re.sub(r"^default: .*$", "default: the source run's", action.help)
            if action.dest == "epochs":
                action.help = "the same as --finetune-epochs (default: the source run's epochs; 0 prunes only)"
            if action.dest == "out":  # a new folder: the source run is never written
                action.help = "the pruned run's folder, a new one (default: runs/pruned-<model>-<time>)"
    if kind in ("run", "teacher"):
        p.add_argument("--extend", action="store_true",
                       help="with --resume and a larger --epochs: reopen a finished run for more epochs (its schedule "
                            "is recomputed for the new length, so the lr rises again, and its result is replaced)")
        p.add_argument("--dry-run", action="store_true",
                       help="print the plan (device, data, teacher source, sizes, time estimate) and exit; "
                            "writes nothing")


def _model_args(model: argparse._ArgumentGroup, kind: str) -> None:
    model.add_argument("--teacher", default=S, help="timm model name or student spec/preset")
    model.add_argument("--teacher-mode", choices=TEACHER_MODES, default=S,
                       help="cifar: stem adapted to 32x32 (default for CNNs); upsample: native resolution")
    model.add_argument("--teacher-pretrained", action="store_true", default=S,
                       help="start from timm's pretrained weights (needs network, or --teacher-weights)")
    model.add_argument("--teacher-weights", default=S, help="local pretrained state dict for the teacher")
    if kind in ("run", "prune"):  # prune: the fine-tuning run's settings (its student comes from SOURCE)
        model.add_argument("--teacher-ckpt", default=S, help="teacher checkpoint file or run directory")
    if kind == "run":  # the teacher `distill run` trains when none is stored: its own epochs and lr
        model.add_argument("--teacher-epochs", type=int, default=S,
                           help="epochs of the teacher trained when none is stored (default: --epochs)")
        model.add_argument("--teacher-lr", type=float, default=S,
                           help="peak lr of the teacher trained when none is stored (default: its recipe's, "
                                "teacher-default: 0.1)")
    if kind == "run":
        model.add_argument("--student", default=S, help="student spec or preset" + _default("student"))
        model.add_argument("--max-params", default=S, help="fail if the student is bigger, e.g. 5M")
        model.add_argument("--recipe", choices=sorted(RECIPES), default=S,
                           help="a seed report's recipe and student; other flags override it")


def _kd_args(kd: argparse._ArgumentGroup) -> None:
    kd.add_argument("--kd-loss", choices=KD_LOSS_NAMES, default=S, metavar="LOSS",
                    help="logit loss (kd, dkd, dist), feature method (fitnet, at) or both (kd+at, dkd+fitnet, ...)"
                         + _default("kd_loss"))
    kd.add_argument("--feat-weight", type=float, default=S,
                    help="weight of a feature method's term (default: the method's own: fitnet 100, at 1000)")
    kd.add_argument("--temperature", type=float, default=S,
                    help="softmax temperature T (default: the loss's own: kd 4, dkd 4, dist 1)")
    kd.add_argument("--kd-weight", type=float, default=S,
                    help="weight of the distillation term; cross-entropy gets 1 - it "
                         "(default: the loss's own: kd 0.9; dkd and dist weigh CE 1 + KD 1)")
    kd.add_argument("--kd-warmup-epochs", type=float, default=S,
                    help="epochs over which the distillation term ramps in linearly (default: the loss's own: "
                         "dkd 1/12 of the run, as its paper's 20 of 240 epochs; kd and dist none)")
    kd.add_argument("--alpha", dest="kd_weight", type=float, default=S, action=_DeprecatedAlias,
                    help="deprecated name of --kd-weight")


def _data_args(data: argparse._ArgumentGroup) -> None:
    data.add_argument("--data", default=S, help="cifar10, cifar100, an ImageFolder tree, a cifar-10-batches-py "
                      "folder or a .tar.gz of an ImageFolder tree" + _default("data"))
    data.add_argument("--image-size", type=int, default=S, metavar="PX",
                      help="side in pixels every image is resized to when decoded; larger images are shrunk "
                           "(logged), so raise it for ImageFolder data bigger than CIFAR" + _default("image_size"))
    data.add_argument("--train-subset", type=int, default=S, help="use this many training images (class-balanced)")
    data.add_argument("--test-subset", type=int, default=S, help="use this many test images")
    data.add_argument("--val-split", type=int, default=S, help="carve this many validation images out of train")


def _optim_args(opt: argparse._ArgumentGroup) -> None:
    opt.add_argument("--epochs", type=int, default=S, help=_default("epochs").strip(" ()"))
    opt.add_argument("--batch-size", type=int, default=S, help="images per step" + _default("batch_size"))
    opt.add_argument("--lr", type=float, default=S, help="peak learning rate" + _default("lr"))
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help=_default("optimizer").strip(" ()"))
    opt.add_argument("--momentum", type=float, default=S, help=_default("momentum").strip(" ()"))
    opt.add_argument("--no-nesterov", dest="nesterov", action="store_false", default=S, help="plain momentum SGD")
    opt.add_argument("--weight-init", choices=WEIGHT_INITS, default=S,
                     help="how a student's convolutions start (timm teachers keep their own)" + _default("weight_init"))
    opt.add_argument("--zero-init-last", action="store_true", default=S,
                     help="start each residual block's last BatchNorm at 0, so the block starts as its shortcut")
    opt.add_argument("--weight-decay", type=float, default=S, help=_default("weight_decay").strip(" ()"))
    opt.add_argument("--decay-norm-and-bias", action="store_true", default=S,
                     help="also decay BatchNorm parameters and biases (off by default)")
    opt.add_argument("--schedule", choices=SCHEDULES, default=S, help=_default("schedule").strip(" ()"))
    opt.add_argument("--warmup-epochs", type=float, default=S,
                     help=_default("warmup_epochs").strip(" ()") + "; cosine, sgdr and constant schedules: "
                          "onecycle ramps up from lr/25 over its first 30%% instead")
    opt.add_argument("--sgdr-t0", type=int, default=S, help="epochs of the first SGDR cycle" + _default("sgdr_t0"))
    opt.add_argument("--sgdr-mult", type=int, default=S, help="SGDR cycle growth" + _default("sgdr_mult"))
    opt.add_argument("--milestones", default=S,
                     help="multistep: comma-separated epochs, or fractions of the run (default: 0.5,0.75)")
    opt.add_argument("--gamma", type=float, default=S, help="multistep decay factor" + _default("gamma"))


def _augment_args(aug: argparse._ArgumentGroup) -> None:
    aug.add_argument("--label-smoothing", type=float, default=S, help=_default("label_smoothing").strip(" ()"))
    aug.add_argument("--mixup", type=float, default=S, help="MixUp Beta alpha, 0 = off" + _default("mixup"))
    aug.add_argument("--cutmix", type=float, default=S, help="CutMix Beta alpha, 0 = off" + _default("cutmix"))
    aug.add_argument("--mix-prob", type=float, default=S, help="probability a batch is mixed" + _default("mix_prob"))
    aug.add_argument("--cutout", type=int, default=S, help="cutout square side in pixels, 0 = off")
    aug.add_argument("--crop-padding", type=int, default=S, help="random-crop padding in pixels" + _default("crop_padding"))
    aug.add_argument("--no-flip", dest="flip", action="store_false", default=S, help="no horizontal flips")


def _run_args(run: argparse._ArgumentGroup) -> None:
    run.add_argument("--ema", dest="ema", action="store_true", default=S, help="keep an EMA of the weights (default)")
    run.add_argument("--no-ema", dest="ema", action="store_false", default=S, help="no EMA")
    run.add_argument("--ema-decay", type=float, default=S, help=_default("ema_decay").strip(" ()"))
    run.add_argument("--no-tta", dest="tta", action="store_false", default=S, help="skip the flip-TTA evaluation")
    run.add_argument("--device", choices=DEVICES, default=S, help=_default("device").strip(" ()"))
    run.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no bf16 autocast on CUDA")
    run.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=S,
                     help="keep NCHW activations (default: channels-last, NHWC)")
    run.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    run.add_argument("--deterministic", action="store_true", default=S,
                     help="CUDA: reproducible kernels instead of cuDNN's fastest (slower; runs with one seed then "
                          "agree bit for bit on the GPU too; CPU runs always do at a fixed thread count)")
    run.add_argument("--seed", type=int, default=S,
                     help="initial weights, and the batches unless --data-seed is given" + _default("seed"))
    run.add_argument("--data-seed", type=int, default=S,
                     help="the batches: subset, shuffle, crops, flips, mixing (default: --seed). Seeds of "
                          "initialisation with one --data-seed replay one set of cached teacher outputs")
    run.add_argument("--teacher-cache", choices=("on", "off"), default=S,
                     help="on: record the teacher's logits for this batch stream once and replay them in later runs "
                          "with the same teacher and batches (exact; under $DISTILL_CACHE/teacher-outputs, at most "
                          "$DISTILL_TEACHER_CACHE_GB, default 20 GB); off: run the teacher on every step (default: on)")
    run.add_argument("--eval-every", type=int, default=S, help="evaluate every N epochs (and at the end)")
    run.add_argument("--save-every", type=int, default=S, metavar="N",
                     help="write the resumable checkpoint last.pt every N epochs (and at the end, and at "
                          "--stop-after); a kill loses at most N-1 finished epochs" + _default("save_every"))
    run.add_argument("--tensorboard", action="store_true", default=S,
                     help="also write TensorBoard event files into the run directory (if tensorboard is installed)")
    run.add_argument("--out", default=None, help="run directory (default: runs/<kind>-<model>-<time>)")
    run.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run exactly")
    run.add_argument("--stop-after", type=int, default=None, metavar="N",
                     help="stop after N epochs in this invocation (resumable), e.g. for time-limited jobs")


NON_CONFIG = {"command", "verbose", "out", "resume", "stop_after", "dry_run", "extend"}


def config_from_args(args: argparse.Namespace, kind: str) -> TrainConfig:
    """The one place flags become settings: defaults < ``--config`` file < ``--recipe`` < flags given."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in NON_CONFIG}
    settings: dict[str, Any] = {}
    if "config" in given:
        path = given.pop("config")
        settings.update(TrainConfig.settings_from(read_settings(path), f"config {path}"))
        _check_config_kind(path, settings, given, kind)
    if "recipe" in given:
        settings.update(recipe_overrides(given.pop("recipe")))
    if "max_params" in given:
        given["max_params"] = parse_count(given["max_params"], "--max-params")
    if "teacher_cache" in given:
        given["teacher_cache"] = given["teacher_cache"] == "on"
    if "milestones" in given:
        try:
            given["milestones"] = tuple(float(m) for m in str(given["milestones"]).split(","))
        except ValueError:
            raise UserError(f"--milestones {given['milestones']!r}: write comma-separated numbers, e.g. 100,150") from None
    settings.update(given)
    settings["kind"] = kind
    if kind == "run" and settings.get("teacher_ckpt") and not settings.get("teacher"):
        from .rundir import checkpoint_model_name  # --teacher-ckpt alone: the checkpoint names its model

        settings["teacher"] = checkpoint_model_name(settings["teacher_ckpt"])
    if kind == "run" and "teacher" not in settings:
        settings["teacher"] = None
    if "milestones" in settings:
        settings["milestones"] = tuple(settings["milestones"])
    return TrainConfig(**settings)


def _check_config_kind(path: str, settings: dict[str, Any], given: dict[str, Any], kind: str) -> None:
    """A config of another kind of run means something else here: refuse it in one line rather than guess."""
    recorded = settings.get("kind")  # a partial settings file need not say
    if recorded is not None and kind in ("run", "teacher") and recorded != kind:
        raise UserError(f"config {path} holds the settings of a `distill {recorded}` run; pass it to "
                        f"`distill {recorded} --config {path}`")
    if settings.get("init_ckpt") and "student" in given and given["student"] != settings.get("student"):
        raise UserError(f"config {path} starts from init_ckpt {settings['init_ckpt']} (a {settings.get('student')} "
                        f"with its own, maybe pruned, widths), so --student {given['student']} would not be trained; "
                        "drop --student, or remove init_ckpt from the config to train it from scratch")


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

    def for_run(self, label: str) -> "RichReporter":
        """A reporter for another run of the same command (a teacher trained first): the same display, its own
        epoch bar labelled ``label`` and sized by that run's epochs (the student's bar stays its own)."""
        child = RichReporter.__new__(RichReporter)
        child.label, child.progress, child.epoch_task, child.step_task = label, self.progress, None, None
        return child

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
        from .rundir import epoch_line

        parts = epoch_line(record)
        if record.get("mean_of"):  # a sweep's line for all its students: means (speed: their sum)
            parts = [f"mean of {record['mean_of']} students:"] + parts
        self.progress.console.print("  ".join(parts))
        if self.step_task is not None:
            self.progress.remove_task(self.step_task)
            self.step_task = None
        self.progress.update(self.epoch_task, completed=record["epoch"],
                             info=f"test {record.get('test_top1', float('nan')):.2f}%")


class TimingProgress:
    """A transient progress line while the plan times a few steps of each model (seconds for big models on
    a CPU): ``progress(what, done, total)``."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("timing {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "TimingProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.tasks.get(what) == "done":
            return
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)
        if done >= total:  # one line at a time: the model being timed now
            self.progress.remove_task(self.tasks[what])
            self.tasks[what] = "done"


def decode_progress():
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


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def summary_table(summary: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{summary['kind']} {summary['model']}: {run_dir}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("params", f"{summary['num_params']:,}"),
        ("MACs / FLOPs per image", f"{format_count(summary['macs'])} / {format_count(summary['flops'])}"),
        ("top-1 last / best", f"{fmt(summary['top1_last'], '%')} / {fmt(summary['top1_best'], '%')}"),
        ("top-1 EMA / flip-TTA", f"{fmt(summary['top1_ema'], '%')} / {fmt(summary['top1_tta'], '%')}"),
        ("measured on", summary["eval_set"]),
    ]
    if summary.get("teacher"):
        rows.append(("teacher", f"{summary['teacher']} ({fmt(summary['teacher_top1'], '%')} top-1)"))
        kd = summary["kd"]
        rows.append(("distillation", f"{kd['loss']}, T={kd['temperature']}, kd_weight={kd['kd_weight']}"))
    rows += [
        ("epochs", f"{summary['epochs_done']}/{summary['epochs']}" + ("" if summary["complete"] else " (incomplete)")),
        ("train speed", f"{fmt(summary['train_img_s'])} images/s (median epoch)"),
        ("wall time", f"{summary['wall_s']:.1f} s"),
        ("device", summary["device"]),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


