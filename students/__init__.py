"""Students: CIFAR-style residual networks under 5M parameters, named by spec strings.

>>> import students
>>> model = students.create("r4_3323", num_classes=10)    # seed report 000's best model
>>> import timm; timm.create_model("seed002")             # registered with timm on import

``import students`` is cheap: names that need torch or timm load on first use (``__getattr__`` below), so
``distill --help`` and the other command-line tools start without importing either. The timm contract above
still holds in any import order: students register with timm as soon as both packages are loaded (see
:func:`_register_when_ready`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

from .sizes import format_count, parse_count
from .spec import DEFAULT_CHANNELS, SpecError, StudentSpec, format_spec, parse_spec, suggest

# Name -> submodule for the exports that import torch/timm; they load on first attribute access.
# A new export goes both here and in __all__ (tests/test_first_hour.py checks they agree).
_LAZY = {
    **dict.fromkeys(
        ("CHECKPOINT_FORMAT", "CheckpointError", "WriteError", "atomic_save", "atomic_write_bytes",
         "atomic_write_text", "build_student", "content_digest", "load_checkpoint", "load_file", "load_state_into",
         "save_checkpoint", "student_arch"),
        "checkpoint",
    ),
    **dict.fromkeys(
        ("CostReport", "StageCost", "cost_report", "count_macs"),
        "cost",
    ),
    # torch-free, but loaded lazily like the rest so `import students` stays minimal
    **dict.fromkeys(("MAX_STUDENT_PARAMS", "CostError", "check_spec_cost", "spec_num_macs", "spec_num_params"),
                    "analytic"),
    **dict.fromkeys(("CIFAR10_MEAN", "CIFAR10_STD", "BasicBlock", "CifarResNet"), "model"),
    **dict.fromkeys(("PRESETS", "Preset"), "presets"),
    **dict.fromkeys(("BudgetError", "count_params", "create", "register", "resolve"), "registry"),
}
_SUBMODULES = ("analytic", "checkpoint", "cli", "common", "console", "cost", "errors", "model", "presets", "registry",
               "sizes", "spec")

__all__ = [
    "BasicBlock", "BudgetError", "CHECKPOINT_FORMAT", "CIFAR10_MEAN", "CIFAR10_STD", "CheckpointError",
    "CifarResNet", "CostReport", "DEFAULT_CHANNELS", "PRESETS", "Preset", "SpecError", "StageCost",
    "StudentSpec", "atomic_save", "build_student", "cost_report", "count_macs", "count_params", "create",
    "format_count", "format_spec", "load_checkpoint", "load_file", "parse_count", "parse_spec", "register",
    "resolve", "save_checkpoint", "student_arch", "suggest",
    # integrity, safe writes and cost limits
    "CostError", "MAX_STUDENT_PARAMS", "WriteError", "atomic_write_bytes", "atomic_write_text", "content_digest",
    "load_state_into", "spec_num_params", "spec_num_macs", "check_spec_cost",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'students' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


# --- timm registration, without importing timm ourselves ---------------------------------------------------
# Registration needs students.registry, which imports timm and torch. Rather than paying for both on
# `import students`, it runs once both are loaded anyway: at once if timm already is, otherwise right after
# the import of timm or of a students submodule completes. It waits while any of those modules is still
# executing, because students.registry cannot import a half-initialised students.model.

_registered = False
_executing: set[str] = set()


def _watched(name: str) -> bool:
    return name == "timm" or name.startswith(__name__ + ".")


def _register_when_ready() -> None:
    global _registered
    if _registered or "timm" not in sys.modules or _executing:
        return
    _registered = True  # before the import below, which ends in this function again
    try:
        importlib.import_module(".registry", __name__)._register_defaults()
    except BaseException:
        _registered = False
        raise


class _Loader(importlib.abc.Loader):
    """The real loader of a watched module, with :func:`_register_when_ready` after the module has run."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        _executing.add(self._name)
        try:
            self._loader.exec_module(module)
        finally:
            _executing.discard(self._name)
        _register_when_ready()

    def __getattr__(self, attr: str) -> Any:  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, attr)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds timm and students submodules with the other finders and wraps their loaders in :class:`_Loader`."""

    students_after_import = True  # marks the one instance on sys.meta_path, across importlib.reload(students)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if not _watched(name) or _registered:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "students_after_import", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)
                return spec
        return None


if not any(getattr(f, "students_after_import", False) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport())
_register_when_ready()
