"""MixUp and CutMix applied once per batch through timm's ``Mixup``, for function-matching distillation.

Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and consistent" (CVPR): the student
learns the teacher's function best when both see exactly the same inputs, mixed ones included ("function
matching"). So :class:`BatchMixer` mixes a batch once and the engine gives that one mixed batch to the
teacher and to the student; the soft targets it returns describe the same mix for the cross-entropy term.

MixUp: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization" (ICLR). CutMix: Yun et al. 2019,
"CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features" (ICCV).

Randomness: timm draws the mixing ratio, the MixUp/CutMix choice and the CutMix box from numpy's global
generator, so runs are reproducible when the engine seeds ``np.random`` (it does, every epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.data.mixup import Mixup, mixup_target
from torch import Tensor

from students.common.errors import UserError

__all__ = ["BatchMixer", "MixConfig"]


@dataclass(frozen=True)
class MixConfig:
    """How batches are mixed; validated on creation. Both alphas 0 (the default) turns mixing off."""

    mixup_alpha: float = 0.0  # MixUp ratio ~ Beta(a, a); 0 = no MixUp. 0.2-1.0 is usual on CIFAR
    cutmix_alpha: float = 0.0  # CutMix box area ~ Beta(a, a); 0 = no CutMix. 1.0 is the paper's choice
    prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both alphas on: probability that a mixed batch uses CutMix
    label_smoothing: float = 0.0  # folded into the soft targets of mixed batches

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not value >= 0:
                raise UserError(f"{name} must be non-negative (0 turns it off), got {value}")
        for name in ("prob", "switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"mixing {name} must be a probability in [0, 1], got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class _BatchModeMixup(Mixup):
    """timm's ``Mixup`` in 'batch' mode, without the even-batch assertion of its ``__call__``.

    Why the assertion does not apply: batch mode pairs image ``i`` with image ``B - 1 - i`` through
    ``x.flip(0)`` and builds the targets with the same flip, which is well defined for any ``B``. With an odd
    ``B`` the middle image is paired with itself and keeps its own image and label; the assertion is there
    for the 'pair' and 'elem' modes, which we never use. A last, smaller batch may well be odd.
    """

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        lam = self._mix_batch(x)
        return x, mixup_target(target, self.num_classes, lam=lam, smoothing=self.label_smoothing)


class BatchMixer:
    """Mix a batch of images once (one ratio and one box for the whole batch) and return soft targets.

    Call it on the normalised training batch, then feed the returned images to teacher and student alike.

    Args:
        config: the mixing settings.
        num_classes: width of the soft targets.

    ``enabled`` is False when both alphas are 0; the mixer then returns the images untouched and the
    integer labels, so cross-entropy keeps hard labels with the loss's own label smoothing. When enabled,
    every batch gets float soft targets (B x C, label-smoothed), also those that ``prob`` leaves unmixed,
    so the target type never changes within a run.
    """

    def __init__(self, config: MixConfig, num_classes: int) -> None:
        if config.enabled and num_classes < 2:
            raise UserError(f"mixing needs at least 2 classes, got {num_classes}")
        self.config = config
        self.num_classes = int(num_classes)
        self.enabled = config.enabled
        self._mixup = (
            _BatchModeMixup(
                mixup_alpha=config.mixup_alpha,
                cutmix_alpha=config.cutmix_alpha,
                prob=config.prob,
                switch_prob=config.switch_prob,
                mode="batch",
                correct_lam=True,  # a box clipped at the border pastes less: the targets follow the real area
                label_smoothing=config.label_smoothing,
                num_classes=self.num_classes,
            )
            if self.enabled
            else None
        )

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed images (a new tensor; ``images`` is not modified) and soft targets, or both unchanged."""
        if self._mixup is None:
            return images, labels
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"expected one integer label per image, got labels {labels.dtype} {tuple(labels.shape)} "
                f"for images {tuple(images.shape)}"
            )
        if not images.dtype.is_floating_point:
            raise ValueError(f"mix normalised float images, got {images.dtype}")
        # timm mixes in place; the copy keeps the caller's batch intact (it may be reused or inspected).
        return self._mixup(images.clone(), labels)

    def __repr__(self) -> str:
        return f"BatchMixer({self.config}, num_classes={self.num_classes})"

