"""Knowledge distillation: data, losses, training engine, CLI, and a Python API.

>>> from distill import TrainConfig, fit
>>> summary = fit(student, train_loader, test_loader, teacher=teacher, config=TrainConfig(epochs=5))

Names load on first use, so ``import distill`` stays cheap for the CLIs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "fit", "Summary", "read_summary"]

_HOMES = {"TrainConfig": ".config", "fit": ".api", "Summary": ".rundir", "read_summary": ".rundir"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
