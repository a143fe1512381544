"""Settings of one training run, validated on creation and saved as ``config.json`` in the run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from students.common.errors import UserError
from students.common.files import atomic_write_text
from students.spec import DEFAULT_WEIGHT_INIT, WEIGHT_INITS, suggest

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "ConfigError", "read_settings"]

OPTIMIZERS = ("sgd", "adamw", "adam", "adadelta", "adagrad", "rmsprop")
SCHEDULES = ("cosine", "sgdr", "multistep", "onecycle", "constant")
LOGIT_KD_LOSSES = ("kd", "dkd", "dist")
# Feature distillation (distill.feature_kd): a feature term alone (with CE) or beside a logit loss.
FEATURE_KD_NAMES = ("fitnet", "at", *(f"{lg}+{ft}" for lg in LOGIT_KD_LOSSES for ft in ("fitnet", "at")))
KD_LOSS_NAMES = LOGIT_KD_LOSSES + FEATURE_KD_NAMES
TEACHER_MODES = ("cifar", "upsample")
DEVICES = ("auto", "cpu", "cuda")
KINDS = ("run", "teacher")
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "kd_loss": KD_LOSS_NAMES, "device": DEVICES,
           "teacher_mode": TEACHER_MODES, "kind": KINDS, "weight_init": WEIGHT_INITS}


class ConfigError(UserError):
    """An invalid combination of training settings."""


# Pixels: every dataset is decoded to image_size x image_size images (distill.data.load_dataset's image_size).
MAX_IMAGE_SIDE = 1024


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------------ the typed schema
#
# Every value, whether it comes from a flag, a JSON or YAML file, a recipe or Python, goes through
# :func:`coerce_setting` in TrainConfig.__post_init__: converted to its field's type when that is unambiguous
# (YAML reads ``lr: 1e-3`` as a string; ``"0.1"`` is a number), refused in one line naming the field otherwise
# (booleans only as booleans, lists only as lists). Then :data:`BOUNDS` keeps every number in a range that no
# sensible run leaves and that cannot hang or overflow anything downstream.

# Inclusive bounds of numeric settings (None: open). Far beyond any real run, short of a hang or an overflow.
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1  # numpy's and most tools' seed range
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "num_classes": (2, 1_000_000), "max_params": (1, 10**12), "teacher_top1": (0.0, 100.0),
    "teacher_epochs": (1, MAX_EPOCHS), "teacher_lr": (None, 1e3), "image_size": (8, 1024),
    "train_subset": (1, 10**9), "test_subset": (1, 10**9), "val_split": (0, 10**9), "epochs": (1, MAX_EPOCHS),
    "batch_size": (1, 1 << 20), "lr": (None, 1e3), "momentum": (0.0, 0.999999), "weight_decay": (0.0, 10.0),
    "warmup_epochs": (0.0, MAX_EPOCHS), "min_lr_ratio": (0.0, 1.0), "sgdr_t0": (1, MAX_EPOCHS),
    "sgdr_mult": (1, 100), "gamma": (1e-12, 10.0), "temperature": (None, 1e3), "kd_weight": (0.0, 1.0),
    "kd_warmup_epochs": (0.0, MAX_EPOCHS), "feat_weight": (0.0, 1e9), "label_smoothing": (0.0, 0.999999),
    "mixup": (0.0, 1e3), "cutmix": (0.0, 1e3), "mix_prob": (0.0, 1.0), "crop_padding": (0, 1023),
    "cutout": (0, 1024), "ema_decay": (None, None), "seed": (0, MAX_SEED), "data_seed": (0, MAX_SEED),
    "eval_every": (1, MAX_EPOCHS), "save_every": (1, MAX_EPOCHS),
}
MAX_MILESTONES = 1000
LEGACY_WEIGHT_INIT = "kaiming-fan-out"  # what every student started with before the setting existed
DATASET_NAMES = ("cifar10", "cifar100")  # torchvision's datasets, by name; anything else is a path


def data_name(spec: str) -> str | None:
    """The dataset ``spec`` names (``cifar10``, ``CIFAR-10``, ``cifar100``), or None when it is a path.

    A name is a name even where a folder of that name exists: ``--data cifar10`` never silently reads a
    ``./cifar10`` folder of the working directory; a folder is given as a path (``./cifar10``)."""
    text = str(spec).strip()
    if "/" in text or "\\" in text or text.startswith("~") or text.startswith("."):
        return None
    name = text.lower().replace("-", "")
    return name if name in DATASET_NAMES else None


def resolve_data(spec: str) -> str:
    """What a run records as its data: a dataset's name, or the absolute path of an existing folder or
    archive (so a config read back elsewhere finds the same files, or says they are missing); anything else
    as given (a path that does not exist is refused when loaded; a Python dataset's description is a record)."""
    name = data_name(spec)
    if name is not None:
        return name
    path = Path(str(spec).strip()).expanduser()
    return str(path.absolute()) if str(spec).strip() and path.exists() else str(spec)


def _field_kinds() -> dict[str, tuple[str, bool]]:
    """Each TrainConfig field's base type (``int``, ``float``, ``bool``, ``str``, ``tuple``) and whether None is allowed."""
    kinds = {}
    for f in fields(TrainConfig):
        parts = [p.strip() for p in str(f.type).split("|")]
        kinds[f.name] = ("tuple" if parts[0].startswith("tuple") else parts[0], "None" in parts)
    return kinds


def _shown(value: Any) -> str:
    text = repr(value)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({type(value).__name__})"


def _as_number(value: Any) -> int | float | None:
    """An int or float for numbers and numeric strings ("1e-3", " 30 "); None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) and len(value) <= 64:
        text = value.strip().replace("_", "")
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
    return None


def coerce_setting(name: str, value: Any) -> Any:
    """``value`` as TrainConfig field ``name`` needs it, or :class:`ConfigError` naming the field and the type.

    Numbers may come as numeric strings; a whole number may come as a float with no fraction (``1e3``);
    booleans must be booleans (the string ``"false"`` is refused, not read as true); ``milestones`` must be a
    list of numbers.
    """
    kind, optional = _KINDS[name]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{_flag(name)} needs {_NEEDS[kind]}, got null")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_flag(name)} needs true or false, got {_shown(value)}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{_flag(name)} needs a name (text), got {_shown(value)}")
    if kind == "tuple":
        if not isinstance(value, (list, tuple)) or len(value) > MAX_MILESTONES:
            raise ConfigError(f"{_flag(name)} needs a list of at most {MAX_MILESTONES} numbers, got {_shown(value)}")
        return tuple(_number(name, v, "float") for v in value)
    return _number(name, value, kind)


def _number(name: str, value: Any, kind: str) -> int | float:
    number = _as_number(value)
    if number is None:
        whole = "a whole number" if kind == "int" else "a number"
        raise ConfigError(f"{_flag(name)} must be {whole}, got {_shown(value)}")
    if kind == "int" and isinstance(number, float):
        if not (math.isfinite(number) and number.is_integer()):
            raise ConfigError(f"{_flag(name)} must be a whole number, got {value!r}")
        return int(number)
    return float(number) if kind == "float" else number


_NEEDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a name (text)",
          "tuple": "a list of numbers"}


def check_setting(name: str, value: Any) -> Any:
    """:func:`coerce_setting`, then the checks one field can make alone: finite, within :data:`BOUNDS`. Settings
    files are checked value by value with this, so an error names the file; TrainConfig then checks how
    the fields combine."""
    value = coerce_setting(name, value)
    if name in CHOICES and value is not None:
        _choice(name, value, CHOICES[name])
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{_flag(name)} must be a finite number, got {v}")
    low, high = BOUNDS.get(name, (None, None))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (low is not None and value < low) or (high is not None and value > high)):
        span = f"{_fmt(low)}..{_fmt(high)}" if low is not None and high is not None else (
            f"at least {_fmt(low)}" if low is not None else f"at most {_fmt(high)}")
        raise ConfigError(f"{_flag(name)} {value!r} is out of range; use {span}")
    if name == "milestones" and any(m > MAX_EPOCHS for m in value):
        raise ConfigError(f"--milestones {list(value)} go beyond {MAX_EPOCHS} epochs")
    return value


def _check_bounds(cfg: Any) -> None:
    """Every number within :data:`BOUNDS` (NaN and infinities were refused before)."""
    for name in (*BOUNDS, "milestones"):
        check_setting(name, getattr(cfg, name))


def _fmt(value: float | None) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _check_numbers(cfg: Any) -> None:
    """Refuse non-finite numbers in every field, fractional whole numbers, and augmentations larger than an image.

    Runs first in ``__post_init__``: NaN passes every ``<``/``>`` range check, so it must be caught before them.
    """
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        whole = str(f.type).split("|")[0].strip() == "int"
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{_flag(f.name)} must be a finite number, got {v}")
            if whole and v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise ConfigError(f"{_flag(f.name)} must be a whole number, got {v!r}")
    # With padding p < side, every random crop still shows part of the image; cutout can at most cover it.
    if not 8 <= cfg.image_size <= MAX_IMAGE_SIDE:
        raise ConfigError(f"--image-size {cfg.image_size} is not a usable image side; use 8..{MAX_IMAGE_SIDE} pixels "
                          "(32 for CIFAR-style data)")
    side = cfg.image_size
    if cfg.crop_padding >= side:
        raise ConfigError(
            f"--crop-padding {cfg.crop_padding} is not smaller than the {side}x{side} images; "
            f"use 0..{side - 1} pixels (4 is usual)"
        )
    if cfg.cutout > side:
        raise ConfigError(
            f"--cutout {cfg.cutout} is larger than the {side}x{side} images; "
            f"use 0..{side} pixels (8 to 16 is usual)"
        )


def _is_student_spec(name: str) -> bool:
    """True for a student spec or preset (``r4_3323``), which have no timm weights; False for timm names."""
    from students.registry import resolve  # imported here: the settings module stays light
    from students.spec import SpecError

    try:
        resolve(name)
        return True
    except SpecError:
        return False


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
    student: str = "r4_3323"  # student spec or preset; for distill.fit, the custom module's class name
    num_classes: int | None = None  # None: taken from the data
    max_params: int | None = None  # parameters; refuse a bigger student
    init_ckpt: str | None = None  # start from this student checkpoint (architecture and weights): pruned runs
    teacher: str | None = None  # timm name or student spec; None: no teacher (plain cross-entropy)
    teacher_ckpt: str | None = None  # checkpoint file or run directory of the teacher
    teacher_mode: str | None = None  # None: the teacher's default (cifar for CNNs)
    teacher_pretrained: bool = False
    teacher_weights: str | None = None  # local pretrained state dict
    teacher_top1: float | None = None  # percent, measured before distillation
    teacher_epochs: int | None = None  # epochs of a teacher `distill run` trains itself; None: --epochs
    teacher_lr: float | None = None  # peak lr of a teacher `distill run` trains itself; None: its recipe's
    data: str = "cifar10"
    image_size: int = 32  # pixels, square: every image is resized to this side when decoded (32: CIFAR-style)
    train_subset: int | None = None  # images; None = all
    test_subset: int | None = None  # images; None = all
    val_split: int = 0  # images carved from train for validation (then "test" metrics are validation metrics)
    epochs: int = 30
    batch_size: int = 256  # images per step, per process
    lr: float = 0.1  # peak learning rate, for batch_size images per step
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # L2 coefficient, decoupled for AdamW
    decay_norm_and_bias: bool = False  # weight decay on BN and biases (off by default)
    # One-cycle: at CPU scale (benchmarks/kd_ablation.py, 2 seeds) KD students reached 74.47% with it against
    # 73.94% with cosine + 1 warm-up epoch; students without a teacher were even (71.85% / 71.97%).
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0  # epochs of linear warm-up from 0 (cosine, sgdr, constant; one-cycle ramps its own)
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    sgdr_t0: int = 10  # epochs of the first SGDR cycle
    sgdr_mult: int = 2  # each SGDR cycle is this many times longer than the last
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the run (or epochs if > 1)
    gamma: float = 0.1  # multistep: lr factor at each milestone
    kd_loss: str = "kd"
    temperature: float | None = None  # softmax temperature; None: the loss's published default (kd 4, dkd 4, dist 1)
    kd_weight: float | None = None  # weight of the distillation term (Hinton's alpha), CE gets 1 - kd_weight; None: the loss's default
    kd_warmup_epochs: float | None = None  # epochs the distillation term ramps in over; None: the loss's own (dkd: 1/12 of the run, the paper's 20 of 240; others 0)
    feat_weight: float | None = None  # weight of the feature term of a feature method; None: its default (fitnet 100, at 1000)
    label_smoothing: float = 0.0  # probability mass spread over all classes
    mixup: float = 0.0  # Beta(a, a) for MixUp; 0 = off
    cutmix: float = 0.0  # Beta(a, a) for CutMix; 0 = off
    mix_prob: float = 1.0  # probability a batch is mixed at all
    weight_init: str = DEFAULT_WEIGHT_INIT  # how a student's convolutions start (students.spec.WEIGHT_INITS)
    zero_init_last: bool = False  # start each residual block's last BatchNorm at 0 (the block = its shortcut)
    crop_padding: int = 4  # pixels of padding before the random 32x32 crop
    flip: bool = True  # random horizontal flips
    cutout: int = 0  # side of the cutout square in pixels; 0 = off
    ema: bool = True  # also keep (and evaluate) an exponential moving average of the weights
    ema_decay: float = 0.999  # per step
    tta: bool = True  # also report flip test-time augmentation
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (never on CPU)
    channels_last: bool = True  # NHWC activations, on CUDA and CPU
    compile: bool = False
    deterministic: bool = False  # CUDA: reproducible kernels (slower) instead of cuDNN's fastest; CPUs are anyway
    seed: int = 0  # initial weights (and FitNets regressors); also the batches unless data_seed is set
    data_seed: int | None = None  # the batches: subset, shuffle, crops, flips, mixing; None: seed. Seeds of
    # initialisation that share a data_seed share one batch stream, so their teacher outputs come from one cache entry
    teacher_cache: bool = True  # record the teacher's logits once per batch stream and replay them (distill.teacher_cache)
    eval_every: int = 1  # epochs
    # epochs between writes of last.pt (the final epoch and a --stop-after stop always write): a kill loses at
    # most save_every - 1 finished epochs. Above 1 where a checkpoint costs much of an epoch (a resnet50-sized
    # last.pt takes ~1.2 s to hash and fsync, a third of an H100 teacher epoch at CIFAR scale)
    save_every: int = 1
    tensorboard: bool = False  # also write TensorBoard event files into the run folder (needs tensorboard)
    recipe: str | None = None  # the named recipe these settings started from (distill.recipes)

    def __post_init__(self) -> None:
        for f in fields(self):  # frozen: set through object.__setattr__, once, before anything reads them
            object.__setattr__(self, f.name, coerce_setting(f.name, getattr(self, f.name)))
        _check_numbers(self)
        if self.kind not in ("run", "teacher"):
            raise ConfigError(f"kind must be run or teacher, got {self.kind!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("kd_loss", self.kd_loss, KD_LOSS_NAMES)
        _choice("weight_init", self.weight_init, WEIGHT_INITS)
        _choice("device", self.device, DEVICES)
        if self.teacher_mode is not None:
            _choice("teacher_mode", self.teacher_mode, TEACHER_MODES)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every,
                    "save_every": self.save_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.teacher_epochs is not None and self.teacher_epochs < 1:
            raise ConfigError(f"--teacher-epochs must be at least 1, got {self.teacher_epochs}")
        if self.teacher_lr is not None and not self.teacher_lr > 0:
            raise ConfigError(f"--teacher-lr must be positive, got {self.teacher_lr}")
        if self.feat_weight is not None and (self.feat_weight < 0 or self.kd_loss not in FEATURE_KD_NAMES):
            raise ConfigError(f"--feat-weight {self.feat_weight} needs a feature method (--kd-loss at, fitnet, kd+at, ...) "
                              "and must not be negative")
        if self.kd_warmup_epochs is not None and self.kd_warmup_epochs < 0:
            raise ConfigError(f"--kd-warmup-epochs must not be negative, got {self.kd_warmup_epochs}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")
        for name in ("kd_weight", "label_smoothing", "mix_prob", "min_lr_ratio"):
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
        if not str(self.data).strip():
            raise ConfigError("--data is empty; name the data: cifar10, cifar100, or a folder or .tar.gz of images")
        object.__setattr__(self, "data", resolve_data(self.data))
        for name in ("train_subset", "test_subset", "num_classes"):
            value = getattr(self, name)
            if value is not None and value < 1:  # 0 would silently mean "all images"
                raise ConfigError(f"{_flag(name)} must be at least 1, got {value}")
        if self.val_split < 0:
            raise ConfigError(f"--val-split must not be negative, got {self.val_split}")
        if self.sgdr_t0 < 1 or self.sgdr_mult < 1:
            raise ConfigError("--sgdr-t0 and --sgdr-mult must be at least 1")
        if any(m <= 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"--milestones must be increasing and positive, got {list(self.milestones)}")
        if (self.teacher_weights or self.teacher_pretrained) and self.teacher and _is_student_spec(self.teacher):
            flag = "--teacher-weights" if self.teacher_weights else "--teacher-pretrained"
            raise ConfigError(f"{flag} loads timm weights, but --teacher {self.teacher} is a student spec, built and "
                              f"trained here; drop {flag} (a trained student teacher comes with --teacher-ckpt)")
        if self.teacher_ckpt and not self.teacher:
            raise ConfigError("--teacher-ckpt needs --teacher NAME (the checkpoint's model name)")
        if self.kind == "teacher" and not self.teacher:
            raise ConfigError("distill teacher needs --teacher NAME")
        _check_bounds(self)

    @property
    def uses_teacher(self) -> bool:
        return self.kind == "run" and self.teacher is not None

    @property
    def stream_seed(self) -> int:
        """The seed of the batches (subset, order, augmentation, mixing): ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

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
        """From ``config.json`` contents; an older run's ``"alpha"`` is read as ``kd_weight``."""
        return cls(**cls.settings_from(data))

    @classmethod
    def settings_from(cls, data: dict[str, Any], source: str = "config") -> dict[str, Any]:
        """``data`` as field values, each converted to its field's type (:func:`coerce_setting`): old names
        mapped, unknown names and values of the wrong type refused in one line that names ``source``.
        Cross-field rules are checked when the TrainConfig is built."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must hold a mapping of settings, got a {type(data).__name__}")
        if bad := [k for k in data if not isinstance(k, str)]:
            raise ConfigError(f"{source} has a setting name that is not text: {bad[0]!r}; write names such as lr")
        if {"students", "config"} <= set(data):
            raise ConfigError(f"{source} is a sweep's sweep.json, not a run's settings; continue the sweep with "
                              "distill sweep --resume FOLDER, or pass one student's FOLDER/STUDENT/config.json")
        data = dict(data)
        if "alpha" in data:
            if "kd_weight" in data:
                raise ConfigError(f"{source} gives both alpha and kd_weight; alpha is the old name of kd_weight, "
                                  "keep one")
            data["kd_weight"] = data.pop("alpha")
        if "weight_init" not in data and {"kind", "eval_every", "teacher_cache"} <= set(data):
            # A whole recorded config (a run's config.json) from before weight_init existed: its students
            # started as every student did then, whatever the default is now.
            data["weight_init"] = LEGACY_WEIGHT_INIT
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hint = suggest(unknown[0], sorted(known))
            raise ConfigError(f"{source} has unknown settings {unknown}{hint}; was it written by a newer version?")
        try:
            return {name: check_setting(name, value) for name, value in data.items()}
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` atomically (:class:`~students.common.files.WriteError` on a full or read-only disk)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """A config file: a run's ``config.json``, or any ``.json``/``.yaml`` of TrainConfig fields (partial is fine)."""
        settings = cls.settings_from(read_settings(path), f"config {path}")
        try:
            return cls(**settings)
        except ConfigError as err:
            raise ConfigError(f"config {path}: {err}") from None


_KINDS = _field_kinds()


MAX_CONFIG_BYTES = 1 << 20  # a settings file is a few hundred bytes; a megabyte is far beyond any real one
MAX_CONFIG_DEPTH = 8  # nesting of mappings and lists; TrainConfig's deepest value (milestones) is at depth 2
MAX_YAML_ALIASES = 16  # YAML anchors let 1.6 KB expand to gigabytes ("billion laughs"); settings need none


def read_settings(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML settings file (YAML needs PyYAML); :class:`ConfigError` naming the file.

    Bounded before it is parsed: at most :data:`MAX_CONFIG_BYTES`, UTF-8, nested at most
    :data:`MAX_CONFIG_DEPTH` deep, and (YAML) at most :data:`MAX_YAML_ALIASES` aliases; YAML is read with
    ``safe_load``, so a ``!!python`` tag cannot run code.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is {size:,} bytes; a settings file is at most {MAX_CONFIG_BYTES:,} "
                              "(is it the right file?)")
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8") from None
    data = _read_yaml(path, text) if path.suffix.lower() in (".yaml", ".yml") else _read_json(path, text)
    if _depth(data) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"config {path} is nested more than {MAX_CONFIG_DEPTH} levels deep; settings are flat")
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping of settings, got a {type(data).__name__}")
    return data


def _read_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"cannot read config {path}: line {err.lineno}: {err.msg}") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply; settings are flat") from None


def _read_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"config {path} is YAML but PyYAML is not installed; pip install pyyaml or use JSON") from None
    try:
        depth = aliases = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events only: nothing is built or expanded yet
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_CONFIG_DEPTH:
                    raise ConfigError(f"config {path} is nested more than {MAX_CONFIG_DEPTH} levels deep; settings "
                                      "are flat")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise ConfigError(f"config {path} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); write "
                                      "the settings out")
        return yaml.safe_load(text)  # safe_load: plain data only, a config file cannot run code
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read config {path}: {str(err).splitlines()[0]}") from None


def _depth(value: Any, level: int = 0) -> int:
    """How deeply ``value`` nests mappings and lists (stops counting past the limit)."""
    if level > MAX_CONFIG_DEPTH or not isinstance(value, (dict, list, tuple)):
        return level
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(v, level + 1) for v in items), default=level + 1)
