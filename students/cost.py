"""Parameter and compute cost of a model, counted by fvcore.

fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop"; we call that a MAC, and
report FLOPs = 2 x MACs beside it so nobody has to guess which convention a number uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .analytic import MAX_STUDENT_PARAMS, CostError, check_spec_cost, spec_num_macs, spec_num_params

__all__ = [
    "MAX_STUDENT_PARAMS", "CostError", "StageCost", "CostReport", "check_spec_cost", "cost_report", "count_macs",
    "spec_num_macs", "spec_num_params",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageCost:
    """Cost of one top-level part of the model (stem, each stage, head)."""

    name: str
    num_params: int
    macs: int
    out_channels: int | None = None
    out_size: tuple[int, int] | None = None  # spatial size (H, W) of the part's output

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclass(frozen=True)
class CostReport:
    """Parameters, MACs and FLOPs of a model for one input size; ``skipped_ops`` are ops fvcore ignored."""

    num_params: int
    num_trainable: int
    macs: int
    input_size: tuple[int, int, int]
    stages: tuple[StageCost, ...] = ()
    skipped_ops: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {
            "num_params": self.num_params,
            "num_trainable": self.num_trainable,
            "macs": self.macs,
            "flops": self.flops,
            "input_size": list(self.input_size),
            "stages": [
                {
                    "name": s.name, "num_params": s.num_params, "macs": s.macs, "flops": s.flops,
                    "out_channels": s.out_channels, "out_size": list(s.out_size) if s.out_size else None,
                }
                for s in self.stages
            ],
            "skipped_ops": dict(self.skipped_ops),
        }


def _parts(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Top-level parts to break the cost down by, each a label and the child modules it covers.

    For a student (anything with ``stem`` and a ``stages`` Sequential): the stem, each stage, and the head
    (every other child: pooling, dropout, classifier). Otherwise each top-level child on its own.
    """
    children = [n for n, _ in model.named_children()]
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential):
        return [(n, [n]) for n in children]
    parts = [("stem", ["stem"])] if "stem" in children else []
    parts += [(f"stages.{i}", [f"stages.{i}"]) for i in range(len(stages))]
    rest = [n for n in children if n not in ("stem", "stages")]
    return parts + ([("head", rest)] if rest else [])


@torch.no_grad()
def cost_report(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> CostReport:
    """Count parameters and MACs (fvcore) of ``model`` on one input of ``input_size``, per top-level part."""
    from fvcore.nn import FlopCountAnalysis

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_size, device=device)
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = analysis.by_module()
        total = int(analysis.total())
        skipped = dict(analysis.unsupported_ops())
        # Output shape of each part (its last module's output), captured with forward hooks in one extra pass.
        shapes: dict[str, tuple[int, ...]] = {}
        parts = _parts(model)
        hooks = [
            model.get_submodule(names[-1]).register_forward_hook(
                lambda _m, _i, out, label=label: shapes.__setitem__(label, tuple(out.shape))
            )
            for label, names in parts
        ]
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
    finally:
        model.train(was_training)
    stages = []
    for label, names in parts:
        shape = shapes.get(label, ())
        stages.append(
            StageCost(
                name=label,
                num_params=sum(p.numel() for n in names for p in model.get_submodule(n).parameters()),
                macs=sum(int(by_module.get(n, 0)) for n in names),
                out_channels=shape[1] if len(shape) >= 2 else None,
                out_size=(shape[2], shape[3]) if len(shape) == 4 else None,
            )
        )
    return CostReport(
        num_params=sum(p.numel() for p in model.parameters()),
        num_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=total,
        input_size=tuple(input_size),
        stages=tuple(stages),
        skipped_ops=skipped,
    )


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """MACs of one forward pass on one input (fvcore's count)."""
    return cost_report(model, input_size).macs
