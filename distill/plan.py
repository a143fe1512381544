"""What a run will do and cost, worked out before it starts: the first lines ``distill run`` prints.

A :class:`RunPlan` names the device, the data, where the teacher comes from (a checkpoint, the teacher
store, or trained first with its recipe and epochs), the sizes of the models, and a time per phase. The
times come from :func:`seconds_per_image`: one untimed warm-up step and one or two timed steps at a small
batch (:data:`TIMING_BATCH` images) per model, extrapolated to the run's images, epochs and evaluations, so
planning costs seconds even for a ResNet-50 on a CPU (about 20-30 s on two loaded cores, with a progress line). They are estimates: the batch size of the real run, the machine's load and
evaluation details move them; they are meant to tell minutes from hours from days.

:func:`distill.pipeline.plan_run` fills a plan from a :class:`~distill.config.TrainConfig`; only the CLI
prints it (:meth:`RunPlan.lines`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.common.sizes import format_count

from .device import autocast, memory_format_for

__all__ = ["TIMING_BATCH", "TOO_LONG_S", "Phase", "TeacherPlan", "RunPlan", "seconds_per_image", "duration",
           "eval_passes"]

TIMING_BATCH = 32  # images per timed step: small, so a large teacher on a CPU is timed in seconds
TIMING_STEPS = 2  # timed steps at most, after the untimed warm-up (the first step pays one-off costs)
SLOW_STEP_S = 5.0  # seconds: a warm-up step this slow is itself the measurement (big models on a CPU)
TOO_LONG_S = 12 * 3600.0  # seconds: a plan longer than this is called out, with the flags that shorten it

TimingProgress = Callable[[str, int, int], None]
"""Called as ``progress(what, done, total)`` while steps are timed."""


def seconds_per_image(model: nn.Module, *, train: bool, image_size: int, num_classes: int, device: torch.device,
                      channels_last: bool = False, amp: bool = True, batch: int = TIMING_BATCH,
                      steps: int = TIMING_STEPS, warm_up: bool = True, what: str = "",
                      progress: TimingProgress | None = None) -> float:
    """Median seconds per image of a training step (forward, backward, SGD step) or of an inference
    forward of ``model``, from up to ``steps`` timed steps of ``batch`` random images.

    The first step pays one-off costs (oneDNN/cuDNN kernel choice, allocations) and is not counted, unless
    ``warm_up`` is False (the model ran these shapes just before) or it took longer than ``SLOW_STEP_S``:
    then one-off costs are a small part of it, and it is the measurement. A timed step over ``SLOW_STEP_S``
    / 2 ends the timing too. ``model`` is changed (moved, BatchNorm statistics updated): pass a throwaway
    copy. The optimiser's learning rate is 0, so the weights themselves do not move.
    """
    fmt = memory_format_for(channels_last)
    model = model.to(device).to(memory_format=fmt).train(train)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad] or [torch.zeros(1)], lr=0.0)
    cast = functools.partial(autocast, device, amp)

    def step() -> float:
        start = time.perf_counter()
        if train:
            with cast():
                loss = nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), cast():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    total = steps + int(warm_up)
    report = progress or (lambda what, done, total: None)
    report(what, 0, total)
    times = []
    if warm_up:
        warm = step()
        report(what, 1, total)
        if warm > SLOW_STEP_S:
            times.append(warm)
    while len(times) < steps and not (times and times[-1] > SLOW_STEP_S / 2):
        times.append(step())
        report(what, min(len(times) + int(warm_up), total), total)
    report(what, total, total)
    return sorted(times)[len(times) // 2] / batch


def eval_passes(epochs: int, eval_every: int, ema: bool, tta: bool) -> int:
    """Forward passes over the test images a run makes: each evaluated epoch (twice with EMA), and flip-TTA
    (two passes) at the end."""
    evaluated = sum(1 for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs)
    return evaluated * (2 if ema else 1) + (2 if tta else 0)


def duration(seconds: float) -> str:
    """``93784 -> '1d 2h03m'``: days, hours and minutes for long times, seconds for short ones."""
    if seconds < 1:
        return "<1s"
    seconds = int(round(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d {h}h{m:02d}m"
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@dataclass(frozen=True)
class Phase:
    """One step of the plan and its estimated wall time."""

    name: str  # "teacher training", "teacher evaluation", "distillation", "training"
    seconds: float
    detail: str  # what was extrapolated, e.g. "30 epochs x 50,000 images"
    per_epoch_s: float | None = None  # seconds per epoch, for the advice on long plans


@dataclass(frozen=True)
class TeacherPlan:
    """Where the teacher of a ``distill run`` comes from."""

    name: str
    source: str  # "checkpoint", "stored" or "train"
    path: Path  # the checkpoint / run folder, or the store folder (written only when source is "train")
    num_params: int
    recipe: dict[str, Any] | None = None  # how it is (or was) trained: distill.recipes.teacher_recipe_record
    top1: float | None = None  # percent, of a stored teacher
    others: tuple[str, ...] = ()  # stored teachers of the same model and data trained with other settings


@dataclass(frozen=True)
class RunPlan:
    """What ``distill run`` / ``distill teacher`` will do; :meth:`lines` is what the CLI prints first."""

    kind: str  # "run" or "teacher"
    device: str  # device_name(): "cpu (x86_64, 2 threads)" or the GPU's name
    device_type: str  # "cpu" or "cuda"
    data: str  # --data, and how it was subset or split
    train_images: int
    test_images: int
    num_classes: int
    image_size: int  # pixels, square
    model: str  # the student (or, for kind "teacher", the teacher being trained)
    num_params: int
    macs: int | None  # per image; None where it could not be counted
    epochs: int
    teacher: TeacherPlan | None = None
    phases: tuple[Phase, ...] = ()
    timing: str = ""  # how the phases were estimated
    notes: tuple[str, ...] = field(default_factory=tuple)
    cache: str | None = None  # what the teacher-output cache does for the run (distill.teacher_cache.CachePlan)

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def too_long(self) -> bool:
        return self.total_seconds > TOO_LONG_S

    def with_phases(self, phases: tuple[Phase, ...], timing: str, cache: str | None = None) -> RunPlan:
        return replace(self, phases=phases, timing=timing, cache=cache)

    def describe_lines(self) -> list[str]:
        """The plan without the time estimate: device, data, teacher source, model sizes."""
        macs = f", {format_count(self.macs)} MACs per image" if self.macs else ""
        what = "student" if self.kind == "run" else "model"
        lines = [
            f"  device    {self.device}",
            f"  data      {self.data}: {self.train_images:,} train / {self.test_images:,} test images, "
            f"{self.num_classes} classes, {self.image_size}x{self.image_size} px",
            f"  {what:<9} {self.model}: {self.num_params:,} params{macs}, {self.epochs} epoch"
            + ("s" if self.epochs != 1 else ""),
        ]
        lines += self._teacher_lines()
        return lines + [f"  note      {note}" for note in self.notes]

    def _teacher_lines(self) -> list[str]:
        t = self.teacher
        if t is None:
            return [] if self.kind == "teacher" else ["  teacher   none: plain cross-entropy training"]
        size = f"{t.num_params:,} params"
        trained = ""
        if t.recipe:  # how a stored or checkpointed teacher was trained, as its run recorded it
            recipe = f" with {t.recipe['name']}" if t.recipe.get("name") else ""
            trained = (f", trained {t.recipe['epochs']} epochs{recipe} (label smoothing "
                       f"{t.recipe.get('label_smoothing')})")
        if t.source == "checkpoint":
            return [f"  teacher   {t.name} ({size}) from checkpoint {t.path}{trained}"]
        if t.source == "stored":
            top1 = f", top-1 {t.top1:.2f}%" if t.top1 is not None else ""
            return [f"  teacher   {t.name} ({size}) stored in {t.path}{trained}{top1}"]
        r = t.recipe or {}
        settings = (f"{r.get('optimizer')} lr {r.get('lr')}, {r.get('schedule')}, label smoothing "
                    f"{r.get('label_smoothing')}, weight decay {r.get('weight_decay')}, batch {r.get('batch_size')}")
        lines = [f"  teacher   {t.name} ({size}): none stored for this data and recipe, so it is trained first "
                 f"for {r.get('epochs')} epochs with recipe {r.get('name')} ({settings}), then stored in {t.path}"]
        lines += [f"            also stored, trained with other settings: {other}" for other in t.others]
        return lines

    def estimate_lines(self) -> list[str]:
        """The time per phase, the total, and plain advice when it is too long for this machine."""
        if not self.phases:
            return []
        lines = [f"  cache     {self.cache}"] if self.cache else []
        lines.append(f"  estimate  {self.timing}")
        for p in self.phases:
            lines.append(f"            {p.name:<19} {duration(p.seconds):>10}   ({p.detail})")
        lines.append(f"            {'total':<19} {duration(self.total_seconds):>10}")
        if self.too_long:
            lines += self._advice()
        return lines

    def _advice(self) -> list[str]:
        """Say plainly that the plan is too long for this device, and name the flags that shorten it."""
        lines = [f"  WARNING   about {duration(self.total_seconds)} on {self.device_type}: far too long to be useful "
                 f"here (more than {duration(TOO_LONG_S)}). To make it sensible:"]
        by_name = {p.name: p for p in self.phases}
        teacher_training = by_name.get("teacher training")
        if teacher_training is not None:
            lines.append("            --teacher-ckpt RUN: distil from a teacher you already trained "
                         "(`distill teacher ...`), skipping teacher training")
            if teacher_training.per_epoch_s:
                lines.append(f"            --teacher-epochs N: one teacher epoch takes about "
                             f"{duration(teacher_training.per_epoch_s)} here")
            lines.append("            a smaller --teacher, e.g. resnet18 or a student spec such as "
                         "r3_111_c32-64-128")
        main = by_name.get("distillation") or by_name.get("training")
        if main is not None and main.per_epoch_s:
            lines.append(f"            --epochs N: one {'student ' if self.kind == 'run' else ''}epoch takes about "
                         f"{duration(main.per_epoch_s)} here")
        fraction = max(1, self.train_images // 10)
        lines.append(f"            --train-subset N: every epoch scales with the training images, e.g. "
                     f"--train-subset {fraction} is a tenth of the time per epoch")
        if self.device_type == "cpu":
            lines.append("            or run on a machine with a CUDA GPU (--device cuda)")
        return lines

    def lines(self) -> list[str]:
        return self.describe_lines() + self.estimate_lines()

