"""The training engine: train given modules on given batches, writing a run folder.

How the three layers differ:

- :mod:`distill.engine` (this module) knows nothing of names, stores or flags. It takes the modules to
  train (:class:`Models`), the data (an :class:`~distill.data.ImageDataset`, kept on the device, or
  :class:`~distill.batches.Loaders` of any ``(images, labels)`` batches) and a
  :class:`~distill.config.TrainConfig`, and runs the loop: :func:`train_one_epoch`, :func:`evaluate`,
  and :func:`train`, a short loop over named steps. One loop serves one student or many
  (:func:`train_many`, which ``distill sweep`` calls): each batch is drawn and mixed once, the teacher's
  outputs for it come once from one source (:class:`~distill.teacher_cache.TeacherOutputs`: the live
  teacher, or its logits recorded by an earlier run with the same batches), then every student steps.
- :mod:`distill.pipeline` turns a config into those modules for the CLIs: the student by name, the
  teacher from a checkpoint or the teacher store (training it first when needed), the data by name.
- :mod:`distill.api` is the notebook entry point, :func:`distill.fit`: any ``nn.Module`` student and
  teacher, any ``DataLoader``; it calls :func:`train` too.

The run folder's layout and files belong to :mod:`distill.rundir`. Each epoch's randomness (shuffle,
crops, flips, mixing, dropout) is reseeded from (seed, epoch), so a run resumed from ``last.pt``
continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import re
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import students
from students.checkpoint import CheckpointError, load_file, load_state_into
from students.common.errors import UserError
from students.common.files import WriteError

from . import dist
from .config import ConfigError, TrainConfig
from .data import ImageDataset
from .device import (autocast, autocast_enabled, channels_last_safe, configure_kernels, device_name, git_commit,
                     keep_head_fp32, memory_format_for, on_cpu, resolve_device)
from .feature_kd import FeatureKD, build_feature_kd, is_feature_method, split_method
from .losses import build_loss
from .mixing import BatchMixer, MixConfig
from .optim import build_optimizer, lr_at, set_lr
from .batches import Batches, Loaders, check_classes, dataset_batches, loader_batches
from .rundir import (BEST_CKPT, LAST_CKPT, METRICS_FILE, RunDir, RunError, Summary, epoch_line, epoch_summary,
                     read_metrics)
from .teacher_cache import (CacheEntry, TeacherOutput, TeacherOutputs, compiles_teacher, eval_key, limit_bytes,
                            stream_key)

__all__ = [
    "RunError",
    "TrainingDiverged",
    "Reporter",
    "EpochLines",
    "Models",
    "Loaders",
    "resolve_device",
    "predict",
    "evaluate",
    "train_one_epoch",
    "teacher_warning",
    "build_train_loss",
    "Trainee",
    "student_step",
    "train",
    "train_many",
    "git_commit",
    "read_metrics",
]

_logger = logging.getLogger(__name__)


LOG_EVERY_STEPS = 10  # host synchronisations for progress and NaN checks happen only this often


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite; the message names the checkpoint that was kept."""

    def __init__(self, message: str, *, who: str | None = None) -> None:
        super().__init__(message)
        self.who = who  # the trainee whose loss diverged, when several train together


class Reporter(Protocol):
    """What the engine tells its caller (the CLI draws progress bars from it). All methods optional."""

    def message(self, text: str) -> None: ...
    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, metrics: dict[str, float]) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def message(self, text: str) -> None:
        _logger.info(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def end_epoch(self, record: dict[str, Any]) -> None:
        pass


class EpochLines(_Silent):
    """A reporter that prints what the run says and one line per epoch to ``stream`` (default stdout):
    :func:`distill.api.fit`'s default, readable in a notebook, a log file or a terminal alike."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream

    def _print(self, text: str) -> None:
        print(text, file=self.stream if self.stream is not None else sys.stdout, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs

    def end_epoch(self, record: dict[str, Any]) -> None:
        total = getattr(self, "epochs", None)
        line = epoch_line(record)
        line[0] = f"epoch {record['epoch']}/{total}" if total else line[0]
        self._print("  ".join(line))


class _Null(_Silent):
    """Ranks other than 0 report nothing."""

    def message(self, text: str) -> None:
        pass


class _Labelled(_Silent):
    """One student's view of a reporter shared by several: its messages and epoch lines carry its name; the
    shared reporter draws the progress bars (one per epoch, for all students)."""

    def __init__(self, reporter: Any, name: str) -> None:
        self.reporter, self.name = reporter, name

    def message(self, text: str) -> None:
        _call(self.reporter, "message", f"{self.name}: {text}")

    def end_epoch(self, record: dict[str, Any]) -> None:
        _call(self.reporter, "message", f"{self.name}: " + "  ".join(epoch_summary(record)))


class _Complete(_Silent):
    """A caller's reporter with every Reporter method: those it lacks do nothing (messages are logged)."""

    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter

    def message(self, text: str) -> None:
        _call(self.reporter, "message", text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        _call(self.reporter, "start_epoch", epoch, epochs, steps)

    def step(self, step: int, metrics: dict[str, float]) -> None:
        _call(self.reporter, "step", step, metrics)

    def end_epoch(self, record: dict[str, Any]) -> None:
        _call(self.reporter, "end_epoch", record)


def _call(reporter: Any, method: str, *args: Any) -> None:
    """``reporter.method(*args)`` when the reporter has it (every Reporter method is optional)."""
    fn = getattr(reporter, method, None)
    if fn is not None:
        fn(*args)
    elif method == "message":
        _logger.info(args[0])


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed every generator the epoch draws from, as a pure function of (seed, epoch)."""
    value = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(value)
    np.random.seed(value)  # timm's Mixup draws lambda and boxes from numpy's global generator
    random.seed(value)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device, amp: bool = True,
            tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every image of ``loader``; ``tta`` averages with the flipped image."""
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        for images, targets in loader:
            with autocast(device, amp):
                logits = model(images).float()
                if tta:
                    logits = 0.5 * (logits + model(images.flip(3)).float())
            outputs.append(logits)
            labels.append(targets)
    finally:
        model.train(was_training)
    return torch.cat(outputs).cpu(), torch.cat(labels).cpu()


def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device, amp: bool = True,
             tta: bool = False) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    Under torchrun each rank evaluates its shard of ``loader`` and the sums are all-reduced, so every rank
    gets the figures for the whole set (every rank must call this).
    """
    logits, labels = predict(model, loader, device=device, amp=amp, tta=tta)
    sums = torch.tensor([
        (logits.argmax(1) == labels).sum().item(),
        nn.functional.cross_entropy(logits, labels, reduction="sum").item() if labels.numel() else 0.0,
        labels.numel(),
    ], dtype=torch.float64, device=device if dist.info().backend == "nccl" else "cpu")
    correct, loss_sum, count = dist.all_reduce_sum(sums).tolist()
    return {"top1": 100.0 * correct / max(count, 1), "loss": loss_sum / max(count, 1)}


@dataclass
class Trainee:
    """One student as the loop steps it: what it trains, how, and how far it has come.

    ``step`` is its optimiser's step count (the schedule's position); :func:`train_one_epoch` advances it.
    ``memory_format`` is the format its batches are given in (the loader's for the first trainee).
    """

    model: nn.Module  # what is trained: the student, maybe behind an input adapter, wrapped for DDP/compile
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    lr_fn: Callable[[int], float]  # learning rate at a step
    step: int = 0
    memory_format: torch.memory_format = torch.contiguous_format
    ema: Any | None = None  # timm ModelEmaV3
    after_backward: Callable[[nn.Module], None] | None = None  # e.g. a sparsity regulariser
    name: str = ""  # said in errors when several train together


def train_one_epoch(
    trainees: Sequence[Trainee],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    teacher: TeacherOutputs | nn.Module | None = None,
    mixer: BatchMixer | None = None,
    amp: bool = True,
    reporter: Reporter | None = None,
) -> list[dict[str, float]]:
    """One pass over ``loader`` for every trainee: each batch mixed once, the teacher's outputs for it taken
    once (live, or replayed from the cache by a :class:`~distill.teacher_cache.TeacherOutputs` whose epoch the
    caller began), then one optimiser step per trainee on that same batch. Each trainee's epoch statistics.

    Losses are accumulated on the device; the host reads them only every ``LOG_EVERY_STEPS`` steps and at
    the end (to report progress and catch a NaN), so CUDA never waits on Python per step.
    """
    if isinstance(teacher, nn.Module):  # a bare teacher module: live on every step
        levels = [j for t in trainees if isinstance(t.loss_fn, FeatureKD) for j in t.loss_fn.teacher_indices]
        teacher = TeacherOutputs(teacher, device=device, amp=amp, levels=levels)
    reporter = _Complete(reporter) if reporter is not None else _Silent()
    for trainee in trainees:
        trainee.model.train()
    sums: list[dict[str, torch.Tensor]] = [{} for _ in trainees]
    correct = [torch.zeros((), device=device) for _ in trainees]
    seen, steps, start = 0, len(loader), time.perf_counter()  # type: ignore[arg-type]
    for i, (images, labels) in enumerate(loader):
        targets = labels
        if mixer is not None and mixer.enabled:
            images, targets = mixer(images, labels)
        teacher_out = teacher(images) if teacher is not None else (None, {})
        losses = []
        for k, trainee in enumerate(trainees):
            set_lr(trainee.optimizer, trainee.lr_fn(trainee.step))
            mine = images.contiguous(memory_format=trainee.memory_format)  # a no-op in the loader's format
            parts, logits = student_step(trainee.model, mine, targets, teacher_out, loss_fn=trainee.loss_fn,
                                         optimizer=trainee.optimizer, device=device, amp=amp,
                                         after_backward=trainee.after_backward)
            if trainee.ema is not None:
                trainee.ema.update(trainee.model, step=trainee.step)
            for key, value in parts.items():
                sums[k][key] = sums[k].get(key, 0.0) + value.detach().float()
            hard = targets if targets.ndim == 1 else targets.argmax(1)
            correct[k] += (logits.detach().argmax(1) == hard).sum()
            trainee.step += 1
            losses.append(parts["loss"])
        seen += labels.shape[0]
        if (i + 1) % LOG_EVERY_STEPS == 0 or i + 1 == steps:
            _report_steps(trainees, losses, correct, seen, i + 1, time.perf_counter() - start, reporter)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    out = []
    for k, trainee in enumerate(trainees):
        stats = _epoch_means(sums[k], correct[k], seen, steps, device)
        stats.update(train_seconds=seconds, train_img_s=stats.pop("images") / max(seconds, 1e-9),
                     lr=trainee.lr_fn(trainee.step - 1), steps=trainee.step)
        out.append(stats)
    return out


def _report_steps(trainees: Sequence[Trainee], losses: list[torch.Tensor], correct: list[torch.Tensor], seen: int,
                  done: int, elapsed: float, reporter: Reporter) -> None:
    """Read each trainee's loss (mean over ranks) on the host: stop on NaN/inf, else report progress (means
    over the trainees; images/s counts every trainee's images)."""
    values = []
    for trainee, loss in zip(trainees, losses):
        value = dist.all_reduce_sum(loss.detach().float().clone()).item() / dist.info().world_size
        if not math.isfinite(value):
            prefix = f"{trainee.name}: " if len(trainees) > 1 and trainee.name else ""
            raise TrainingDiverged(f"{prefix}loss became {value} at step {trainee.step}",
                                   who=trainee.name or None)  # train() says which checkpoint is kept
        values.append(value)
    n = len(trainees)
    reporter.step(done, {"loss": sum(values) / n, "lr": trainees[0].lr_fn(trainees[0].step - 1),
                         "img_s": seen * n / max(elapsed, 1e-9),
                         "acc": 100.0 * float(sum(c.item() for c in correct)) / max(seen * n, 1)})


def student_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    teacher_out: TeacherOutput,
    *,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: bool = True,
    after_backward: Callable[[nn.Module], None] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimiser step of ``model`` on a (mixed) batch against the teacher's output: the loss parts and logits."""
    teacher_logits, teacher_maps = teacher_out
    feature = isinstance(loss_fn, FeatureKD) and teacher_logits is not None
    with autocast(device, amp), (loss_fn.capture(teacher=False) if feature else contextlib.nullcontext()):
        logits = model(images)
        extra = {"teacher_feats": [teacher_maps[j] for j in loss_fn.teacher_indices]} if feature else {}
        parts = loss_fn(logits.float(), None if teacher_logits is None else teacher_logits.float(), targets, **extra)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    if after_backward is not None:  # e.g. a sparsity regulariser adding to the gradients before the step
        after_backward(model)
    if isinstance(loss_fn, FeatureKD):  # FitNets regressors sit outside DDP: average their gradients
        loss_fn.average_gradients()
    optimizer.step()
    return parts, logits


def _epoch_means(sums: dict[str, torch.Tensor], correct: torch.Tensor, seen: int, steps: int,
                 device: torch.device) -> dict[str, float]:
    """Means over all ranks: per-rank sums of per-batch means, correct predictions and images, all-reduced."""
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys] + [correct.float(), torch.tensor(float(seen), device=device)])
    totals = dist.all_reduce_sum(totals.double().cpu() if dist.info().backend == "gloo" else totals.double())
    n = steps * dist.info().world_size
    stats = {f"train_{k}": totals[j].item() / n for j, k in enumerate(keys)}
    correct_all, seen_all = totals[-2].item(), totals[-1].item()
    stats.update(train_top1=100.0 * correct_all / max(seen_all, 1), images=seen_all)
    return stats


@dataclass
class Models:
    """The modules a run trains with (not a run: the run is the folder): the model and, for KD, the teacher."""

    model: nn.Module
    arch: dict[str, Any]  # how to rebuild ``model`` from its checkpoint (students.student_arch, teacher_arch, ...)
    teacher: nn.Module | None = None  # frozen (teachers.FrozenTeacher)
    teacher_top1: float | None = None  # percent; None: measured before the first epoch
    extra_summary: dict[str, Any] = field(default_factory=dict)
    input_adapter: nn.Module | None = None  # e.g. resizing for an upsample-mode teacher; has no weights
    after_backward: Callable[[nn.Module], None] | None = None  # called between backward and the step


@dataclass
class _Parts:
    """Everything one training session wires together from the config, built once by :func:`_build`."""

    cfg: TrainConfig
    models: Models
    data: Batches
    run_dir: RunDir
    device: torch.device
    world: dist.DistInfo
    reporter: Any
    model: nn.Module  # the weights being trained (saved in checkpoints)
    forward_model: nn.Module  # model behind the input adapter: what is evaluated
    train_model: nn.Module  # forward_model wrapped for DDP and compile: what is trained
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    mixer: BatchMixer
    ema: Any | None
    trainee: Trainee  # what the loop steps: train_model, loss, optimiser, schedule, EMA
    tensorboard: Any | None = None  # a SummaryWriter when cfg.tensorboard and tensorboard is installed
    memory_format: torch.memory_format = torch.contiguous_format  # the student's, and its batches'
    teacher_channels_last: bool = False  # the format the teacher runs in (part of its cached outputs' key)

    def with_adapter(self, net: nn.Module) -> nn.Module:
        adapter = self.models.input_adapter
        return net if adapter is None else nn.Sequential(adapter.to(self.device), net)


@dataclass
class _State:
    """What changes as training goes; restored from ``last.pt`` on resume."""

    epoch: int = 0  # epochs finished
    saved_epoch: int = 0  # the epoch last.pt holds (behind ``epoch`` between writes under save_every > 1)
    step: int = 0
    elapsed_before: float = 0.0  # seconds spent in earlier sessions of this run
    best_top1: float = -1.0
    best_epoch: int | None = None  # the epoch best.pt holds
    teacher_top1: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    session_start: float = field(default_factory=time.perf_counter)
    passed_teacher: bool = False  # said once per session: the student's top-1 reached its teacher's
    # With save_every > 1: the best epoch's weights (on the CPU) and best.pt metadata while no last.pt holds them
    unsaved_best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start


@dataclass
class _Member:
    """One run of a :func:`train_many` call: its name (the run folder's), its parts, state and resume point."""

    name: str
    parts: _Parts
    resume: dict[str, Any] | None
    state: _State = field(default_factory=_State)


def _setup_device(cfg: TrainConfig) -> tuple[torch.device, dist.DistInfo]:
    device = resolve_device(cfg.device)
    world = dist.setup(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    configure_kernels(device, deterministic=cfg.deterministic)
    return device, world


def _place(net: nn.Module, device: torch.device, channels_last: bool, *, convert_inputs: bool = False,
           amp: bool = False) -> nn.Module:
    # Channels-last: faster convolutions with cuDNN and with oneDNN on CPUs (measured 1.28x for a student's
    # training step and 1.18x for teacher inference on the 2-core CI machine; docs/RESULTS.md).
    net = net.to(device)
    net = net.to(memory_format=torch.channels_last) if channels_last else net
    if autocast_enabled(device, amp):
        keep_head_fp32(net)  # logits in fp32 under bf16 autocast, for the losses
    if convert_inputs:
        # The batches follow the student's format; a convolution runs channels-last when its input is, so
        # without this a teacher kept contiguous for safety (channels_last_safe) would still run channels-last
        # on a channels-last student's batches, and its outputs would depend on which student it serves.
        # One hook per module, however many runs (or sweep students) place the same teacher.
        old = _FORMAT_HOOKS.pop(net, None)
        if old is not None:
            old.remove()
        _FORMAT_HOOKS[net] = net.register_forward_pre_hook(
            functools.partial(_input_format_hook, memory_format=memory_format_for(channels_last)))
    return net


_FORMAT_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its input-format hook handle


def _input_format_hook(module: nn.Module, args: tuple, *, memory_format: torch.memory_format) -> tuple:
    del module
    x = args[0]
    return (x.contiguous(memory_format=memory_format), *args[1:]) if x.dim() == 4 else None


def _build_ema(cfg: TrainConfig, model: nn.Module) -> Any | None:
    if not cfg.ema:
        return None
    from timm.utils import ModelEmaV3

    # Warm-up lets the average follow the weights early on, so short runs still get a useful EMA.
    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)


def _wrap_for_training(net: nn.Module, cfg: TrainConfig, device: torch.device, world: dist.DistInfo) -> nn.Module:
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # The teacher is replicated on every rank, frozen and never wrapped: it has no gradients to average.
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def build_train_loss(cfg: TrainConfig, model: nn.Module, teacher: nn.Module | None) -> nn.Module:
    """The loss ``cfg.kd_loss`` names, for ``model`` (placed on its device) and the frozen ``teacher``.

    Without a teacher: (label-smoothed) cross-entropy. A feature method (``at``, ``kd+fitnet``, ...) gives
    a :class:`~distill.feature_kd.FeatureKD` whose matched levels are probed on ``model`` and ``teacher``;
    a teacher without timm's feature API raises :class:`~distill.feature_kd.FeatureAPIError`.
    """
    logit_name = split_method(cfg.kd_loss)[0] if is_feature_method(cfg.kd_loss) else cfg.kd_loss
    if teacher is None or logit_name is None:
        logit_name = "ce"
    warmup = _kd_warmup_epochs(cfg, logit_name)
    logit_loss = build_loss(logit_name, temperature=cfg.temperature,
                            kd_weight=cfg.kd_weight, label_smoothing=cfg.label_smoothing,
                            **({} if warmup is None or logit_name == "ce" else {"warmup_epochs": warmup}))
    if teacher is not None and is_feature_method(cfg.kd_loss):
        # FitNets regressors start from (seed) alone, not from whatever drew random numbers before: a sweep
        # (distill.sweep) builds several students' losses in a row and must match their separate runs.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return build_feature_kd(cfg.kd_loss, model, teacher, feat_weight=cfg.feat_weight, logit_loss=logit_loss,
                                    input_size=(3, cfg.image_size, cfg.image_size))
    return logit_loss


def _kd_warmup_epochs(cfg: TrainConfig, logit_name: str) -> float | None:
    """Epochs the ``logit_name`` term ramps in over: ``cfg.kd_warmup_epochs``, else DKD's 20-of-240 scaled to the run.

    DKD's paper warms its term up over the first 20 of 240 epochs; a fixed 20 would keep a 5-epoch run's
    DKD term at a quarter of its weight or less, so the default keeps the paper's fraction of the run.
    None: the loss's own default (no warm-up for the others).
    """
    if cfg.kd_warmup_epochs is not None:
        return cfg.kd_warmup_epochs
    return min(20.0, cfg.epochs / 12) if logit_name == "dkd" else None


def _build(cfg: TrainConfig, models: Models, data: ImageDataset | Loaders, run_dir: RunDir,
           reporter: Reporter | None) -> _Parts:
    """Device, loaders, optimiser, loss, mixer, EMA and wrappers: the objects the loop steps."""
    device, world = _setup_device(cfg)
    reporter = (reporter or _Silent()) if world.is_main else _Null()
    # Inputs follow the student's format: channels-last only where its widths are safe (pruned students).
    use_cl = cfg.channels_last and channels_last_safe(models.model, device)
    batches = loader_batches(data, cfg, device, channels_last=use_cl) if isinstance(data, Loaders) else (
        dataset_batches(data, cfg, device, world, channels_last=use_cl))
    model = _place(models.model, device, use_cl, amp=cfg.amp)
    teacher, teacher_cl = None, False
    if models.teacher is not None:
        teacher_cl = cfg.channels_last and channels_last_safe(models.teacher, device)
        teacher = _place(models.teacher, device, teacher_cl, convert_inputs=True, amp=cfg.amp)
    loss_fn = build_train_loss(cfg, model, teacher)
    # A feature method's own parameters (FitNets regressors) train beside the student, in one optimiser.
    trained = nn.ModuleList([model, loss_fn]) if any(True for _ in loss_fn.parameters()) else model
    mixer = BatchMixer(MixConfig(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                                 label_smoothing=cfg.label_smoothing), num_classes=batches.num_classes)
    optimizer, ema = build_optimizer(trained, cfg), _build_ema(cfg, model)
    forward_model = model if models.input_adapter is None else nn.Sequential(models.input_adapter.to(device), model)
    train_model = _wrap_for_training(forward_model, cfg, device, world)
    fmt = memory_format_for(use_cl)
    trainee = Trainee(train_model, loss_fn, optimizer, lambda step: lr_at(cfg, step, len(batches.train)),
                      memory_format=fmt, ema=ema, after_backward=models.after_backward, name=run_dir.path.name)
    parts = _Parts(cfg, models, batches, run_dir, device, world, reporter, model, forward_model, train_model, teacher,
                   optimizer, loss_fn, mixer, ema, trainee, memory_format=fmt, teacher_channels_last=teacher_cl)
    _check_output_width(parts)
    return parts


def _check_data(cfg: TrainConfig, data: ImageDataset | Loaders) -> None:
    """Refuse data that cannot train every class (e.g. ``--train-subset`` below the number of classes), and
    batches that are not what the loop needs (checked on the first batch of each loader)."""
    if data.num_classes < 2:
        raise UserError(f"the data ({data.source}) has {data.num_classes} class; a classifier needs at least 2 "
                        "(one folder per class)")
    if not isinstance(data, ImageDataset):
        for name, loader in (("train", data.train), ("test", data.test)):
            _check_batch(name, loader, data.num_classes)
        return
    per_class = torch.bincount(data.train_labels, minlength=data.num_classes)
    empty = int((per_class == 0).sum())
    if not empty:
        return
    if cfg.train_subset:
        raise UserError(f"--train-subset {cfg.train_subset} leaves {empty} of the {data.num_classes} classes without "
                        f"a training image; use at least {data.num_classes} (a few per class to learn anything)")
    first = data.classes[int((per_class == 0).nonzero()[0])]
    raise UserError(f"the training data ({data.source}) has no image of {empty} of its {data.num_classes} classes "
                    f"(first: {first!r}); every class needs training images")


def _check_batch(name: str, loader: Iterable, num_classes: int) -> None:
    """The first batch of ``loader``: an (images, labels) pair of a float N x C x H x W tensor and N integer
    labels in 0..num_classes-1; :class:`UserError` naming the loader and what it yields otherwise."""
    try:
        len(loader)  # type: ignore[arg-type]
    except TypeError:  # an iterator would be used up by this look, and epochs need to iterate it again
        raise TypeError(f"train and test must have a length (a DataLoader or a list of batches), got a "
                        f"{type(loader).__name__}") from None
    batch = next(iter(loader), None)
    if batch is None:
        raise UserError(f"{name} yields no batches")
    if isinstance(batch, dict):
        raise UserError(f"{name} yields dicts (keys {', '.join(map(repr, list(batch)[:4]))}); it must yield "
                        "(images, labels) pairs, e.g. a DataLoader over a torchvision dataset")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise UserError(f"{name} must yield (images, labels) pairs, got a {type(batch).__name__}"
                        + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))
    images, labels = batch
    if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.dtype.is_floating_point):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"{name}'s images must be a float tensor N x C x H x W (normalised, e.g. by "
                        f"transforms.ToTensor), got {got}")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.dtype.is_floating_point
            and labels.dtype != torch.bool and labels.shape[0] == images.shape[0]):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"{name}'s labels must be {images.shape[0]} integer class indices (one per image), got {got}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise UserError(f"{name}'s labels run {low}..{high}, outside 0..{num_classes - 1} for {num_classes} classes; "
                        "set config.num_classes, or fix the labels")


def _check_output_width(parts: _Parts) -> None:
    """The model must predict exactly the data's classes: one probe forward pass (eval mode, no gradients)."""
    shape = parts.data.input_shape
    net = parts.forward_model
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            width = net(torch.zeros(2, *shape, device=parts.device).contiguous(memory_format=parts.memory_format)).shape
    finally:
        net.train(was_training)
    if len(width) != 2 or width[1] != parts.data.num_classes:
        raise UserError(f"the model outputs {tuple(width[1:])} values per image but the data has "
                        f"{parts.data.num_classes} classes; build it with {parts.data.num_classes} outputs (e.g. "
                        f"num_classes={parts.data.num_classes})")


def _open_folder(parts: _Parts, resume: dict[str, Any] | None) -> None:
    """Under the folder's lock, rank 0: write ``config.json`` for a new run (or check ``last.pt`` is still the
    one resumed from) and open TensorBoard. The first writes of a run: everything was checked before."""
    run_dir, cfg = parts.run_dir, parts.cfg
    if resume is not None:
        run_dir.check_resume_current()
    elif run_dir.create(cfg):
        parts.reporter.message(f"{run_dir.path} held a run that stopped before its first checkpoint; starting it "
                               "again from the beginning")
    if cfg.tensorboard:
        parts.tensorboard = run_dir.tensorboard_writer()
        if parts.tensorboard is None:
            parts.reporter.message("tensorboard is not installed: no event files (pip install tensorboard); "
                                   "training goes on")



def _restore(parts: _Parts, resume: dict[str, Any]) -> _State:
    """The state saved in ``last.pt``, loaded into the parts; metrics after the checkpoint are dropped.

    Weights of another architecture, or an optimizer of another run, are refused in one line naming the
    file (:func:`students.checkpoint.load_state_into`), never half loaded.
    """
    path = parts.run_dir / LAST_CKPT
    if "classes" in parts.data.meta:  # the data on disk may have changed since the run started
        check_classes(resume, parts.data.meta["classes"], str(path))
    load_state_into(parts.model, resume, path)
    if resume.get("loss_state_dict") is not None:  # a feature method's regressors (FitNets)
        load_state_into(parts.loss_fn, resume, path, key="loss_state_dict")
    load_state_into(parts.optimizer, resume, path, key="optimizer")
    if parts.ema is not None and resume.get("ema_state_dict") is not None:
        load_state_into(parts.ema.module, resume, path, key="ema_state_dict")
    meta = resume.get("meta")
    try:
        epoch, elapsed, best = int(meta["epoch"]), float(meta["elapsed_s"]), float(meta["best_top1"])
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{path} has no resume state (epoch, elapsed time, best top-1); it is not a last.pt "
                              "written by distill") from None
    # The step is recomputed from the epoch, so a checkpoint from N ranks resumes on M ranks (where an
    # epoch has a different number of steps) on the same point of the schedule.
    state = _State(epoch=epoch, saved_epoch=epoch, step=epoch * len(parts.data.train), elapsed_before=elapsed, best_top1=best,
                   best_epoch=meta.get("best_epoch"), teacher_top1=meta.get("teacher_top1", parts.models.teacher_top1))
    rng = resume.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and parts.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], parts.device)
    state.records = _resumed_records(parts, meta, epoch)
    if parts.world.is_main:
        parts.run_dir.write_metrics(state.records)
        if state.best_epoch == epoch or resume.get("best_state_dict") is not None:
            _repair_best(parts, resume, state)
    parts.reporter.message(f"resuming {parts.run_dir.path} after epoch {epoch}/{parts.cfg.epochs} "
                           f"(step {state.step})")
    return state


def _repair_best(parts: _Parts, resume: dict[str, Any], state: _State) -> None:
    """``last.pt`` holds the best epoch (its own weights, or ``best_state_dict`` under ``save_every`` > 1):
    rewrite ``best.pt`` from it when a kill came between the two writes."""
    best = parts.run_dir / BEST_CKPT
    try:
        held = load_file(best).get("meta", {}).get("epoch") if best.exists() else None
    except CheckpointError:
        held = None
    if held == state.best_epoch:
        return
    if state.best_epoch == state.epoch:
        kept = {k: v for k, v in resume["meta"].items() if k not in ("records", "world_size", "best_epoch")}
        parts.run_dir.save_best(parts.model, arch=parts.models.arch, meta={**kept, "top1": state.best_top1})
    else:
        weights, meta = resume["best_state_dict"], resume.get("best_meta")
        if not isinstance(weights, dict) or not isinstance(meta, dict) or meta.get("epoch") != state.best_epoch:
            raise CheckpointError(f"{parts.run_dir / LAST_CKPT} carries best-epoch weights that do not match its "
                                  f"best epoch ({state.best_epoch}); start the run again")
        parts.run_dir.save_best(weights, arch=parts.models.arch, meta=meta)
    parts.reporter.message(f"{best} did not hold the best epoch ({state.best_epoch}); rewritten from {LAST_CKPT}")


def _resumed_records(parts: _Parts, meta: dict[str, Any], epoch: int) -> list[dict[str, Any]]:
    """The metrics of epochs 1..``epoch``: from ``last.pt`` itself (which carries them since issue 12, so a
    damaged, truncated or deleted metrics.jsonl is rebuilt), else from metrics.jsonl of an older run.
    Records of epochs after the checkpoint (a kill between the two writes) are dropped."""
    records = meta.get("records")
    if isinstance(records, list) and all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records):
        return [r for r in records if r["epoch"] <= epoch]
    records = [r for r in parts.run_dir.read_metrics() if r["epoch"] <= epoch]  # RunError on a damaged line
    if [r["epoch"] for r in records] != list(range(1, epoch + 1)):
        parts.reporter.message(f"{parts.run_dir / METRICS_FILE} lacks some of epochs 1..{epoch}; the summary's "
                               "speed and accuracy history cover the epochs it has")
    return records


def _teacher_source(members: Sequence[_Member], data: ImageDataset | Loaders) -> TeacherOutputs | None:
    """Where the members' teacher outputs come from: the cache entry of their batch stream when the cache is on
    and the batches can be keyed (the project's ImageDataset), else the live teacher on every step."""
    lead = members[0].parts
    if lead.teacher is None:
        return None
    levels = [j for m in members if isinstance(m.parts.loss_fn, FeatureKD) for j in m.parts.loss_fn.teacher_indices]
    compiled = compiles_teacher(lead.cfg, bool(levels))
    entry = None
    if lead.cfg.teacher_cache and isinstance(data, ImageDataset):
        limit_bytes()  # a malformed $DISTILL_TEACHER_CACHE_GB is refused now, not after the first epoch
        entry = CacheEntry(stream_key(lead.cfg, teacher=lead.teacher, data=data, device=lead.device,
                                      teacher_channels_last=lead.teacher_channels_last,
                                      world_size=lead.world.world_size, rank=lead.world.rank,
                                      compiled_teacher=compiled))
    return TeacherOutputs(lead.teacher, device=lead.device, amp=lead.cfg.amp, levels=levels, entry=entry,
                          compile=compiled)


def _source_line(source: TeacherOutputs, members: Sequence[_Member]) -> str:
    """What the run says about its teacher outputs before the first epoch."""
    cfg = members[0].parts.cfg
    if source.entry is None:
        why = "--teacher-cache off" if not cfg.teacher_cache else "batches from a Python DataLoader have no cache key"
        return f"teacher outputs: live on every step ({why})"
    todo = range(min(m.state.epoch for m in members), cfg.epochs)
    stored = source.entry.recorded(todo)
    if source.levels:
        return (f"teacher outputs: live on every step (the feature method needs the teacher's stage maps); its "
                f"logits are recorded in {source.entry.path}")
    if not stored:
        return f"teacher outputs: live, recorded in {source.entry.path} for later runs with this teacher and batches"
    rest = len(todo) - len(stored)
    return (f"teacher outputs: {len(stored)} of {len(todo)} epochs replayed from {source.entry.path} (the teacher's "
            f"forward pass is skipped)" + (f"; the other {rest} recorded there" if rest else ""))


def _start(parts: _Parts, resume: dict[str, Any] | None, source: TeacherOutputs | None,
           data: ImageDataset | Loaders) -> _State:
    """A fresh state (measuring the teacher first), or the one a resumed run saved."""
    state = _restore(parts, resume) if resume is not None else _State(teacher_top1=parts.models.teacher_top1)
    if parts.teacher is None:
        return state
    if state.teacher_top1 is None:
        def measure() -> float:
            return evaluate(parts.teacher, parts.data.test, device=parts.device, amp=parts.cfg.amp)["top1"]

        key = None  # under torchrun every rank measures: evaluate() is a collective, a cache hit on one rank is not
        if source is not None and isinstance(data, ImageDataset) and parts.cfg.teacher_cache and not parts.world.distributed:
            key = eval_key(parts.cfg, teacher=parts.teacher, data=data, device=parts.device,
                           teacher_channels_last=parts.teacher_channels_last, eval_batch=parts.data.test.batch_size)
        state.teacher_top1 = source.teacher_top1(measure, key) if source is not None else measure()
    parts.reporter.message(f"teacher {parts.cfg.teacher}: top-1 {state.teacher_top1:.2f}% on the "
                           f"{parts.data.eval_set}")
    if resume is None and (warning := teacher_warning(state.teacher_top1, parts.data.num_classes)):
        parts.reporter.message(warning)
    return state


NEAR_CHANCE = 2.0  # a teacher under this many times chance top-1 is "near chance"


def teacher_warning(teacher_top1: float, num_classes: int) -> str | None:
    """A plain warning for a teacher whose test top-1 is near chance (under :data:`NEAR_CHANCE` times
    ``100 / num_classes``): distilling it teaches the student little but the teacher's confusion."""
    chance = 100.0 / num_classes
    if teacher_top1 >= NEAR_CHANCE * chance:
        return None
    return (f"warning: the teacher's top-1 ({teacher_top1:.2f}%) is near chance ({chance:.0f}% with {num_classes} "
            "classes): its outputs carry little to distil. Train it longer (--teacher-epochs, or `distill teacher` "
            "with more --epochs) or check --teacher-ckpt; a student alone does better than one distilled from it")


def _train_epoch(members: Sequence[_Member], epoch: int, reporter: Any, source: TeacherOutputs | None
                 ) -> list[dict[str, Any]]:
    """Reseed, train the members one epoch on shared batches, evaluate when due: each member's metrics record.

    The members share one batch stream (their settings agree but for the student), so each sees the very
    batches and teacher outputs it would see alone; ``train_seconds`` is the shared epoch's.
    """
    lead = members[0].parts
    cfg, loader = lead.cfg, lead.data.train
    _seed_epoch(cfg.stream_seed, epoch)
    loader.set_epoch(epoch)
    for member in members:
        member.parts.loss_fn.set_epoch(epoch)  # DKD's warm-up of the distillation term
        member.parts.trainee.step = member.state.step
    epoch_start = time.perf_counter()
    _call(reporter, "start_epoch", epoch + 1, cfg.epochs, len(loader))
    if source is not None:
        source.begin_epoch(epoch, len(loader))
    stats = train_one_epoch([m.parts.trainee for m in members], loader, device=lead.device, teacher=source,
                            mixer=lead.mixer, amp=cfg.amp, reporter=reporter)
    outputs = source.end_epoch() if source is not None else None
    due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    records = []
    for member, epoch_stats in zip(members, stats):
        member.state.step = int(epoch_stats.pop("steps"))
        record: dict[str, Any] = {"epoch": epoch + 1, **epoch_stats}
        if outputs is not None:
            record["teacher_outputs"] = outputs  # replayed, recorded or live
        if due:
            record.update(_evaluate_epoch(member.parts))
        record["seconds"] = time.perf_counter() - epoch_start  # training plus evaluation
        records.append(record)
    return records


def _evaluate_epoch(parts: _Parts) -> dict[str, float]:
    result = evaluate(parts.forward_model, parts.data.test, device=parts.device, amp=parts.cfg.amp)
    out = {"test_top1": result["top1"], "test_loss": result["loss"]}
    if parts.ema is not None:
        ema_model = parts.with_adapter(parts.ema.module)
        out["ema_top1"] = evaluate(ema_model, parts.data.test, device=parts.device, amp=parts.cfg.amp)["top1"]
    return out


def _check_finite(parts: _Parts, record: dict[str, Any]) -> None:
    """Stop a diverged epoch before anything of it is saved: its mean train loss (every step counts, not
    only the ones the progress checks read), its test loss, and every weight (model and EMA)."""
    for key in ("train_loss", "test_loss"):
        value = record.get(key)
        if value is not None and not math.isfinite(value):
            raise TrainingDiverged(f"the {key.replace('_', ' ')} of epoch {record['epoch']} is {value}")
    nets = [parts.model] + ([parts.ema.module] if parts.ema is not None else [])
    tensors = [t for net in nets for t in net.state_dict().values() if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        bad = next(name for net in nets for name, t in net.state_dict().items()
                   if t.is_floating_point() and not bool(torch.isfinite(t).all()))
        raise TrainingDiverged(f"weights became NaN or infinite in epoch {record['epoch']} (first: {bad})")


def _end_epoch(parts: _Parts, state: _State, record: dict[str, Any], *, save: bool = True) -> None:
    """Record the epoch: metrics files always; ``last.pt``, and ``best.pt`` when it improved, when ``save``
    (rank 0 writes).

    A diverged epoch (:func:`_check_finite`) is not recorded: the run stops with the previous checkpoint."""
    _check_finite(parts, record)
    improved = "test_top1" in record and record["test_top1"] > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = record["test_top1"], record["epoch"]
    state.records.append(record)
    state.epoch = record["epoch"]
    if parts.world.is_main:
        _save_epoch(parts, state, improved, save)
    if save:
        state.saved_epoch = state.epoch
    parts.reporter.end_epoch(record)
    _check_teacher_lead(parts, state, record)


def _save_due(cfg: TrainConfig, epoch: int, last_of_session: bool) -> bool:
    """Whether epoch ``epoch`` (1-based) writes ``last.pt``: every ``cfg.save_every`` epochs, the run's last,
    and the last one this session trains (``--stop-after``)."""
    return epoch % cfg.save_every == 0 or epoch == cfg.epochs or last_of_session


def _check_teacher_lead(parts: _Parts, state: _State, record: dict[str, Any]) -> None:
    """Say once when the student's test top-1 reaches its teacher's: from then on the distillation term pulls it
    toward a weaker model (measured: a 78k student trained 10 epochs alone reaches 78.2%, above its 77.9%
    teacher, and KD at weight 0.9 costs it 1.8 points; docs/RESULTS.md)."""
    top1, teacher = record.get("test_top1"), state.teacher_top1
    if parts.teacher is None or teacher is None or top1 is None or top1 < teacher or state.passed_teacher:
        return
    state.passed_teacher = True
    parts.reporter.message(
        f"warning: the student's top-1 ({top1:.2f}%) has reached its teacher's ({teacher:.2f}%) at epoch "
        f"{record['epoch']}; KD now pulls it toward a weaker model. A stronger teacher (more --teacher-epochs, "
        "a larger model) or a lower --kd-weight usually does better")


def _save_epoch(parts: _Parts, state: _State, improved: bool, save: bool = True) -> None:
    """``last.pt`` first (it carries the metrics records too), then ``best.pt``, then the metrics files: a
    kill between any two writes leaves a resumable run, and never a best.pt without a last.pt.

    Without ``save`` only the metrics files are written; a new best epoch's weights wait on the CPU and go into
    the next ``last.pt`` (``best_state_dict``, so a kill before best.pt is written loses nothing), then best.pt.
    """
    run_dir, arch = parts.run_dir, parts.models.arch
    meta = {"epoch": state.epoch, "step": state.step, "elapsed_s": state.elapsed(), "best_top1": state.best_top1,
            "teacher_top1": state.teacher_top1, "config": parts.cfg.to_dict(), **parts.data.meta}
    if improved and not save:
        state.unsaved_best = ({k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()},
                              {**meta, "top1": state.best_top1})
    elif improved:
        state.unsaved_best = None  # this epoch's weights are the best: last.pt holds them
    if save:
        ema_state = (None if parts.ema is None
                     else {k: v.detach().cpu() for k, v in parts.ema.module.state_dict().items()})
        loss_state = {k: v.detach().cpu() for k, v in parts.loss_fn.state_dict().items()} or None
        best = state.unsaved_best
        extra = {} if best is None else {"best_state_dict": best[0], "best_meta": best[1]}
        run_dir.save_last(parts.model, arch=arch,
                          meta={**meta, "world_size": parts.world.world_size, "records": state.records,
                                "best_epoch": state.best_epoch},
                          optimizer=on_cpu(parts.optimizer.state_dict()), rng=_rng_state(parts.device),
                          ema_state_dict=ema_state, loss_state_dict=loss_state, **extra)
        if improved:
            run_dir.save_best(parts.model, arch=arch, meta={**meta, "top1": state.best_top1})
        elif best is not None:
            run_dir.save_best(best[0], arch=arch, meta=best[1])
        state.unsaved_best = None
    run_dir.write_metrics(state.records)
    if parts.tensorboard is not None:
        for key, value in state.records[-1].items():
            if key != "epoch" and isinstance(value, (int, float)):
                parts.tensorboard.add_scalar(key, value, state.epoch)
        parts.tensorboard.flush()


def train(
    cfg: TrainConfig,
    models: Models,
    data: ImageDataset | Loaders,
    run_dir: str | Path | RunDir,
    *,
    resume: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
    stop_after: int | None = None,
) -> Summary:
    """Train ``models.model`` per ``cfg`` on ``data`` into the run folder ``run_dir``; return the summary.

    Without ``resume`` the folder is created (with ``config.json``) once every setting has been checked; it
    must not hold a checkpoint. ``resume`` is the ``last.pt`` checkpoint of the same run
    (:meth:`RunDir.load_resume`). ``stop_after`` ends this invocation after that many epochs, resumable
    later (for time-limited jobs). :class:`RunError` when another process is writing the folder.
    :func:`train_many` with one run.
    """
    return train_many([cfg], [models], data, [run_dir], resumes=[resume], reporter=reporter, stop_after=stop_after)[0]


def _check_same_settings(cfgs: Sequence[TrainConfig]) -> None:
    """Every setting but the student's name must agree: they decide the shared batches and teacher outputs."""
    base = cfgs[0].replace(student="-", max_params=None)
    for cfg in cfgs[1:]:
        other = cfg.replace(student="-", max_params=None)
        if other != base:
            diff = sorted(k for k, v in other.to_dict().items() if base.to_dict()[k] != v)
            raise ConfigError(f"runs trained together (a sweep's students) must share every setting but the "
                              f"student; {cfg.student} differs in {', '.join(diff)}")


def train_many(
    cfgs: Sequence[TrainConfig],
    models: Sequence[Models],
    data: ImageDataset | Loaders,
    run_dirs: Sequence[str | Path | RunDir],
    *,
    resumes: Sequence[dict[str, Any] | None] | None = None,
    reporter: Reporter | None = None,
    stop_after: int | None = None,
    resume_hint: str | None = None,
    on_checked: Callable[[], None] | None = None,
) -> list[Summary]:
    """Train several students on one batch stream and one source of teacher outputs; their summaries, in order.

    ``cfgs[i]``, ``models[i]``, ``run_dirs[i]`` and ``resumes[i]`` are what :func:`train` takes for run ``i``.
    Every config must equal the others but for ``student`` (and ``max_params``), and every ``models[i].teacher``
    must be the same module (or all None). Each batch is drawn and mixed once and the teacher's outputs for it
    are taken once (live, or replayed from :mod:`distill.teacher_cache`); then every student takes its step, so
    each run's metrics and weights equal those of its own :func:`train`. Runs that stopped at different epochs
    are caught up one epoch at a time (those behind train alone until the others' epoch). ``stop_after`` ends
    this invocation after that many epochs; ``resume_hint`` is how to continue, said when it does (default
    ``--resume RUN_DIR`` for one run). ``on_checked`` is called once everything has been checked, before the
    first folder is written (e.g. to write a sweep's own file only when its runs can start).
    """
    if not (len(cfgs) == len(models) == len(run_dirs)) or not cfgs:
        raise ValueError(f"need as many configs, models and run_dirs (at least one), got {len(cfgs)}, "
                         f"{len(models)} and {len(run_dirs)}")
    resumes = list(resumes) if resumes is not None else [None] * len(cfgs)
    if len(resumes) != len(cfgs):
        raise ValueError(f"resumes has {len(resumes)} entries for {len(cfgs)} runs")
    if stop_after is not None and stop_after < 0:
        raise ConfigError(f"--stop-after must be 0 or more epochs, got {stop_after}")
    if len({id(m.teacher) for m in models}) != 1:
        raise ValueError("runs trained together must have the same teacher module (models[i].teacher)")
    _check_same_settings(cfgs)
    folders = [d if isinstance(d, RunDir) else RunDir(d) for d in run_dirs]
    reporter = _Complete(reporter) if reporter is not None else None
    for cfg in cfgs:
        _check_data(cfg, data)
    # Every setting is checked against the data and the models while building, before a folder is touched: a
    # refused run leaves nothing behind. One process writes each folder (rank 0, holding its lock).
    members = []
    for cfg, m, folder, resume in zip(cfgs, models, folders, resumes):
        mine = reporter if len(cfgs) == 1 else _Labelled(reporter or _Silent(), folder.path.name)
        members.append(_Member(folder.path.name, _build(cfg, m, data, folder, mine), resume))
    world = members[0].parts.world
    reporter = (reporter or _Silent()) if world.is_main else _Null()
    source = _teacher_source(members, data)  # its key and the cache's limit are checked here, before any write
    if on_checked is not None:
        on_checked()
    hint = resume_hint or (f"--resume {folders[0].path}" if len(folders) == 1 else "--resume")
    with contextlib.ExitStack() as stack:
        for member in members:
            stack.enter_context(member.parts.run_dir.writing(enabled=world.is_main))
            if world.is_main:
                _open_folder(member.parts, member.resume)
        try:
            summaries = _run_epochs(members, data, source, reporter, stop_after, hint)
        finally:
            for member in members:
                if member.parts.tensorboard is not None:
                    member.parts.tensorboard.close()
    dist.barrier()  # nobody reads the run folders before rank 0 has written them
    return summaries


def _start_all(members: Sequence[_Member], data: ImageDataset | Loaders, reporter: Any,
               source: TeacherOutputs | None) -> None:
    """Every member's state (the teacher measured once for all), then what the teacher outputs come from."""
    teacher_top1 = None
    for member in members:
        if member.parts.models.teacher_top1 is None and member.resume is None:
            member.parts.models.teacher_top1 = teacher_top1
        member.state = _start(member.parts, member.resume, source, data)
        teacher_top1 = member.state.teacher_top1 if teacher_top1 is None else teacher_top1
    if source is not None:
        _call(reporter, "message", _source_line(source, members))


def _run_epochs(members: list[_Member], data: ImageDataset | Loaders, source: TeacherOutputs | None, reporter: Any,
                stop_after: int | None, hint: str) -> list[Summary]:
    """The loop over epochs, then the summaries (written by rank 0)."""
    cfg = members[0].parts.cfg
    current = members[0]  # the member an error belongs to
    try:
        _start_all(members, data, reporter, source)
        epochs_run = 0
        for epoch in range(min(m.state.epoch for m in members), cfg.epochs):
            if stop_after is not None and epochs_run >= stop_after:
                _call(reporter, "message", f"stopping after {stop_after} epoch(s) as asked; continue with {hint}")
                break
            active = [m for m in members if m.state.epoch == epoch]  # those behind catch up first
            if not active:
                continue
            records = _train_epoch(active, epoch, reporter, source)
            save = _save_due(cfg, epoch + 1, stop_after is not None and epochs_run + 1 >= stop_after)
            for current, record in zip(active, records):
                _end_epoch(current.parts, current.state, record, save=save)
            if len(members) > 1:
                _call(reporter, "end_epoch", _mean_record(records, epoch))
            epochs_run += 1
        summaries = []
        for current in members:
            summaries.append(_summary(current.parts, current.state))
            if current.parts.world.is_main:
                current.parts.run_dir.write_summary(summaries[-1])
    except TrainingDiverged as err:
        current = next((m for m in members if m.name == err.who), current)
        parts, state = current.parts, current.state
        message = f"{err}; lower --lr or check the data. {_kept(parts.run_dir, state)}"
        if parts.world.is_main and state.epoch:  # the summary says so too: never complete, never stale
            _write_stopped_summary(parts, state, message)
        raise TrainingDiverged(message) from None
    except WriteError as err:  # a full or read-only disk: every file is whole, the run resumable
        raise WriteError(f"{err}. {_kept(current.parts.run_dir, current.state, disk=True)}") from None
    except Exception as err:
        world = current.parts.world
        if not (world.distributed and dist.is_peer_failure(err)):
            raise
        dist.stop_listening()
        raise dist.RunStopped(_stopped_message(err, current.parts.run_dir.path, world,
                                                     current.state.saved_epoch)) from None
    return summaries


def _mean_record(records: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """The progress line of an epoch several students trained: means over them (each has its own line too)."""
    keys = [k for k in ("train_loss", "train_top1", "test_top1") if all(k in r for r in records)]
    mean = {key: sum(r[key] for r in records) / len(records) for key in keys}
    return {"epoch": epoch + 1, **mean, "train_img_s": sum(r["train_img_s"] for r in records),
            "seconds": max(r["seconds"] for r in records), "mean_of": len(records)}


def _write_stopped_summary(parts: _Parts, state: _State, reason: str) -> None:
    """The summary of the epochs kept, marked incomplete with why the run stopped (best effort: the error
    being raised matters more than this file)."""
    try:
        if state.unsaved_best is not None:  # the summary names that epoch as the best: best.pt holds it
            parts.run_dir.save_best(state.unsaved_best[0], arch=parts.models.arch, meta=state.unsaved_best[1])
            state.unsaved_best = None
        summary = _summary(parts, state)
        summary.complete = False
        summary.extra["stopped"] = reason
        parts.run_dir.write_summary(summary)
    except Exception as err:  # e.g. a full disk: the diverged run's own error is the one to report
        _logger.warning("could not write %s: %s", parts.run_dir / "summary.json", err)


def _saved_epoch(run_dir: RunDir) -> int:
    """The epoch ``last.pt`` holds on disk (0 when there is none or it cannot be read)."""
    try:
        return int(load_file(run_dir / LAST_CKPT)["meta"]["epoch"]) if (run_dir / LAST_CKPT).exists() else 0
    except (CheckpointError, KeyError, TypeError, ValueError):
        return 0


def _kept(run_dir: RunDir, state: _State, *, disk: bool = False) -> str:
    """Which checkpoint a stopped run kept (as it is on disk), and how to go on from it."""
    saved = _saved_epoch(run_dir)
    if saved and disk:
        return (f"The run is intact: {run_dir / LAST_CKPT} holds epoch {saved}; free some space, then continue with "
                f"--resume {run_dir.path}")
    if saved:
        return (f"{run_dir / LAST_CKPT} keeps epoch {saved}, the last good one: start a new run, or retry from "
                f"there with --resume {run_dir.path}")
    return "No epoch had finished, so no checkpoint was kept: run again (the same --out is fine)"


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _stopped_message(err: BaseException, run_dir: Path, world: dist.DistInfo, saved_epoch: int) -> str:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0][:120]  # gloo prefixes its source location
    if saved_epoch:
        where = f"{run_dir / LAST_CKPT} holds epoch {saved_epoch}: continue with --resume {run_dir}"
    else:
        where = "no epoch had finished, so nothing was saved: run the same command again"
    return (f"rank {world.rank} of {world.world_size}: training stopped because another rank failed or torchrun "
            f"stopped the run ({reason}); the failing rank's error is above. {where}")


def _cost(model: nn.Module, loader: Any) -> tuple[int, int | None, int | None]:
    """Parameters, MACs and FLOPs per image of ``model``; MACs None where fvcore cannot trace a custom module."""
    images, _ = next(iter(loader))
    try:
        cost = students.cost_report(model, tuple(images.shape[1:]))
        return cost.num_params, cost.macs, cost.flops
    except Exception as err:  # a custom module fvcore cannot trace: count what can be counted
        _logger.warning("could not count the MACs of %s: %s", type(model).__name__, err)
        return sum(p.numel() for p in model.parameters()), None, None


def _summary(parts: _Parts, state: _State) -> Summary:
    """The run's :class:`Summary`: size, accuracies (flip-TTA once, at the end), settings, speed, provenance."""
    cfg, records = parts.cfg, state.records
    last = records[-1] if records else {}
    done = bool(records) and records[-1]["epoch"] == cfg.epochs
    tta_top1 = None
    if done and cfg.tta:
        tta_top1 = evaluate(parts.forward_model, parts.data.test, device=parts.device, amp=cfg.amp, tta=True)["top1"]
    num_params, macs, flops = _cost(_unwrap(parts.forward_model), parts.data.test)
    train_rates = [r["train_img_s"] for r in records]
    loss_fn = parts.loss_fn
    return Summary(
        kind=cfg.kind, complete=done, epochs_done=last.get("epoch", 0), epochs=cfg.epochs, model=cfg.model_name,
        arch=parts.models.arch, student=cfg.student if cfg.kind == "run" else None, num_params=num_params,
        macs=macs, flops=flops, top1_last=last.get("test_top1"),
        top1_best=state.best_top1 if state.best_top1 >= 0 else None, top1_ema=last.get("ema_top1"),
        top1_tta=tta_top1, eval_set=parts.data.eval_set, teacher=cfg.teacher if cfg.uses_teacher else None,
        teacher_top1=state.teacher_top1 if cfg.uses_teacher else None,
        kd={"loss": cfg.kd_loss, "temperature": loss_fn.temperature, "kd_weight": loss_fn.kd_weight,
            "ce_weight": round(loss_fn.ce_weight, 12), **({"feat_weight": loss_fn.feat_weight} if isinstance(
                loss_fn, FeatureKD) else {})} if cfg.uses_teacher else None,
        mixing={"mixup": cfg.mixup, "cutmix": cfg.cutmix, "prob": cfg.mix_prob},
        train_img_s=float(np.median(train_rates)) if train_rates else None, wall_s=state.elapsed(),
        device=device_name(parts.device), torch=torch.__version__, git_commit=git_commit(), data=parts.data.source,
        train_images=parts.data.train_images, test_images=parts.data.test_images,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), world_size=parts.world.world_size,
        extra={**parts.models.extra_summary, **_outputs_summary(records)}, run_dir=parts.run_dir.path,
    )


def _outputs_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many epochs took the teacher's outputs from the cache, recorded them, or ran it live."""
    modes = [r["teacher_outputs"] for r in records if "teacher_outputs" in r]
    if not modes:
        return {}
    return {"teacher_outputs": {mode: modes.count(mode) for mode in ("replayed", "recorded", "live")}}


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)
