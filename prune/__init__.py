"""Structured channel pruning of students to an exact parameter or MAC budget (torch-pruning)."""

from .core import (
    IMPORTANCES,
    PruneError,
    PruneResult,
    PruneSettings,
    make_importance,
    measure,
    prune_by_ratio,
    prune_to_target,
    recalibrate_bn,
    sparsity_regularizer,
)

__all__ = [
    "IMPORTANCES", "PruneError", "PruneResult", "PruneSettings", "make_importance", "measure", "prune_by_ratio",
    "prune_to_target", "recalibrate_bn", "sparsity_regularizer",
]
