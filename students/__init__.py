"""Students: CIFAR-style residual networks under 5M parameters, named by spec strings.

>>> import students
>>> model = students.create("r4_3323", num_classes=10)    # seed report 000's best model
>>> import timm; timm.create_model("seed002")             # registered with timm on import
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    build_student,
    load_checkpoint,
    load_file,
    save_checkpoint,
    student_arch,
)
from .cost import CostReport, StageCost, cost_report, count_macs
from .model import CIFAR10_MEAN, CIFAR10_STD, BasicBlock, CifarResNet
from .registry import PRESETS, BudgetError, Preset, count_params, create, register, resolve
from .sizes import format_count, parse_count
from .spec import DEFAULT_CHANNELS, SpecError, StudentSpec, format_spec, parse_spec, suggest

__all__ = [
    "BasicBlock", "BudgetError", "CHECKPOINT_FORMAT", "CIFAR10_MEAN", "CIFAR10_STD", "CheckpointError",
    "CifarResNet", "CostReport", "DEFAULT_CHANNELS", "PRESETS", "Preset", "SpecError", "StageCost",
    "StudentSpec", "atomic_save", "build_student", "cost_report", "count_macs", "count_params", "create",
    "format_count", "format_spec", "load_checkpoint", "load_file", "parse_count", "parse_spec", "register",
    "resolve", "save_checkpoint", "student_arch", "suggest",
]

from .registry import _register_defaults

_register_defaults()
del _register_defaults
