"""The Python entry point: :func:`fit` trains any ``nn.Module``, with or without a teacher, from a notebook.

>>> from distill import TrainConfig, fit
>>> summary = fit(student, train_loader, test_loader, teacher=teacher,
...               config=TrainConfig(epochs=5, lr=0.05, kd_weight=0.9), out="runs/my-student")
>>> summary.top1_best, summary.run_dir

``fit`` builds what the CLI's pipeline would otherwise build from names, then calls the same engine
function (:func:`distill.engine.train`) that ``distill run`` ends in, so a run written here is an ordinary
run folder: ``distill compare`` reads it, and ``distill eval`` / ``export`` read students and timm
teachers (a custom module's checkpoint needs that module to be rebuilt in Python first).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import students
from students.common.errors import UserError
from teachers import FrozenTeacher

from .config import TrainConfig
from .feature_kd import feature_levels, is_feature_method
from .data import ImageDataset
from . import engine
from .batches import Loaders
from .engine import Models, Reporter
from .rundir import RunDir, RunError, Summary

__all__ = ["fit", "module_arch"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def module_arch(model: nn.Module, num_classes: int) -> dict[str, Any]:
    """How a checkpoint describes ``model``: a student's spec, or the class of any other module."""
    if isinstance(model, students.CifarResNet):
        return students.student_arch(model)
    cls = type(model)
    return {"family": "custom", "class": f"{cls.__module__}.{cls.__qualname__}", "num_classes": num_classes}


def _name(model: nn.Module) -> str:
    return model.spec_name if isinstance(model, students.CifarResNet) else type(model).__name__


def _num_classes(config: TrainConfig, student: nn.Module, train: Batches) -> int:
    """From the config, the dataset's ``classes``, the student's ``num_classes``, or one forward pass. The data
    comes first: a student built for other classes is refused by the engine's output-width check, never trained
    on the wrong number of classes."""
    classes = getattr(getattr(train, "dataset", None), "classes", None)
    if config.num_classes is not None:
        if classes and len(classes) != config.num_classes:
            raise UserError(f"config.num_classes is {config.num_classes} but the training data has {len(classes)} "
                            "classes")
        return config.num_classes
    if classes:
        return len(classes)
    if isinstance(getattr(student, "num_classes", None), int):
        return student.num_classes
    images, _ = next(iter(train))
    was_training = student.training
    student.eval()
    with torch.no_grad():
        n = int(student(images[:1]).shape[1])
    student.train(was_training)
    return n


def _data(student: nn.Module, train: ImageDataset | Batches, test: Batches | None,
          config: TrainConfig) -> tuple[ImageDataset | Loaders, int]:
    if isinstance(train, ImageDataset):
        if test is not None:
            raise ValueError("test must be None when train is an ImageDataset: its own test split is used")
        return train, train.num_classes
    if test is None:
        raise ValueError("test is required when train is an iterable of batches (e.g. a DataLoader)")
    n = _num_classes(config, student, train)
    classes = getattr(getattr(train, "dataset", None), "classes", None)
    source = f"python {type(train).__name__}"
    return Loaders(train, test, n, classes=list(classes) if classes else None, source=source), n


def _settings(config: TrainConfig | None, student: nn.Module, teacher: nn.Module | None,
              data: ImageDataset | Loaders) -> TrainConfig:
    """The config as recorded: the student's and teacher's names and the data filled in."""
    config = config if config is not None else TrainConfig()
    if teacher is None and config.teacher is not None:
        raise ValueError(f"config.teacher is {config.teacher!r} but no teacher was passed; pass teacher=MODULE "
                         "(fit does not build teachers by name; the distill run command does)")
    teacher_name = None if teacher is None else (config.teacher or _name(teacher))
    source = data.source if isinstance(data, ImageDataset) else config.data
    return config.replace(kind="run", student=_name(student), teacher=teacher_name, data=source)


def _out_dir(out: str | Path | None, name: str) -> RunDir:
    if out is None:
        return RunDir(tempfile.mkdtemp(prefix=f"distill-{name}-"))
    folder = RunDir(out)
    if folder.holds_run():
        raise RunError(f"out={str(out)!r} already holds a run; pass a new folder")
    if folder.path.exists() and not folder.path.is_dir():
        raise RunError(f"out={str(out)!r} exists and is not a folder")
    return folder


def fit(
    student: nn.Module,
    train: ImageDataset | Batches,
    test: Batches | None = None,
    *,
    teacher: nn.Module | None = None,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    reporter: Reporter | None = None,
) -> Summary:
    """Train ``student`` (distilling from ``teacher`` when given) and return the run's :class:`Summary`.

    Args:
        student: any classifier ``nn.Module`` returning logits (B x classes); trained in place.
        train: the project's :class:`~distill.data.ImageDataset` (kept on the device and augmented there
            per ``config``; ``test`` must then be None), or any sized iterable of ``(images, labels)``
            batches such as a torch ``DataLoader`` (already augmented and normalised; moved to the device
            batch by batch).
        test: batches to evaluate on every ``config.eval_every`` epochs (with an iterable ``train``).
        teacher: any ``nn.Module`` with the same classes; frozen here (eval mode, no gradients).
        config: the settings (:class:`TrainConfig`); None for the defaults. Its ``student``, ``teacher``
            and ``data`` are overwritten with the names of what is passed, as recorded in ``config.json``.
        out: the run folder, created if needed (it must not hold a run); None for a new temporary folder.
        reporter: receives progress (see :class:`distill.engine.Reporter`); None prints the run's messages
            and a line per epoch (:class:`distill.engine.EpochLines`).

    Returns:
        The summary also written to ``out/summary.json``; ``summary.run_dir`` is the folder.
    """
    data, num_classes = _data(student, train, test, config if config is not None else TrainConfig())
    cfg = _settings(config, student, teacher, data)
    folder = _out_dir(out, _name(student))
    frozen = None
    if teacher is not None:
        frozen = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        if is_feature_method(cfg.kd_loss):  # a teacher without stage features fails before out is written
            feature_levels(frozen, role="teacher")
    models = Models(model=student, arch=module_arch(student, num_classes), teacher=frozen,
                    extra_summary={"classes": list(data.classes)} if data.classes else {})
    reporter = reporter if reporter is not None else engine.EpochLines()
    return engine.train(cfg, models, data, folder, reporter=reporter)  # creates the folder once all is checked

