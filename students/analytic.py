"""Parameters and MACs of a student spec counted with integers, without building it (no torch needed).

:mod:`students.cost` counts a built model with fvcore; the counts here agree with it exactly
(tests/test_students.py), and answer in microseconds: ``students list`` and every size check before a model
is allocated use them.
"""

from __future__ import annotations

from collections.abc import Mapping

from .common.errors import UserError
from .spec import StudentSpec, format_spec

__all__ = ["MAX_STUDENT_PARAMS", "CostError", "check_spec_cost", "spec_num_macs", "spec_num_params"]

# The largest student we agree to build: 1e9 parameters are 4 GB of float32 weights (plus as much again for
# gradients and each optimizer buffer), 200 times the 5M-parameter students this project is about. Anything
# bigger is a typo such as ``_c100000-100000``, refused before a single tensor is allocated.
MAX_STUDENT_PARAMS = 10**9

class CostError(UserError):
    """A student spec whose size is beyond what we agree to build (see :data:`MAX_STUDENT_PARAMS`)."""


def _convs(spec: StudentSpec, in_chans: int, input_size: int, widths: Mapping[str, int] | None):
    """Every convolution (each followed by a BatchNorm) of ``CifarResNet(spec, widths=widths)`` in order, as
    ``(cin, cout, kernel, output side)``; the last item is ``(channels, side)`` of the final feature map.

    Mirrors the model's construction: a 3x3 stem (then an optional stride-2 max-pool), per block two kxk
    convolutions (the first strided at a stage's start) and a projection shortcut where the nominal stride or
    width changes. ``widths`` (a pruned model's) overrides each convolution's output channels by name.
    """
    widths = dict(widths or {})
    stem = widths.get("stem.conv", spec.stem_channels)
    yield in_chans, stem, 3, input_size
    side = (input_size + 2 - 3) // 2 + 1 if spec.stem_pool else input_size
    nominal_in, actual_in = spec.stem_channels, stem
    for i, (n_blocks, chs, kernel) in enumerate(zip(spec.blocks, spec.stage_channels, spec.stage_kernels)):
        for j in range(n_blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            mid = widths.get(f"stages.{i}.{j}.conv1", chs)
            out = widths.get(f"stages.{i}.{j}.conv2", chs)
            out_side = (side + 2 * (kernel // 2) - kernel) // stride + 1
            yield actual_in, mid, kernel, out_side
            yield mid, out, kernel, out_side
            if stride != 1 or nominal_in != chs:
                yield actual_in, out, spec.skip_kernel, out_side  # skip_kernel // 2 padding keeps the side
            nominal_in, actual_in, side = chs, out, out_side
    yield actual_in, side


def spec_num_params(
    spec: StudentSpec, num_classes: int = 10, *, in_chans: int = 3, widths: Mapping[str, int] | None = None
) -> int:
    """Parameters of ``CifarResNet(spec, num_classes, in_chans, widths=widths)``, counted without building it.

    Bias-free convolutions, BatchNorm weight and bias, a biased linear head, counted with Python integers
    (:func:`_convs`), so a spec with a billion-parameter typo costs microseconds instead of gigabytes.
    """
    *convs, (features, _) = _convs(spec, in_chans, 32, widths)
    total = sum(cin * cout * k * k + 2 * cout for cin, cout, k, _ in convs)
    return total + (features * num_classes + num_classes if num_classes > 0 else 0)


def check_spec_cost(
    spec: StudentSpec,
    num_classes: int = 10,
    *,
    in_chans: int = 3,
    widths: Mapping[str, int] | None = None,
    max_params: int = MAX_STUDENT_PARAMS,
) -> int:
    """The parameter count of ``spec`` (see :func:`spec_num_params`); :class:`CostError` above ``max_params``."""
    n = spec_num_params(spec, num_classes, in_chans=in_chans, widths=widths)
    if n > max_params:
        raise CostError(
            f"student {format_spec(spec)} would have {n:,} parameters, beyond the {max_params:,} this tool "
            "builds; check the spec for a typo (channels, kernels, blocks)"
        )
    return n


def spec_num_macs(
    spec: StudentSpec,
    num_classes: int = 10,
    *,
    in_chans: int = 3,
    input_size: int = 32,
    widths: Mapping[str, int] | None = None,
) -> int:
    """MACs of one ``input_size`` x ``input_size`` image through ``CifarResNet(spec, ...)``, as fvcore counts them.

    fvcore's convention, mirrored term by term: a convolution costs ``Cin * Cout * k * k`` per output pixel,
    an (eval-mode, affine) BatchNorm 2 per output element, the global average pool 1 per input element, the
    linear head ``in * out``; ReLU, the residual add and the stem's max-pool are not counted.
    """
    *convs, (features, side) = _convs(spec, in_chans, input_size, widths)
    total = sum((cin * k * k + 2) * cout * out * out for cin, cout, k, out in convs)
    return total + features * side * side + (features * num_classes if num_classes > 0 else 0)
