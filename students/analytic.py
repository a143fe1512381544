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


def spec_num_params(
    spec: StudentSpec, num_classes: int = 10, *, in_chans: int = 3, widths: Mapping[str, int] | None = None
) -> int:
    """Parameters of ``CifarResNet(spec, num_classes, in_chans, widths=widths)``, counted without building it.

    Mirrors the model's construction (bias-free convolutions, BatchNorm weight and bias, a projection
    shortcut where the nominal stride or width changes, a biased linear head) with Python integers, so a
    spec with a billion-parameter typo costs microseconds instead of gigabytes.
    """
    widths = dict(widths or {})

    def conv_bn(cin: int, cout: int, kernel: int) -> int:
        return cin * cout * kernel * kernel + 2 * cout

    stem = widths.get("stem.conv", spec.stem_channels)
    total = conv_bn(in_chans, stem, 3)
    nominal_in, actual_in = spec.stem_channels, stem
    for i, (n_blocks, chs, kernel) in enumerate(zip(spec.blocks, spec.stage_channels, spec.stage_kernels)):
        for j in range(n_blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            name = f"stages.{i}.{j}"
            mid = widths.get(f"{name}.conv1", chs)
            out = widths.get(f"{name}.conv2", chs)
            total += conv_bn(actual_in, mid, kernel) + conv_bn(mid, out, kernel)
            if stride != 1 or nominal_in != chs:
                total += conv_bn(actual_in, out, spec.skip_kernel)
            nominal_in, actual_in = chs, out
    if num_classes > 0:
        total += actual_in * num_classes + num_classes
    return total


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
    widths = dict(widths or {})

    def conv_bn(cin: int, cout: int, kernel: int, stride: int, side: int) -> tuple[int, int]:
        out = (side + 2 * (kernel // 2) - kernel) // stride + 1
        return cin * cout * kernel * kernel * out * out + 2 * cout * out * out, out

    stem = widths.get("stem.conv", spec.stem_channels)
    total, side = conv_bn(in_chans, stem, 3, 1, input_size)
    if spec.stem_pool:
        side = (side + 2 - 3) // 2 + 1
    nominal_in, actual_in = spec.stem_channels, stem
    for i, (n_blocks, chs, kernel) in enumerate(zip(spec.blocks, spec.stage_channels, spec.stage_kernels)):
        for j in range(n_blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            name = f"stages.{i}.{j}"
            mid = widths.get(f"{name}.conv1", chs)
            out = widths.get(f"{name}.conv2", chs)
            first, out_side = conv_bn(actual_in, mid, kernel, stride, side)
            total += first + conv_bn(mid, out, kernel, 1, out_side)[0]
            if stride != 1 or nominal_in != chs:
                total += conv_bn(actual_in, out, spec.skip_kernel, stride, side)[0]
            nominal_in, actual_in, side = chs, out, out_side
    total += actual_in * side * side  # global average pool
    if num_classes > 0:
        total += actual_in * num_classes
    return total
