"""Structured channel pruning to an exact budget, on torch-pruning's dependency graph.

torch-pruning prunes by a channel *ratio*; a budget is a parameter or MAC count. :func:`prune_to_target`
bridges the two with one dependency graph per step (:class:`prune.plan.ChannelPlanner`): it scores every
channel once, bisects over the distinct plans the ratio (or, with global ranking, the number of channels
removed) can produce, costing each analytically, and applies the plan that lands at or just under the
budget. Coupled channels (a stage's residual sum, its projection shortcut) are pruned together, and the
classifier is never pruned, so a pruned student is always one :func:`students.build_student` rebuilds from
its recorded widths (a pruned timm CNN: :func:`teachers.pruned_arch` records them, :func:`teachers.load_model`
rebuilds it). Works on any module torch-pruning can trace (a timm model, a custom CNN).
"""

from __future__ import annotations

import contextlib
import logging
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

import students
from students.common.errors import UserError

from .names import IMPORTANCES, TARGET_KINDS
from .plan import ChannelPlanner, Plan, ProgressFn

__all__ = [
    "IMPORTANCES",
    "TARGET_KINDS",
    "PruneError",
    "PruneSettings",
    "PruneResult",
    "find_classifier",
    "make_importance",
    "measure",
    "prune_to_target",
    "prune_by_ratio",
    "recalibrate_bn",
    "sparsity_regularizer",
]

_logger = logging.getLogger(__name__)

TOLERANCE = 0.02  # a budget is met when the result is at or below it and within 2% of it


class PruneError(UserError):
    """A budget that cannot be met, or a model or setting that cannot be used as asked.

    The message names the library's arguments (``round_to=8``); ``render`` lets a command line name its
    own flags instead. ``template`` holds ``{name}`` fields, ``values`` their values.
    """

    def __init__(self, template: str, **values: object) -> None:
        self.template, self.values = template, values
        super().__init__(self.render())

    def render(self, names: Mapping[str, Callable[[object], str]] | None = None) -> str:
        names = {"target": lambda v: f"target {v}", **(names or {})}
        return self.template.format(**{k: names[k](v) if k in names else f"{k}={v!r}"
                                       for k, v in self.values.items()})


MAX_ITERATIVE_STEPS = 100  # torch-pruning's examples use up to a few dozen
MAX_ROUND_TO = 512  # wider than any layer of the nets this prunes is rounding nothing but refusing everything


@dataclass(frozen=True)
class PruneSettings:
    """How to prune: importance criterion, ranking scope, steps, rounding and the per-layer ceiling."""

    importance: str = "l2"
    # per layer (default): every layer loses the same fraction of its channels, to within one rounding step
    # (so budgets between two ratios' sizes can be met); global: channels ranked across all layers
    global_pruning: bool = False
    iterative_steps: int = 1  # re-score and prune in this many steps on the way to the target
    round_to: int | None = None  # keep pruned channel counts multiples of this (8 suits oneDNN and tensor cores)
    max_layer_ratio: float = 0.9  # no layer loses more than this fraction of its channels
    # A budget no plan meets within 2% (a gap between two buildable sizes, common with rounding on small nets):
    # False (default) takes the largest size at or below it and says so; True refuses, naming the sizes
    exact: bool = False

    def __post_init__(self) -> None:
        for name, kind in (("iterative_steps", "a whole number"), ("round_to", "a whole number"),
                           ("max_layer_ratio", "a number"), ("global_pruning", "true or false"),
                           ("exact", "true or false")):
            value = getattr(self, name)
            if name in ("global_pruning", "exact"):
                ok = isinstance(value, bool)
            else:
                ok = (value is None and name == "round_to") or not isinstance(value, bool) and isinstance(
                    value, int if kind == "a whole number" else (int, float))
            if not ok:
                raise PruneError("{" + name + "} must be " + kind, **{name: value})
        if not math.isfinite(self.max_layer_ratio):
            raise PruneError("{max_layer_ratio} must be between 0 and 1", max_layer_ratio=self.max_layer_ratio)
        if not isinstance(self.importance, str) or self.importance not in IMPORTANCES:
            raise PruneError("{importance} is not one of " + ", ".join(IMPORTANCES)
                             + students.suggest(self.importance, list(IMPORTANCES)), importance=self.importance)
        if self.iterative_steps < 1:
            raise PruneError("{iterative_steps} must be at least 1", iterative_steps=self.iterative_steps)
        if self.iterative_steps > MAX_ITERATIVE_STEPS:  # each step re-scores every channel: 100000 runs for hours
            raise PruneError("{iterative_steps} is more steps than any schedule needs; use 1.." + str(MAX_ITERATIVE_STEPS),
                             iterative_steps=self.iterative_steps)
        if self.round_to is not None and not 1 <= self.round_to <= MAX_ROUND_TO:
            raise PruneError("{round_to} must be a channel count in 1.." + str(MAX_ROUND_TO) + " (8 or 16 suit most "
                             "hardware)", round_to=self.round_to)
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise PruneError("{max_layer_ratio} must be between 0 and 1", max_layer_ratio=self.max_layer_ratio)


@dataclass(frozen=True)
class PruneResult:
    """What pruning did.

    ``before``/``after`` are the budget's metric (params or MACs; params for a ratio); ``ratios`` the
    fraction of prunable channels each step removed; ``channels`` each pruned layer's (kept, original)
    output channels; ``seconds`` the wall time of the whole prune. ``model`` is the pruned module (the
    one passed in, pruned in place).
    """

    kind: str
    target: float
    before: int
    after: int
    ratios: tuple[float, ...]
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    note: str | None = None  # e.g. a budget with no size within 2% under it, and the size taken instead
    note_message: PruneError | None = field(default=None, repr=False, compare=False)  # the note, renderable

    @property
    def ratio(self) -> float:
        """Fraction of the prunable channels removed over all steps."""
        kept = sum(k for k, _ in self.channels.values())
        total = sum(n for _, n in self.channels.values())
        return 1.0 - kept / total if total else 0.0


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
    raise PruneError("{importance} is not one of " + ", ".join(IMPORTANCES), importance=name)


def measure(model: nn.Module, kind: str, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Parameters, or MACs per image counted by fvcore (the figure the reports print)."""
    if kind == "params":
        return students.count_params(model)
    if kind == "macs":
        return students.count_macs(model, input_size)
    raise ValueError(f"cannot measure {kind!r}")


def find_classifier(model: nn.Module) -> list[nn.Module]:
    """The layers never to prune: timm's ``get_classifier()``, else the last ``nn.Linear``."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        return [head] if isinstance(head, nn.Module) else list(head)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _example(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    return torch.zeros(1, *input_size, device=next(model.parameters()).device)


def _fmt(kind: str, n: float) -> str:
    return f"{n:,.0f} {kind}"


@dataclass
class _Job:
    """One prune: its fixed inputs and its one dependency graph (built on first use)."""

    model: nn.Module
    settings: PruneSettings
    example: torch.Tensor
    ignored: list[nn.Module]
    grad_fn: Callable[[nn.Module], None] | None
    progress: ProgressFn | None
    _planner: ChannelPlanner | None = None
    macs_start: int = 0  # MACs when the graph was built, by the planner's count

    def planner_cost(self) -> dict[str, int]:
        return self._planner.cost(self._planner.identity())

    def planner(self, macs_total: int | None) -> ChannelPlanner:
        """The prune's planner, scored for the model as it is now (importance once per step)."""
        s = self.settings
        if self._planner is None:
            if s.importance == "taylor" and self.grad_fn is None:
                raise PruneError("importance='taylor' needs grad_fn, a function that takes gradients of a loss on "
                                 "one batch: grad_fn(model)")
            self._planner = _trace(self.model, self.example, self.ignored, s, macs_total)
            self.macs_start = self.planner_cost()["macs"]
        if s.importance == "taylor":
            self.model.zero_grad(set_to_none=True)
            self.grad_fn(self.model)
        try:
            self._planner.estimate_importance(make_importance(s.importance), self.progress)
        finally:
            self.model.zero_grad(set_to_none=True)
        return self._planner


@contextlib.contextmanager
def _keeps_mode(model: nn.Module) -> Iterator[None]:
    """Building a torch-pruning graph leaves the model in eval mode; put back the mode it had (a sparse stage that
    trained on in eval mode, BatchNorm on running statistics, diverged to NaN within 30 steps)."""
    training = model.training
    try:
        yield
    finally:
        model.train(training)


def _trace(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module], s: PruneSettings,
           macs_total: int | None) -> ChannelPlanner:
    """The dependency graph of ``model``; a model torch-pruning cannot trace (its forward fails on ``example``,
    or the graph has an operation torch-pruning does not know) is a :class:`PruneError`, not a traceback."""
    try:
        with _keeps_mode(model):
            return ChannelPlanner(model, example, ignored_layers=ignored, round_to=s.round_to or 1,
                                  max_layer_ratio=s.max_layer_ratio, macs_total=macs_total)
    except Exception as err:  # noqa: BLE001 - tracing raises whatever the model's forward or torch-pruning raises
        first = (str(err).strip().splitlines() or [""])[0][:200].replace("{", "{{").replace("}", "}}")
        raise PruneError(f"{type(model).__name__} cannot be traced for pruning on an input of shape "
                         f"{tuple(example.shape)} ({type(err).__name__}: {first})") from None


def _candidates(planner: ChannelPlanner, global_pruning: bool) -> list:
    """Plan parameters in increasing order of removal: with global ranking the number of channels removed
    (0 .. all), per layer the prefixes of :meth:`ChannelPlanner.local_steps` (every ratio's plan among them)."""
    if global_pruning:
        return list(range(planner.total_channels() + 1))
    steps = planner.local_steps()
    return [(steps, count) for count in range(len(steps) + 1)]


def _plan(planner: ChannelPlanner, global_pruning: bool, param) -> Plan:
    return planner.plan_global(int(param)) if global_pruning else planner.plan_steps(*param)


def _search(planner: ChannelPlanner, kind: str, target: float, global_pruning: bool,
            progress: ProgressFn | None) -> tuple[Plan | None, int, int | None]:
    """The plan with the largest size at or below ``target`` (None if none), the smallest size any plan
    reaches, and the nearest size above the target. Sizes are monotone in the candidates: bisect."""
    cands = _candidates(planner, global_pruning)
    size_at = {}

    def size(i: int) -> int:
        if i not in size_at:
            size_at[i] = planner.cost(_plan(planner, global_pruning, cands[i]))[kind]
            if progress:
                progress("search", len(size_at), max(1, math.ceil(math.log2(len(cands) + 1))) + 2)
        return size_at[i]

    smallest = size(len(cands) - 1)
    if smallest > target:
        return None, smallest, None
    lo, hi = 0, len(cands) - 1  # size(lo) > target >= size(hi), once lo is checked
    if size(lo) <= target:
        return _plan(planner, global_pruning, cands[lo]), smallest, None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(mid) <= target:
            hi = mid
        else:
            lo = mid
    return _plan(planner, global_pruning, cands[hi]), smallest, size(lo)


def _unreachable(planner: ChannelPlanner, job: _Job, kind: str, target: float, smallest: int) -> PruneError:
    """Why no plan reaches ``target``: rounding, or the per-layer ceiling."""
    s = job.settings
    if s.round_to and s.round_to > 1:
        least = planner.cost(planner.smallest_unrounded())[kind]
        if least <= target:
            return PruneError("{target} is unreachable with {round_to}: the smallest size with that rounding is "
                              f"{smallest:,} {kind} ({least:,} without rounding); lower {{round_to}} or choose a "
                              "larger target", target=_fmt(kind, target), round_to=s.round_to)
    return PruneError("{target} is unreachable with {max_layer_ratio}: the smallest achievable is "
                      f"{smallest:,} {kind}; raise {{max_layer_ratio}} or choose a larger target",
                      target=_fmt(kind, target), max_layer_ratio=s.max_layer_ratio)


def _gap(kind: str, target: float, below: int, above: int | None) -> PruneError:
    """``exact`` and no plan within the tolerance under ``target``: the nearest sizes, and a budget that works."""
    return PruneError("{target} cannot be met within " + f"{TOLERANCE:.0%}: the nearest achievable sizes are "
                      f"{below:,} (below) and " + (f"{above:,}" if above else "the unpruned size")
                      + " (above); {working} is met exactly, or drop {exact} to take the size below",
                      target=_fmt(kind, target), working=below, exact=True)


def _shortfall(kind: str, target: float, got: int, above: int | None, s: PruneSettings) -> PruneError | None:
    """The last step's plan ``got`` against ``target``: None within the tolerance; else, with ``exact``, the
    refusal; else the note that the nearest size under the target was taken."""
    if got >= target * (1 - TOLERANCE):
        return None
    if s.exact:
        raise _gap(kind, target, got, above)
    note = _shortfall_note(kind, target, got, above, s)
    _logger.debug("%s", note.render())
    return note


def _shortfall_note(kind: str, target: float, got: int, above: int | None, s: PruneSettings) -> PruneError:
    """What taking the largest size under an unreachable-within-2% budget means (a message, not raised; a
    command line renders it with its own flag names)."""
    rounded = s.round_to is not None and s.round_to > 1
    return PruneError("{target} has no size within " + f"{TOLERANCE:.0%} under it" + (" with {round_to}" if rounded
                      else "") + f": took the nearest below, {got:,} {kind} ({100 * (1 - got / target):.1f}% under; "
                      "the next size up " + (f"is {above:,})" if above else "is the unpruned net)"),
                      target=_fmt(kind, target), **({"round_to": s.round_to} if rounded else {}))


def _start(model: nn.Module, settings: PruneSettings | None, input_size: tuple[int, int, int],
           example_inputs: torch.Tensor | None, ignored_layers: Sequence[nn.Module] | None,
           grad_fn: Callable[[nn.Module], None] | None, progress: ProgressFn | None) -> _Job:
    if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
        raise PruneError("{model} must be an nn.Module with parameters", model=type(model).__name__)
    example = example_inputs if example_inputs is not None else _example(model, input_size)
    ignored = list(ignored_layers) if ignored_layers is not None else find_classifier(model)
    return _Job(model, settings or PruneSettings(), example, ignored, grad_fn, progress)


def _finish(job: _Job, kind: str, target: float, ratios: list[float], channels: dict, t0: float,
            params_before: int, macs_before: int, input_size: tuple[int, int, int]) -> PruneResult:
    params_after = students.count_params(job.model)
    # fvcore traces the model (seconds on an 11M net): only for MAC budgets, where its count is the target's
    # unit; otherwise the planner's count, which equals fvcore's on convolution/BN/linear/pooling nets.
    macs_after = measure(job.model, "macs", input_size) if kind == "macs" else job.planner_cost()["macs"]
    before, after = (macs_before, macs_after) if kind == "macs" else (params_before, params_after)
    return PruneResult(kind, target, before, after, tuple(ratios), params_before, params_after, macs_before,
                       macs_after, channels, time.perf_counter() - t0, job.model)


def prune_by_ratio(
    model: nn.Module,
    ratio: float,
    settings: PruneSettings | None = None,
    *,
    input_size: tuple[int, int, int] = (3, 32, 32),
    example_inputs: torch.Tensor | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    grad_fn: Callable[[nn.Module], None] | None = None,
    progress: ProgressFn | None = None,
) -> PruneResult:
    """Remove ``ratio`` of the channels (of each layer, or of all layers ranked together), in place."""
    return prune_to_target(model, "ratio", ratio, settings, input_size=input_size, example_inputs=example_inputs,
                           ignored_layers=ignored_layers, grad_fn=grad_fn, progress=progress)


def prune_to_target(
    model: nn.Module,
    kind: str,
    target: float,
    settings: PruneSettings | None = None,
    *,
    input_size: tuple[int, int, int] = (3, 32, 32),
    example_inputs: torch.Tensor | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    grad_fn: Callable[[nn.Module], None] | None = None,
    progress: ProgressFn | None = None,
) -> PruneResult:
    """Prune ``model`` in place until its ``kind`` ("params" or "macs", fvcore's count per image) is at or
    below ``target`` and within 2% of it; ``kind="ratio"`` removes that fraction of channels instead.

    Args:
        model: any module torch-pruning can trace (a student, a timm model, a custom CNN).
        settings: criterion, global ranking, steps, rounding and per-layer ceiling (default: l2, per layer).
        input_size / example_inputs: the input the graph is traced on (one image of ``input_size``).
        ignored_layers: layers whose outputs are never pruned (default: the classifier, see
            :func:`find_classifier`).
        grad_fn: for ``importance="taylor"``: takes gradients of a loss on a batch, ``fn(model)``.
        progress: called as ``progress(phase, done, total)`` during importance and search passes.

    A target in a gap no plan lands in within 2% (common with rounding on a small net) takes the largest
    size under it, and ``result.note`` says so; with ``settings.exact`` it is refused instead (the message
    gives the nearest sizes on both sides).

    Raises :class:`PruneError` (naming these arguments) when the target is not below the current size,
    below what the per-layer ceiling or rounding allows (the model is then left untouched), or, with
    ``exact``, in a gap.
    """
    t0 = time.perf_counter()
    if kind not in TARGET_KINDS:
        raise PruneError("{kind} is not one of " + ", ".join(TARGET_KINDS), kind=kind)
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise PruneError("{target} must be a number (e.g. 4.9e6 parameters; strings such as 4.9M are for the "
                         "command line, students.parse_count reads them)", target=target)
    if not math.isfinite(target) or target <= 0:
        raise PruneError("{target} must be a positive, finite number", target=target)
    job = _start(model, settings, input_size, example_inputs, ignored_layers, grad_fn, progress)
    s = job.settings
    params_before = students.count_params(model)
    macs_before = measure(model, "macs", input_size) if kind == "macs" else None
    if kind == "ratio":
        if not 0.0 < target < 1.0:
            raise PruneError("{ratio} must be between 0 and 1 (a fraction of channels)", ratio=target)
        return _prune_ratio(job, target, t0, params_before, input_size)
    before = macs_before if kind == "macs" else params_before
    if target >= before:
        raise PruneError("{target} is not below the current " + f"{before:,} {kind}; choose a smaller target",
                         target=_fmt(kind, target))
    ratios: list[float] = []
    above, note = None, None
    for k in range(1, s.iterative_steps + 1):
        # Iterative steps walk the budget down linearly; the last step lands on the target itself.
        step_target = before - (before - target) * k / s.iterative_steps
        planner = job.planner(macs_before)
        macs_before = macs_before or job.macs_start
        if k == 1:  # nothing is pruned yet: say why the user's own target cannot be reached, if it cannot
            plan, smallest, _ = _search(planner, kind, target, s.global_pruning, None)
            if plan is None:
                raise _unreachable(planner, job, kind, target, smallest)
        plan, smallest, above = _search(planner, kind, step_target, s.global_pruning, progress)
        if plan is None:  # an intermediate budget out of reach: take the smallest plan, later steps go on
            plan = _plan(planner, s.global_pruning, _candidates(planner, s.global_pruning)[-1])
        if k == s.iterative_steps:
            note = _shortfall(kind, target, planner.cost(plan)[kind], above, s)
        ratios.append(plan.removed_fraction(planner.groups))
        planner.apply(plan)
        _logger.info("pruning step %d/%d: removed %.1f%% of the remaining channels, %s now %s", k,
                     s.iterative_steps, 100 * ratios[-1], kind, f"{planner.cost(planner.identity())[kind]:,}")
    channels = job._planner.channels()
    result = _finish(job, kind, target, ratios, channels, t0, params_before, macs_before, input_size)
    if note is not None:
        result = dataclasses.replace(result, note=note.render(), note_message=note)
    if result.after > target:
        _logger.warning("the cost model was off: %s %s is over the target %s", kind, f"{result.after:,}",
                        f"{target:,.0f}")
    return result


def _prune_ratio(job: _Job, ratio: float, t0: float, params_before: int,
                 input_size: tuple[int, int, int]) -> PruneResult:
    """``ratio`` of the channels over ``iterative_steps`` steps (torch-pruning's linear schedule)."""
    s, ratios = job.settings, []
    total0 = None
    for k in range(1, s.iterative_steps + 1):
        goal = ratio * k / s.iterative_steps  # cumulative, of the channels the prune started with
        planner = job.planner(None)
        if s.global_pruning:
            total0 = total0 or planner.total_channels()
            keep = int(total0 * (1.0 - goal) + 1e-9)
            plan = planner.plan_global(max(0, planner.total_channels() - keep))
        else:
            plan = planner.plan_local(goal)
        ratios.append(plan.removed_fraction(planner.groups))
        planner.apply(plan)
        _logger.info("pruning step %d/%d: removed %.1f%% of the remaining channels", k, s.iterative_steps,
                     100 * ratios[-1])
    channels = job._planner.channels()
    return _finish(job, "ratio", ratio, ratios, channels, t0, params_before, job.macs_start, input_size)


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
    with _keeps_mode(model):
        if method == "group-norm":
            pruner = tp.pruner.GroupNormPruner(model, example, reg=reg, ignored_layers=ignored,
                                               importance=tp.importance.GroupMagnitudeImportance(p=2))
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
