"""Settings of one training run, validated on creation and saved as ``config.json`` in the run directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from students.errors import UserError
from students.spec import suggest

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "ConfigError"]

OPTIMIZERS = ("sgd", "adamw", "adam", "adadelta", "adagrad", "rmsprop")
SCHEDULES = ("cosine", "sgdr", "multistep", "onecycle", "constant")
KD_LOSS_NAMES = ("kd", "dkd", "dist")
TEACHER_MODES = ("cifar", "upsample")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(UserError):
    """An invalid combination of training settings."""


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(options)}{suggest(value, list(options))}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run computes. Defaults are a sound CIFAR-10 KD recipe.

    ``teacher`` is None for training without a teacher (plain cross-entropy): the "reference" runs and
    ``distill teacher`` itself. ``lr`` is the peak learning rate for ``batch_size`` images per step.
    """

    kind: str = "run"  # "run" (a student, with or without a teacher) or "teacher"
    student: str = "r4_3323"
    num_classes: int | None = None  # None: taken from the data
    max_params: int | None = None
    init_ckpt: str | None = None  # start from this student checkpoint (architecture and weights): pruned runs
    teacher: str | None = None
    teacher_ckpt: str | None = None
    teacher_mode: str | None = None  # None: the teacher's default (cifar for CNNs)
    teacher_pretrained: bool = False
    teacher_weights: str | None = None
    teacher_top1: float | None = None  # measured before distillation, percent
    data: str = "cifar10"
    train_subset: int | None = None  # images; None = all
    test_subset: int | None = None
    val_split: int = 0  # images carved from train for validation (then "test" metrics are validation metrics)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # weight decay on BN and biases (off by default)
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    sgdr_t0: int = 10  # epochs of the first SGDR cycle
    sgdr_mult: int = 2  # each SGDR cycle is this many times longer than the last
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the run (or epochs if > 1)
    gamma: float = 0.1
    kd_loss: str = "kd"
    temperature: float | None = None  # None: the loss's published default (kd 4, dkd 4, dist 1)
    alpha: float | None = None  # weight of the distillation term, CE gets 1 - alpha; None: the loss's default
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(a, a) for MixUp; 0 = off
    cutmix: float = 0.0  # Beta(a, a) for CutMix; 0 = off
    mix_prob: float = 1.0  # probability a batch is mixed at all
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0  # side of the cutout square in pixels; 0 = off
    ema: bool = True
    ema_decay: float = 0.999
    tta: bool = True  # also report flip test-time augmentation
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (never on CPU)
    channels_last: bool = True  # NHWC activations, on CUDA and CPU
    compile: bool = False
    seed: int = 0
    eval_every: int = 1  # epochs
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("run", "teacher"):
            raise ConfigError(f"kind must be run or teacher, got {self.kind!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("kd_loss", self.kd_loss, KD_LOSS_NAMES)
        _choice("device", self.device, DEVICES)
        if self.teacher_mode is not None:
            _choice("teacher_mode", self.teacher_mode, TEACHER_MODES)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")
        for name in ("alpha", "label_smoothing", "mix_prob", "min_lr_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.label_smoothing >= 1.0:
            raise ConfigError("--label-smoothing must be below 1")
        for name in ("mixup", "cutmix", "weight_decay", "momentum", "warmup_epochs", "cutout", "crop_padding"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be between 0 and 1, got {self.ema_decay}")
        if self.val_split < 0:
            raise ConfigError(f"--val-split must not be negative, got {self.val_split}")
        if self.sgdr_t0 < 1 or self.sgdr_mult < 1:
            raise ConfigError("--sgdr-t0 and --sgdr-mult must be at least 1")
        if any(m <= 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"--milestones must be increasing and positive, got {list(self.milestones)}")
        if self.teacher_ckpt and not self.teacher:
            raise ConfigError("--teacher-ckpt needs --teacher NAME (the checkpoint's model name)")
        if self.kind == "teacher" and not self.teacher:
            raise ConfigError("distill teacher needs --teacher NAME")

    @property
    def uses_teacher(self) -> bool:
        return self.kind == "run" and self.teacher is not None

    @property
    def model_name(self) -> str:
        """The model this run trains: the student, or the teacher for ``distill teacher``."""
        return self.teacher if self.kind == "teacher" else self.student  # type: ignore[return-value]

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config has unknown settings {unknown}; was it written by a newer version?")
        data = dict(data)
        if "milestones" in data:
            data["milestones"] = tuple(data["milestones"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ConfigError(f"cannot read run config {path}: {err}") from None
