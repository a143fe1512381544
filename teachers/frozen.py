"""The teacher during distillation: frozen by construction, fed the student's batch in its own format.

Frozen means three things, each enforced here rather than left to the training loop: no parameter requires a
gradient, the module is pinned in eval mode (``.train()`` cannot switch BatchNorm to batch statistics or
turn dropout on), and the forward pass runs under ``torch.inference_mode()`` so no autograd graph is built.

The data pipeline normalises images once, with the student's statistics. A teacher that expects other
statistics (an ImageNet model in upsample mode) or another resolution gets the batch converted on the device
by :class:`InputAdapter`: re-normalisation is one multiply-add per pixel, and resizing after it costs the
same as before it because bilinear interpolation commutes with a per-channel affine map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from students import CifarResNet

from .models import MODES, TeacherError

__all__ = ["FrozenTeacher", "InputAdapter", "freeze_teacher", "input_adapter"]

Stats = Sequence[float]


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"resize_to must be a positive size or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


class InputAdapter(nn.Module):
    """Convert a batch normalised with the student's mean/std into the teacher's format, then resize it.

    With ``x_s = (x - m_s) / s_s`` the teacher wants ``(x - m_t) / s_t = x_s * (s_s / s_t) + (m_s - m_t) / s_t``.
    Equal statistics and ``resize_to=None`` make this module the identity.

    Args:
        student_mean, student_std, teacher_mean, teacher_std: per-channel statistics as fractions of 255;
            all four or none.
        resize_to: the teacher's native side in pixels (or ``(height, width)``); inputs are resized
            bilinearly when their size differs.
    """

    def __init__(
        self,
        *,
        student_mean: Stats | None = None,
        student_std: Stats | None = None,
        teacher_mean: Stats | None = None,
        teacher_std: Stats | None = None,
        resize_to: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        given = [s is not None for s in (student_mean, student_std, teacher_mean, teacher_std)]
        if any(given) and not all(given):
            raise ValueError("pass all four of student_mean, student_std, teacher_mean, teacher_std, or none")
        self.size = _size_pair(resize_to)
        self.renormalise = False
        if all(given):
            stats = (student_mean, student_std, teacher_mean, teacher_std)
            ms, ss, mt, st = (tuple(float(v) for v in s) for s in stats)  # type: ignore[union-attr]
            if not len(ms) == len(ss) == len(mt) == len(st):
                raise ValueError("student and teacher mean/std must have one value per channel each")
            if min(ss + st) <= 0:
                raise ValueError("standard deviations must be positive")
            same = all(math.isclose(a, b, rel_tol=0, abs_tol=1e-7) for a, b in zip(ms + ss, mt + st))
            if not same:
                self.renormalise = True
                scale = torch.tensor([s / t for s, t in zip(ss, st)]).view(1, -1, 1, 1)
                shift = torch.tensor([(a - b) / t for a, b, t in zip(ms, mt, st)]).view(1, -1, 1, 1)
                # Not persistent: the statistics come from the data and the teacher's config, not a checkpoint.
                self.register_buffer("scale", scale, persistent=False)
                self.register_buffer("shift", shift, persistent=False)

    @property
    def is_identity(self) -> bool:
        return not self.renormalise and self.size is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            x = torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x

    def extra_repr(self) -> str:
        return f"renormalise={self.renormalise}, resize_to={self.size}"


def arch_adapter(arch: Mapping[str, Any]) -> InputAdapter | None:
    """The resize an upsample-mode timm model recorded in its checkpoint ``arch`` trains and is evaluated
    behind (``resize_to``), or None for a model that takes the images as they are."""
    return InputAdapter(resize_to=int(arch["resize_to"])) if arch.get("resize_to") else None


class FrozenTeacher(nn.Module):
    """A teacher that cannot learn: no gradients, eval mode pinned, forward under ``inference_mode``.

    The wrapped ``model`` is frozen in place (``requires_grad_(False)``). The output is an ordinary tensor
    without autograd history, so a KD loss may use it in any expression that backpropagates into the student.

    Args:
        model: the teacher network, returning logits.
        student_mean, student_std, teacher_mean, teacher_std, resize_to: see :class:`InputAdapter`; by default
            inputs go to the model unchanged.
        fold_bn: fold every BatchNorm into the convolution before it (exact in eval mode): one pass fewer
            over each activation; measured 1.5x faster teacher inference on a 2-core CPU together with
            channels-last (docs/RESULTS.md). Models torch.fx cannot trace are kept as they are.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        student_mean: Stats | None = None,
        student_std: Stats | None = None,
        teacher_mean: Stats | None = None,
        teacher_std: Stats | None = None,
        resize_to: int | Sequence[int] | None = None,
        fold_bn: bool = False,
    ) -> None:
        super().__init__()
        model.requires_grad_(False)
        num_classes = getattr(model, "num_classes", None)  # any nn.Module may be a teacher (distill.fit)
        self.model = _fold_batchnorm(model) if fold_bn else model
        self.adapter = InputAdapter(
            student_mean=student_mean, student_std=student_std,
            teacher_mean=teacher_mean, teacher_std=teacher_std, resize_to=resize_to,
        )
        self.num_classes = num_classes
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Stay in eval mode whatever ``mode`` says: BatchNorm statistics and dropout are part of the teacher."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.model(self.adapter(x))
        # Inference tensors cannot be saved for backward, and a loss that multiplies teacher logits with the
        # student's (DIST's correlations, for one) saves them. A clone made outside inference mode is an
        # ordinary tensor; for a B x C logit matrix the copy costs nothing next to the forward pass.
        return logits.clone()


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with each Conv-BatchNorm pair folded into one convolution (torch.fx), or ``model`` itself."""
    import logging

    from torch.fx.experimental.optimization import fuse

    was_training = model.training
    try:
        folded = fuse(model.eval(), inplace=False)
    except Exception as err:  # noqa: BLE001 - any tracing failure just means no folding
        logging.getLogger(__name__).debug("teacher not folded (torch.fx could not trace it: %s)", err)
        model.train(was_training)
        return model
    folded.requires_grad_(False)
    folded.num_classes = getattr(model, "num_classes", None)
    return folded


def _adapter_kwargs(
    model: nn.Module,
    mode: str,
    student_mean: Stats,
    student_std: Stats,
    teacher_mean: Stats | None,
    teacher_std: Stats | None,
) -> dict[str, Stats | tuple[int, int] | None]:
    if mode not in MODES:
        raise TeacherError(f"unknown teacher mode {mode!r}; choose cifar or upsample")
    if (teacher_mean is None) != (teacher_std is None):
        raise ValueError("pass both teacher_mean and teacher_std, or neither")
    upsample = mode == "upsample" and not isinstance(model, CifarResNet)  # students are CIFAR nets in any mode
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if teacher_mean is None:
        if upsample:
            # The model's own statistics, whether its weights come from ImageNet or from fine-tuning on our
            # data through this same adapter: training and distillation then agree by construction.
            teacher_mean, teacher_std = tuple(cfg.get("mean", student_mean)), tuple(cfg.get("std", student_std))
        else:
            # cifar mode: trained on our data at our resolution, it expects exactly what the student gets.
            teacher_mean, teacher_std = student_mean, student_std
    return {
        "student_mean": student_mean,
        "student_std": student_std,
        "teacher_mean": teacher_mean,
        "teacher_std": teacher_std,
        "resize_to": tuple(cfg.get("input_size", (3, 224, 224))[-2:]) if upsample else None,
    }


def input_adapter(
    model: nn.Module,
    *,
    mode: str,
    student_mean: Stats,
    student_std: Stats,
    teacher_mean: Stats | None = None,
    teacher_std: Stats | None = None,
) -> InputAdapter:
    """The :class:`InputAdapter` a teacher in ``mode`` needs, e.g. to train it on student-normalised batches.

    cifar mode and student teachers: the identity. upsample mode: resize to the model's
    ``pretrained_cfg['input_size']`` and re-normalise to its ``pretrained_cfg`` mean/std. Pass
    ``teacher_mean``/``teacher_std`` to override the statistics the teacher expects (e.g. those recorded in
    its checkpoint).
    """
    kwargs = _adapter_kwargs(model, mode, student_mean, student_std, teacher_mean, teacher_std)
    return InputAdapter(**kwargs)  # type: ignore[arg-type]


def freeze_teacher(
    model: nn.Module,
    *,
    mode: str,
    student_mean: Stats,
    student_std: Stats,
    teacher_mean: Stats | None = None,
    teacher_std: Stats | None = None,
) -> FrozenTeacher:
    """Wrap a trained teacher as a :class:`FrozenTeacher` with the same input rules as :func:`input_adapter`."""
    kwargs = _adapter_kwargs(model, mode, student_mean, student_std, teacher_mean, teacher_std)
    return FrozenTeacher(model, **kwargs)  # type: ignore[arg-type]
