"""Structured channel pruning to an exact parameter or MAC budget (torch-pruning), for students and any
module torch-pruning can trace.

>>> from prune import prune_to_target
>>> result = prune_to_target(model, "params", 2.5e6)     # pruned in place; result.model is the same module
>>> result.params_before, result.params_after, result.channels, result.seconds

Names load on first use, so ``import prune`` does not import torch-pruning until it is needed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IMPORTANCES": "core", "PruneError": "core", "PruneResult": "core", "PruneSettings": "core",
    "TARGET_KINDS": "core", "find_classifier": "core", "make_importance": "core", "measure": "core",
    "prune_by_ratio": "core", "prune_to_target": "core", "recalibrate_bn": "core",
    "sparsity_regularizer": "core",
    "channels_last_safe": "distill.device",  # the training engine's memory-format check for pruned widths
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prune' has no attribute {name!r}")
    home = _EXPORTS[name]
    value = getattr(importlib.import_module(home if "." in home else f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
