"""One dependency graph per prune: importance once, then any number of candidate plans costed without copies.

torch-pruning's pruners take a channel *ratio*; a budget is a parameter or MAC count. Searching the ratio by
pruning a fresh copy per probe builds a new dependency graph and traces the model each time. Here the graph
is built once (:class:`ChannelPlanner`), the importance of every channel of every coupled group is
estimated once, and a candidate (how many channels each group keeps) is costed from layer shapes recorded in
one forward pass, in microseconds. Only the chosen plan is applied, through the same graph.

Sizes are monotone in the plan parameter (a per-layer ratio, or the number of globally least important
channels removed), rounding and the per-layer floor included, so a bisection over the finite set of distinct
plans finds every size the planner can build.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["ChannelPlanner", "Plan", "ProgressFn", "count_params"]

_logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total): "importance", "search"
_EPS = 1e-9  # ratios such as 1 - 3/7 are not exact in floating point: floor(n * (1 - r) + eps)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class _Member:
    """One layer dimension that a group prunes: ``root_idxs`` is None when it follows the root one to one."""

    module: nn.Module
    dim: str  # "out" or "in"
    root_idxs: torch.Tensor | None


@dataclass
class _Group:
    root: nn.Module
    handler: Callable
    name: str
    n: int  # channels now
    n0: int  # channels when the prune started (the per-layer floor and per-layer ratios refer to these)
    floor: int  # fewest channels this group may keep
    members: list[_Member]
    full: object = None  # torch-pruning's group over all channels (what importance criteria score)
    importance: torch.Tensor | None = None


@dataclass(frozen=True)
class Plan:
    """How many channels each group keeps (by group index), and the plan parameter that produced it."""

    kept: tuple[int, ...]
    param: float

    def removed_fraction(self, groups: Sequence[_Group]) -> float:
        total = sum(g.n for g in groups)
        return 1.0 - sum(self.kept) / total if total else 0.0


def _is_coupled(m: nn.Module) -> bool:
    """Layers whose input and output channels are the same channels (pruned together)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.groups > 1 and m.groups == m.in_channels == m.out_channels
    return isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU,
                          nn.modules.instancenorm._InstanceNorm))


def _out_channels(m: nn.Module) -> int:
    for attr in ("out_channels", "num_features", "out_features"):
        if hasattr(m, attr):
            return getattr(m, attr)
    return m.normalized_shape[-1]  # LayerNorm


class ChannelPlanner:
    """A model's dependency graph, coupled channel groups, their importance, and an analytic cost model.

    Args:
        model: any module torch-pruning can trace; pruned in place by :meth:`apply`.
        example_inputs: one batch the graph is traced on (and layer shapes are recorded from).
        ignored_layers: modules (with their submodules) whose output channels are never pruned.
        round_to: kept channel counts are multiples of this (or the layer is left whole).
        max_layer_ratio: no group loses more than this fraction of its channels at the start.
        macs_total: fvcore's MAC count of ``model`` as it is, when MAC budgets are searched: the part of it
            the cost model does not cover (ops outside modules) is carried as a constant.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, ignored_layers: Sequence[nn.Module],
                 round_to: int, max_layer_ratio: float, macs_total: int | None = None) -> None:
        # one graph for the whole prune: after apply() the same graph and recorded shapes stay valid
        # (torch-pruning updates layers in place; spatial sizes never change)
        self.model = model
        self.builds = 0
        self.round_to = max(1, int(round_to))
        self.max_layer_ratio = max_layer_ratio
        self.ignored = [sub for layer in ignored_layers for sub in layer.modules()]
        self._shapes, self.graph = self._trace(model, example_inputs)
        self.builds += 1
        self._n0: dict[nn.Module, int] = {}
        self.groups = self._collect_groups()
        self._pool_sources = self._find_pool_sources()
        self._params_residual = 0
        self._macs_residual = 0
        base = self.cost(self.identity())
        self._params_residual = count_params(model) - base["params"]
        if macs_total is not None:
            self._macs_residual = macs_total - base["macs"]

    # ---- graph and groups -------------------------------------------------------------------------------
    @staticmethod
    def _trace(model: nn.Module, x: torch.Tensor):
        """The dependency graph, and the input and output shape of every leaf layer in execution order, from
        torch-pruning's one tracing forward pass (spatial sizes never change when channels are pruned)."""
        shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}

        def hook(m, inputs, output):
            if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
                # torch-pruning may also call a layer on an unbatched tensor: keep the batched call's shapes
                if m not in shapes or output.dim() > len(shapes[m][1]):
                    shapes[m] = (tuple(inputs[0].shape), tuple(output.shape))

        handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
        was_training = model.training
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)  # traces in eval mode
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        return shapes, graph

    def _collect_groups(self) -> list[_Group]:
        graph, groups = self.graph, []
        names = {m: n for n, m in self.model.named_modules()}
        root_types = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR]
        for group in graph.get_all_groups(ignored_layers=self.ignored, root_module_types=root_types):
            root, handler = group[0].dep.target.module, group[0].dep.handler
            n = graph.get_out_channels(root)
            members, seen, grouped = [], set(), False
            for item in group:
                module = item.dep.target.module
                if not isinstance(module, nn.Module) or graph.get_pruner_of_module(module) is None:
                    continue
                if isinstance(module, nn.GroupNorm) or (isinstance(module, nn.modules.conv._ConvNd)
                                                        and module.groups > 1 and not _is_coupled(module)):
                    grouped = True  # channel groups must shrink evenly: left whole (not modelled here)
                dim = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                if _is_coupled(module):
                    dim = "out"
                if (module, dim) in seen:
                    continue
                seen.add((module, dim))
                root_idxs = list(item.root_idxs)
                identity = len(root_idxs) == n and root_idxs == list(range(n))
                members.append(_Member(module, dim, None if identity else torch.tensor(root_idxs)))
            if grouped or n is None or n < 2:
                _logger.debug("leaving %s whole (grouped channels or a single channel)", names.get(root))
                continue
            n0 = self._n0.setdefault(root, n)
            floor = max(1, math.ceil(n0 * (1.0 - self.max_layer_ratio) - _EPS))
            floor = min(n, -(-floor // self.round_to) * self.round_to)
            groups.append(_Group(root, handler, names.get(root, type(root).__name__), n, n0, floor, members, group))
        return groups

    def _find_pool_sources(self) -> dict[nn.Module, nn.Module]:
        """For each global pooling layer (its cost follows its channels), the costed layer that last produced
        its channels before it ran (a residual sum's channels belong to one group: any of its layers will do)."""
        costed = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.Linear, nn.LayerNorm)
        sources, last = {}, {}
        for m, (shape_in, shape_out) in self._shapes.items():  # in execution order
            if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
                if len(shape_in) > 1 and shape_in[1] in last:
                    sources[m] = last[shape_in[1]]
            elif isinstance(m, costed) and len(shape_out) > 1:
                last[shape_out[1]] = m
        return sources

    # ---- importance ---------------------------------------------------------------------------------------
    def estimate_importance(self, importance: tp.importance.Importance, progress: ProgressFn | None = None) -> None:
        """Score every channel of every group once (gradients, for Taylor, must already be on the model)."""
        for i, g in enumerate(self.groups):
            with torch.no_grad():
                imp = importance(g.full)
            g.importance = (torch.zeros(g.n) if imp is None else imp.detach().float().cpu().reshape(-1)[: g.n])
            if progress:
                progress("importance", i + 1, len(self.groups))

    # ---- plans ---------------------------------------------------------------------------------------------
    def _keep(self, g: _Group, goal: int) -> int:
        """Channels kept for a goal: rounded down to ``round_to``, never under the group's floor."""
        if goal >= g.n:
            return g.n
        return max(g.floor, goal - goal % self.round_to)

    def identity(self) -> Plan:
        return Plan(tuple(g.n for g in self.groups), 0.0)

    def plan_local(self, ratio: float) -> Plan:
        """Every group keeps ``1 - ratio`` of the channels it had when the prune started (torch-pruning's
        ``int(n * (1 - ratio))``), rounded and floored."""
        return Plan(tuple(self._keep(g, math.floor(g.n0 * (1.0 - ratio) + _EPS)) for g in self.groups), ratio)

    def local_steps(self) -> list[tuple[float, int, int]]:
        """Every change :meth:`plan_local` makes as the ratio grows past ``ratio``: ``(ratio, group, kept)``, in order,
        ties in network order. Applying a prefix of these changes is a plan too: at a tie only some layers
        have crossed the next rounding step, which fills the gaps rounding leaves between ratio plans."""
        steps = []
        for i, g in enumerate(self.groups):
            kept = g.n
            for m in range(g.n0 - 1, 0, -1):  # floor(n0 * (1 - r)) is m for r just above 1 - (m + 1) / n0
                new = self._keep(g, m)
                if new < kept:
                    steps.append((1.0 - (m + 1) / g.n0, i, new))
                    kept = new
        return sorted(steps)

    def plan_steps(self, steps: list[tuple[float, int, int]], count: int) -> Plan:
        """The plan after the first ``count`` of :meth:`local_steps`."""
        kept = [g.n for g in self.groups]
        for _, i, k in steps[:count]:
            kept[i] = k
        return Plan(tuple(kept), steps[count - 1][0] if count else 0.0)

    def _global_order(self) -> torch.Tensor:
        if not hasattr(self, "_order"):
            scores = torch.cat([g.importance for g in self.groups]) if self.groups else torch.zeros(0)
            owner = torch.cat([torch.full((g.n,), i) for i, g in enumerate(self.groups)]) if self.groups else scores
            self._order = owner[torch.argsort(scores, stable=True)].long()
        return self._order

    def plan_global(self, removed: int) -> Plan:
        """The ``removed`` least important channels across all groups (importances are normalised per
        group by torch-pruning), each group then rounded and floored."""
        counts = torch.bincount(self._global_order()[:removed], minlength=len(self.groups)).tolist()
        return Plan(tuple(self._keep(g, g.n - c) if c else g.n for g, c in zip(self.groups, counts)), float(removed))

    def total_channels(self) -> int:
        return sum(g.n for g in self.groups)

    # ---- cost ----------------------------------------------------------------------------------------------
    def _channels(self, plan: Plan) -> dict[tuple[nn.Module, str], int]:
        """Channels removed from each (layer, "in"/"out") under ``plan``."""
        removed: dict[tuple[nn.Module, str], int] = {}
        for g, kept in zip(self.groups, plan.kept):
            cut = g.n - kept
            if cut <= 0:
                continue
            pruned = None
            for member in g.members:
                if member.root_idxs is None:
                    count = cut
                else:
                    if pruned is None:
                        pruned = torch.argsort(g.importance, stable=True)[:cut]
                    count = int(torch.isin(member.root_idxs, pruned).sum())
                key = (member.module, member.dim)
                removed[key] = removed.get(key, 0) + count
        return removed

    def cost(self, plan: Plan) -> dict[str, int]:
        """Parameters and MACs per image (fvcore's conventions, eval mode) of the model under ``plan``."""
        removed = self._channels(plan)
        params = macs = 0
        for m, (shape_in, shape_out) in self._shapes.items():
            if isinstance(m, nn.modules.conv._ConvNd):
                kernel = math.prod(m.kernel_size)
                c = m.out_channels - removed.get((m, "out"), 0)
                cin = 1 if _is_coupled(m) else (m.in_channels - removed.get((m, "in"), 0)) // m.groups
                weights = c * cin * kernel
                params += weights + (c if m.bias is not None else 0)
                macs += weights * math.prod(shape_out[2:])
            elif isinstance(m, nn.Linear):
                c = m.out_features - removed.get((m, "out"), 0)
                cin = m.in_features - removed.get((m, "in"), 0)
                params += c * cin + (c if m.bias is not None else 0)
                macs += c * cin * math.prod(shape_out[1:-1])  # once per token
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features - removed.get((m, "out"), 0)
                params += 2 * c if m.affine else 0
                macs += c * math.prod(shape_in[2:]) * (2 if m.affine else 1)
            elif isinstance(m, nn.LayerNorm):
                c = m.normalized_shape[-1] - removed.get((m, "out"), 0)
                params += (2 if m.elementwise_affine else 0) * c * math.prod(m.normalized_shape[:-1])
                macs += c * math.prod(shape_in[1:-1]) * (5 if m.elementwise_affine else 4)
            elif m in self._pool_sources:
                source = self._pool_sources[m]
                c = _out_channels(source) - removed.get((source, "out"), 0)
                macs += c * math.prod(shape_in[2:])
        return {"params": params + self._params_residual, "macs": macs + self._macs_residual}

    # ---- apply ---------------------------------------------------------------------------------------------
    def apply(self, plan: Plan) -> None:
        """Prune the model in place to ``plan`` (each group loses its least important channels); the
        planner then describes the pruned model (call :meth:`estimate_importance` again before planning)."""
        for g, kept in zip(self.groups, plan.kept):
            cut = g.n - kept
            if cut <= 0:
                continue
            idxs = torch.argsort(g.importance, stable=True)[:cut].tolist()
            group = self.graph.get_pruning_group(g.root, g.handler, sorted(idxs))
            if self.graph.check_pruning_group(group):
                group.prune()
            else:
                _logger.warning("torch-pruning refused to prune %s by %d channels; left whole", g.name, cut)
        self.groups = self._collect_groups()
        if hasattr(self, "_order"):
            del self._order

    def channels(self) -> dict[str, tuple[int, int]]:
        """Each prunable layer's output channels now and when the prune started, by module name."""
        names = {m: n for n, m in self.model.named_modules()}
        return {names.get(m, type(m).__name__): (self.graph.get_out_channels(m), n0) for m, n0 in self._n0.items()}

    def smallest_unrounded(self) -> Plan:
        """The plan keeping each group's floor without rounding (what ``round_to=1`` could reach)."""
        return Plan(tuple(min(g.n, max(1, math.ceil(g.n0 * (1.0 - self.max_layer_ratio) - _EPS))) for g in self.groups),
                    1.0)
