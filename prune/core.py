"""Structured channel pruning of students to an exact budget, on torch-pruning's dependency graph.

torch-pruning prunes by a channel *ratio*; a budget is a parameter or MAC count. :func:`prune_to_target`
bridges the two: at each iterative step it bisects the ratio on a copy of the model until the pruned copy
lands at or just under that step's budget, then applies the found ratio to the model itself. Coupled
channels (a stage's residual sum, its projection shortcut) are pruned together by the dependency graph,
and the classifier is never pruned, so the result is always a valid student that
:func:`students.build_student` rebuilds from its recorded widths.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

import students
from students.errors import UserError

__all__ = [
    "IMPORTANCES",
    "TARGET_KINDS",
    "PruneError",
    "PruneSettings",
    "PruneResult",
    "make_importance",
    "measure",
    "prune_to_target",
    "prune_by_ratio",
    "recalibrate_bn",
    "sparsity_regularizer",
]

_logger = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2", "taylor", "bn-scale", "lamp", "fpgm")
TARGET_KINDS = ("params", "macs", "ratio")
TOLERANCE = 0.02  # a budget is met when the result is at or below it and within 2% of it
SEARCH_STEPS = 20  # bisection steps on the ratio: 2**-20 is far finer than one channel


class PruneError(UserError):
    """A budget that cannot be met, or a model that cannot be pruned as asked."""


@dataclass(frozen=True)
class PruneSettings:
    """How to prune: importance criterion, ranking scope, steps, rounding and the per-layer ceiling."""

    importance: str = "l2"
    global_pruning: bool = False  # rank channels across layers instead of pruning each layer equally
    iterative_steps: int = 1
    round_to: int | None = None  # keep channel counts multiples of this (e.g. 8 for tensor cores)
    max_layer_ratio: float = 0.9  # no layer loses more than this fraction of its channels

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise PruneError(f"--importance {self.importance!r} is not one of {', '.join(IMPORTANCES)}"
                             f"{students.suggest(self.importance, list(IMPORTANCES))}")
        if self.iterative_steps < 1:
            raise PruneError(f"--iterative-steps must be at least 1, got {self.iterative_steps}")
        if self.round_to is not None and self.round_to < 1:
            raise PruneError(f"--round-to must be a positive channel count, got {self.round_to}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise PruneError(f"--max-layer-ratio must be between 0 and 1, got {self.max_layer_ratio}")


@dataclass(frozen=True)
class PruneResult:
    """What pruning did: the metric before and after, and the ratio each iterative step used."""

    kind: str
    target: float
    before: int
    after: int
    ratios: tuple[float, ...]


def make_importance(name: str) -> tp.importance.Importance:
    """torch-pruning's criterion for ``name`` (see :data:`IMPORTANCES`)."""
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":  # Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"
        return tp.importance.GroupTaylorImportance()
    if name == "bn-scale":  # Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming"
        return tp.importance.BNScaleImportance()
    if name == "lamp":  # Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning"
        return tp.importance.LAMPImportance(p=2)
    if name == "fpgm":  # He et al. 2019, "Filter Pruning via Geometric Median"
        return tp.importance.FPGMImportance(p=2)
    raise PruneError(f"unknown importance {name!r}")


def measure(model: nn.Module, kind: str, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Parameters, or MACs per image counted by fvcore (the figure the reports print)."""
    if kind == "params":
        return students.count_params(model)
    if kind == "macs":
        return students.count_macs(model, input_size)
    raise ValueError(f"cannot measure {kind!r}")


def _example(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    return torch.zeros(1, *input_size, device=next(model.parameters()).device)


def _one_step(
    model: nn.Module,
    ratio: float,
    settings: PruneSettings,
    input_size: tuple[int, int, int],
    grad_fn: Callable[[nn.Module], None] | None,
) -> None:
    """Prune ``model`` in place by ``ratio`` of its channels in one torch-pruning step."""
    if ratio <= 0:
        return
    importance = make_importance(settings.importance)
    if settings.importance == "taylor":
        if grad_fn is None:
            raise PruneError("taylor importance needs a batch of data to take gradients on")
        model.zero_grad(set_to_none=True)
        grad_fn(model)
    pruner = tp.pruner.BasePruner(
        model,
        _example(model, input_size),
        importance=importance,
        global_pruning=settings.global_pruning,
        pruning_ratio=ratio,
        max_pruning_ratio=settings.max_layer_ratio,
        iterative_steps=1,
        round_to=settings.round_to,
        ignored_layers=[model.get_classifier()] if hasattr(model, "get_classifier") else [],
    )
    pruner.step()
    model.zero_grad(set_to_none=True)


def prune_by_ratio(
    model: nn.Module,
    ratio: float,
    settings: PruneSettings,
    *,
    input_size: tuple[int, int, int] = (3, 32, 32),
    grad_fn: Callable[[nn.Module], None] | None = None,
) -> PruneResult:
    """Remove ``ratio`` of the channels (per layer, or globally), over ``settings.iterative_steps`` steps."""
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"--ratio must be between 0 and 1 (a fraction of channels), got {ratio}")
    before = measure(model, "params")
    ratios = []
    for k in range(1, settings.iterative_steps + 1):
        # torch-pruning's linear schedule: after step k the cumulative ratio is ratio * k / steps. Each step
        # here prunes the surviving channels, so convert the cumulative goal to a ratio of what is left.
        done, goal = ratio * (k - 1) / settings.iterative_steps, ratio * k / settings.iterative_steps
        step_ratio = (goal - done) / (1.0 - done)
        _one_step(model, step_ratio, settings, input_size, grad_fn)
        ratios.append(step_ratio)
    return PruneResult("ratio", ratio, before, measure(model, "params"), tuple(ratios))


def _search(
    model: nn.Module,
    kind: str,
    target: float,
    settings: PruneSettings,
    input_size: tuple[int, int, int],
    grad_fn: Callable[[nn.Module], None] | None,
) -> tuple[float, int, int]:
    """The smallest ratio whose pruned copy of ``model`` measures at or below ``target``, that size, and the
    size one bisection step short of it (the nearest achievable size above the target)."""
    cache: dict[float, int] = {}

    def size_at(ratio: float) -> int:
        if ratio not in cache:
            trial = copy.deepcopy(model)
            _one_step(trial, ratio, settings, input_size, grad_fn)
            cache[ratio] = measure(trial, kind, input_size)
        return cache[ratio]

    lo, hi = 0.0, settings.max_layer_ratio
    cache[lo] = measure(model, kind, input_size)
    smallest = size_at(hi)
    if smallest > target:
        raise PruneError(
            f"target {kind} {target:,.0f} is unreachable with --max-layer-ratio {settings.max_layer_ratio}: "
            f"the smallest achievable is {smallest:,}; raise --max-layer-ratio or choose a larger target"
        )
    for _ in range(SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        if size_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, size_at(hi), size_at(lo)


def prune_to_target(
    model: nn.Module,
    kind: str,
    target: float,
    settings: PruneSettings,
    *,
    input_size: tuple[int, int, int] = (3, 32, 32),
    grad_fn: Callable[[nn.Module], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place until its ``kind`` (params or macs) is at or below ``target``, within 2%.

    Raises :class:`PruneError` when the target is at or above the current size, below what the layer
    ceiling allows, or falls in a gap that channel rounding cannot land in (the message gives the nearest
    achievable sizes on both sides).
    """
    before = measure(model, kind, input_size)
    if target >= before:
        raise PruneError(f"target {kind} {target:,.0f} is not below the current {before:,}; choose a smaller target")
    ratios = []
    current = before
    for k in range(1, settings.iterative_steps + 1):
        # Iterative steps walk the budget down linearly; the last step lands on the target itself.
        step_target = before - (before - target) * k / settings.iterative_steps
        ratio, _, above = _search(model, kind, step_target, settings, input_size, grad_fn)
        _one_step(model, ratio, settings, input_size, grad_fn)
        ratios.append(ratio)
        current = measure(model, kind, input_size)
        _logger.info("pruning step %d/%d: ratio %.4f, %s %s", k, settings.iterative_steps, ratio, kind, f"{current:,}")
    if current < target * (1 - TOLERANCE):
        raise PruneError(
            f"target {kind} {target:,.0f} cannot be met within {TOLERANCE:.0%}: the nearest achievable sizes are "
            f"{current:,} (below) and {above:,} (above); ask for one of those"
            + ("" if settings.global_pruning else ", use --global")
            + (", or lower --round-to" if settings.round_to else "")
        )
    return PruneResult(kind, target, before, current, tuple(ratios))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """Re-estimate BatchNorm running statistics on ``batches`` of training images (after pruning).

    Pruning changes every downstream activation distribution, so the stored statistics are stale; a
    cumulative average (``momentum=None``) over a few hundred batches restores much of the lost accuracy
    before any fine-tuning.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for images in batches:
            model(images)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)


def sparsity_regularizer(model: nn.Module, method: str, reg: float,
                         input_size: tuple[int, int, int] = (3, 32, 32)) -> Callable[[nn.Module], None]:
    """A hook that adds torch-pruning's sparsity gradient after each backward pass.

    ``group-norm``: Fang et al. 2023, "DepGraph: Towards Any Structural Pruning" (group-level L2 push);
    ``bn-scale``: Liu et al. 2017, "Network Slimming" (L1 on BatchNorm scales).
    """
    ignored = [model.get_classifier()] if hasattr(model, "get_classifier") else []
    example = _example(model, input_size)
    if method == "group-norm":
        pruner = tp.pruner.GroupNormPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                           reg=reg, ignored_layers=ignored)
    elif method == "bn-scale":
        pruner = tp.pruner.BNScalePruner(model, example, importance=tp.importance.BNScaleImportance(), reg=reg,
                                         ignored_layers=ignored)
    else:
        raise PruneError(f"unknown sparsity method {method!r}; choose group-norm or bn-scale")

    def hook(net: nn.Module) -> None:
        pruner.regularize(net)

    return hook


def channel_table(model: nn.Module) -> list[tuple[str, int]]:
    """Output channels of each stage's last convolution (the widths a stage passes on)."""
    rows = []
    for i, stage in enumerate(getattr(model, "stages", [])):
        rows.append((f"stages.{i}", stage[-1].conv2.out_channels))
    return rows


def is_finite_model(model: nn.Module) -> bool:
    return all(math.isfinite(float(p.detach().abs().sum())) for p in model.parameters())
