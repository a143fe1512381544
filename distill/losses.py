"""Distillation losses on logits. Every loss returns a dict: ``{"loss": total, "ce": ..., "kd": ..., ...}``.

The training loop only reads ``"loss"`` (to backpropagate) and logs every key, so it never knows which
method runs. The parts are unweighted: ``"ce"`` is the cross-entropy with the labels and ``"kd"`` the
method's distillation term; ``"loss"`` is their weighted sum::

    loss = ce_weight * ce + kd_weight * kd_scale * kd          ce_weight defaults to 1 - kd_weight

``kd_weight`` is the weight of the distillation term (Hinton's alpha) and, unless ``ce_weight`` is given,
cross-entropy gets the rest (Hinton's convex mix). DKD and DIST add their terms to a full-weight
cross-entropy in their papers, so their class defaults are ``kd_weight=1, ce_weight=1``. ``kd_scale`` is
a warm-up factor the engine may change between epochs (:meth:`LogitLoss.set_epoch`); DKD's recipe needs it.

``targets`` are class indices (int64, B) or soft targets (float, B x C, rows summing to 1, e.g. from
MixUp/CutMix). Hard targets get ``label_smoothing``; soft targets already carry any smoothing.
``teacher_logits=None`` turns every loss into plain cross-entropy (teacher training, no-teacher baselines).

Teacher logits are detached here whatever the caller did, and all arithmetic is in float32 even under
bf16 autocast: a temperature-softened softmax over 100 classes loses most of its mass to rounding in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from students.common.errors import UserError
from students.spec import suggest

__all__ = [
    "CELoss",
    "DISTLoss",
    "DKDLoss",
    "KDLoss",
    "KD_LOSSES",
    "LogitLoss",
    "build_loss",
    "cross_entropy",
    "hard_labels",
    "standardize_logits",
]


# ----------------------------------------------------------------------------------------- shared pieces


def _check_targets(logits: Tensor, targets: Tensor) -> None:
    if targets.ndim == 1 and not targets.dtype.is_floating_point:
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(f"{targets.shape[0]} targets for {logits.shape[0]} logits")
        return
    if targets.ndim == 2 and targets.dtype.is_floating_point:
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets of shape {tuple(targets.shape)} for logits {tuple(logits.shape)}")
        return
    raise ValueError(
        f"targets must be class indices (int, B) or soft targets (float, B x C); got {targets.dtype} "
        f"of shape {tuple(targets.shape)}"
    )


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy against class indices (with label smoothing) or soft targets.

    Soft targets use ``-sum_c y_c log softmax(z)_c``, the same quantity torch computes for class
    probabilities; their smoothing is already inside ``y`` (see :mod:`distill.mixing`), so
    ``label_smoothing`` applies to class indices only.
    """
    _check_targets(logits, targets)
    if targets.dtype.is_floating_point:
        return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def hard_labels(targets: Tensor) -> Tensor:
    """Class indices: ``targets`` itself, or the argmax of soft targets (the dominant class of a mix)."""
    return targets.argmax(dim=1) if targets.dtype.is_floating_point else targets


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each sample's logits: ``(z - mean(z)) / (std(z) + eps)``.

    Sun et al. 2024, "Logit Standardization in Knowledge Distillation" (CVPR): the student should match the
    teacher's logit *relations*, not their scale and shift, which a shared temperature otherwise forces on
    it. ``std`` is the unbiased estimate, as in the authors' code.
    """
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


class LogitLoss(nn.Module):
    """Shared arguments, validation and the ``teacher_logits=None`` path of every loss here.

    Args:
        temperature: softmax temperature of the distillation term (> 0).
        kd_weight: weight of the distillation term (>= 0).
        ce_weight: weight of the cross-entropy term (>= 0); None gives ``1 - kd_weight``.
        label_smoothing: for hard targets, in [0, 1).
        warmup_epochs: epochs over which ``kd_scale`` rises linearly to 1 (:meth:`set_epoch`); 0 = none.
    """

    name = "logit"

    def __init__(
        self,
        *,
        temperature: float,
        kd_weight: float,
        ce_weight: float | None = None,
        label_smoothing: float = 0.0,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise UserError(f"temperature must be positive, got {temperature}")
        if not (math.isfinite(kd_weight) and kd_weight >= 0):
            raise UserError(f"KD weight must be non-negative, got {kd_weight}")
        if ce_weight is None:
            if kd_weight > 1:
                raise UserError(f"KD weight must be in [0, 1] when cross-entropy gets 1 - it, got {kd_weight}")
            ce_weight = 1.0 - kd_weight
        if not (math.isfinite(ce_weight) and ce_weight >= 0):
            raise UserError(f"cross-entropy weight must be non-negative, got {ce_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        if not warmup_epochs >= 0:
            raise UserError(f"KD warm-up must be a non-negative number of epochs, got {warmup_epochs}")
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.ce_weight = float(ce_weight)
        self.label_smoothing = float(label_smoothing)
        self.warmup_epochs = float(warmup_epochs)
        self.kd_scale = 1.0

    def set_epoch(self, epoch: int) -> None:
        """Set ``kd_scale`` for the epoch about to run (0-based): ``min((epoch + 1) / warmup_epochs, 1)``.

        Counting from 1 matches DKD's reference code, whose first epoch already has a non-zero KD term.
        """
        self.kd_scale = 1.0 if self.warmup_epochs <= 0 else min((epoch + 1) / self.warmup_epochs, 1.0)

    def distill(self, student: Tensor, teacher: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """The method's distillation term as ``{"kd": ..., **extra parts}`` from float32 logits."""
        raise NotImplementedError

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor) -> dict[str, Tensor]:
        ce = cross_entropy(student_logits, targets, self.label_smoothing)
        if teacher_logits is None:
            return {"loss": ce, "ce": ce}
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                f"{tuple(student_logits.shape)} differ; teacher and student need the same classes"
            )
        parts = self.distill(student_logits.float(), teacher_logits.detach().float(), targets)
        loss = self.ce_weight * ce + (self.kd_weight * self.kd_scale) * parts["kd"]
        return {"loss": loss, "ce": ce, **parts}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature:g}, kd_weight={self.kd_weight:g}, ce_weight={self.ce_weight:g}, "
                f"label_smoothing={self.label_smoothing:g}")


# ------------------------------------------------------------------------------------------------ losses


class CELoss(LogitLoss):
    """Cross-entropy with the labels only, for teachers and no-teacher baselines; teacher logits are ignored."""

    name = "ce"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__(temperature=1.0, kd_weight=0.0, ce_weight=1.0, label_smoothing=label_smoothing)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor) -> dict[str, Tensor]:
        return super().forward(student_logits, None, targets)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing:g}"


class KDLoss(LogitLoss):
    """Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network".

    ``kd = T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch; the ``T^2`` keeps the
    gradient's size independent of the temperature (section 2 of the paper). The total is
    ``kd_weight * kd + (1 - kd_weight) * ce`` unless ``ce_weight`` is given.

    Args:
        temperature: T (> 0); 4 is the common CIFAR choice.
        kd_weight: alpha, the weight of the KD term, in [0, 1]; cross-entropy gets ``1 - kd_weight``.
        label_smoothing: for hard targets.
        standardize: z-score both logit vectors first (:func:`standardize_logits`; Sun et al. 2024,
            "Logit Standardization in Knowledge Distillation", CVPR). Their recipe pairs it with a lower
            temperature and a larger KD weight than plain KD: tune both.
        ce_weight: override the cross-entropy weight.
        warmup_epochs: see :meth:`LogitLoss.set_epoch`.
    """

    name = "kd"

    def __init__(
        self,
        temperature: float = 4.0,
        kd_weight: float = 0.9,
        label_smoothing: float = 0.0,
        *,
        standardize: bool = False,
        ce_weight: float | None = None,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__(temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight,
                         label_smoothing=label_smoothing, warmup_epochs=warmup_epochs)
        self.standardize = bool(standardize)

    def distill(self, student: Tensor, teacher: Tensor, targets: Tensor) -> dict[str, Tensor]:
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        t = self.temperature
        log_p_student = F.log_softmax(student / t, dim=1)
        log_p_teacher = F.log_softmax(teacher / t, dim=1)
        # log_target keeps tiny teacher probabilities exact instead of log(softmax) underflowing to -inf.
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return {"kd": kl * t * t}


class DKDLoss(LogitLoss):
    """Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR).

    KD's KL divergence splits into a target-class part and a non-target part, and classic KD weights the
    second by the teacher's target-class confidence ``1 - p_t``, which suppresses it exactly when the
    teacher is good. DKD weights the two independently: ``kd = tckd_weight * TCKD + nckd_weight * NCKD`` with

    - TCKD: ``T^2 * KL(b_teacher || b_student)`` between binary distributions ``b = [p_gt, 1 - p_gt]``;
    - NCKD: ``T^2 * KL(q_teacher || q_student)`` between the softmaxes over the non-target classes only.

    Defaults are the paper's CIFAR-100 setting (its alpha and beta): ``tckd_weight=1, nckd_weight=8, T=4``, added to a full-weight
    cross-entropy (``kd_weight=1, ce_weight=1``), with the KD term warmed up linearly over 20 epochs
    (call :meth:`set_epoch` each epoch; the paper trains 240). The paper uses smaller ``beta`` for other
    teacher/student pairs (e.g. 0.5 on ImageNet).

    Soft targets (MixUp/CutMix) have no single ground-truth class: their argmax, the dominant class of the
    mix, plays that role in the decoupling, while the cross-entropy uses the full soft targets.

    Args:
        temperature, kd_weight, ce_weight, label_smoothing, warmup_epochs: see :class:`LogitLoss`.
        tckd_weight: weight of the target-class term (the paper's alpha). nckd_weight: weight of the
            non-target-class term (the paper's beta).
        standardize: z-score logits first (Sun et al. 2024, see :class:`KDLoss`).
    """

    name = "dkd"

    def __init__(
        self,
        temperature: float = 4.0,
        kd_weight: float = 1.0,
        label_smoothing: float = 0.0,
        *,
        tckd_weight: float = 1.0,
        nckd_weight: float = 8.0,
        ce_weight: float | None = 1.0,
        warmup_epochs: float = 20.0,
        standardize: bool = False,
    ) -> None:
        super().__init__(temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight,
                         label_smoothing=label_smoothing, warmup_epochs=warmup_epochs)
        if tckd_weight < 0 or nckd_weight < 0:
            raise UserError(f"DKD weights must be non-negative, got tckd_weight={tckd_weight}, "
                            f"nckd_weight={nckd_weight}")
        self.tckd_weight = float(tckd_weight)
        self.nckd_weight = float(nckd_weight)
        self.standardize = bool(standardize)

    def distill(self, student: Tensor, teacher: Tensor, targets: Tensor) -> dict[str, Tensor]:
        if student.shape[1] < 2:
            raise ValueError("DKD needs at least 2 classes")
        if self.standardize:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        t = self.temperature
        gt = F.one_hot(hard_labels(targets), student.shape[1]).bool()
        tckd_s, log_q_s = _decouple(student / t, gt)
        tckd_t, log_q_t = _decouple(teacher / t, gt)
        tckd = (tckd_t.exp() * (tckd_t - tckd_s)).sum(dim=1).mean() * t * t
        # The ground-truth column is outside the non-target distribution: zero its probability and its log
        # ratio by selection, so no 0 * inf can reach the gradient.
        q_t = torch.where(gt, 0.0, log_q_t.exp())
        nckd = (q_t * torch.where(gt, 0.0, log_q_t - log_q_s)).sum(dim=1).mean() * t * t
        kd = self.tckd_weight * tckd + self.nckd_weight * nckd
        return {"kd": kd, "tckd": tckd, "nckd": nckd}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tckd_weight={self.tckd_weight:g}, nckd_weight={self.nckd_weight:g}, warmup_epochs={self.warmup_epochs:g}"


def _decouple(z: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """From tempered logits: log of the binary [p_gt, 1 - p_gt] (B x 2) and of the non-target softmax (B x C).

    Computed with log-sum-exps rather than logs of probabilities, so a confident teacher (``1 - p_gt``
    near 0) stays exact. The non-target log-softmax's ground-truth column is finite but meaningless.
    """
    lse_all = torch.logsumexp(z, dim=1, keepdim=True)
    lse_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
    z_gt = (z * gt).sum(dim=1, keepdim=True)
    log_binary = torch.cat([z_gt - lse_all, lse_other - lse_all], dim=1)
    return log_binary, z - lse_other


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (as DIST's reference code)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(LogitLoss):
    """Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (NeurIPS).

    Matching probabilities exactly (KL) is too strict when the teacher is much stronger; DIST asks only for
    the same *relations*, measured by Pearson correlation of ``y = softmax(z / T)``:

    - inter-class: ``1 - mean_i rho(y_s[i, :], y_t[i, :])``, each sample's ranking of the classes;
    - intra-class: ``1 - mean_c rho(y_s[:, c], y_t[:, c])``, each class's ranking of the batch's samples.

    ``kd = T^2 * (beta * inter + gamma * intra)``. Defaults follow the official implementation
    (``beta = gamma = 1``, ``T = 1``) added to a full-weight cross-entropy. The intra-class term compares
    samples within a batch, so it needs batches of several images (it is constant for one).

    Args:
        temperature, kd_weight, ce_weight, label_smoothing, warmup_epochs: see :class:`LogitLoss`.
        beta: inter-class weight. gamma: intra-class weight.
    """

    name = "dist"

    def __init__(
        self,
        temperature: float = 1.0,
        kd_weight: float = 1.0,
        label_smoothing: float = 0.0,
        *,
        beta: float = 1.0,
        gamma: float = 1.0,
        ce_weight: float | None = 1.0,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__(temperature=temperature, kd_weight=kd_weight, ce_weight=ce_weight,
                         label_smoothing=label_smoothing, warmup_epochs=warmup_epochs)
        if beta < 0 or gamma < 0:
            raise UserError(f"DIST weights must be non-negative, got beta={beta}, gamma={gamma}")
        self.beta = float(beta)
        self.gamma = float(gamma)

    def distill(self, student: Tensor, teacher: Tensor, targets: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        y_s = F.softmax(student / t, dim=1)
        y_t = F.softmax(teacher / t, dim=1)
        inter = (1.0 - _pearson_rows(y_s, y_t).mean()) * t * t
        intra = (1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()) * t * t
        return {"kd": self.beta * inter + self.gamma * intra, "inter": inter, "intra": intra}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta:g}, gamma={self.gamma:g}"


# ---------------------------------------------------------------------------------------------- registry

KD_LOSSES: dict[str, type[LogitLoss]] = {"kd": KDLoss, "dkd": DKDLoss, "dist": DISTLoss}


def build_loss(
    name: str,
    *,
    temperature: float | None = None,
    kd_weight: float | None = None,
    label_smoothing: float = 0.0,
    ce_weight: float | None = None,
    **kwargs: object,
) -> LogitLoss:
    """Build a loss by name: ``ce`` or one of :data:`KD_LOSSES`.

    ``temperature`` and ``kd_weight`` left as None keep each method's published defaults (KD: T=4,
    kd_weight=0.9, CE 0.1; DKD: T=4, CE 1 + KD 1; DIST: T=1, CE 1 + KD 1). A ``kd_weight`` given without a
    ``ce_weight`` means Hinton's convex mix for every method: cross-entropy gets ``1 - kd_weight``.
    Method-specific options (DKD's ``tckd_weight``, ``nckd_weight``; DIST's ``beta``, ``gamma``;
    ``standardize``, ``warmup_epochs``) pass through ``kwargs``.
    """
    if name == "ce":
        return CELoss(label_smoothing=label_smoothing)
    if name not in KD_LOSSES:
        raise UserError(
            f"unknown distillation loss {name!r}{suggest(name, ['ce', *KD_LOSSES])}; "
            f"choose one of ce, {', '.join(KD_LOSSES)}"
        )
    args: dict[str, object] = {"label_smoothing": label_smoothing, **kwargs}
    if temperature is not None:
        args["temperature"] = temperature
    if kd_weight is not None:
        args["kd_weight"] = kd_weight
        args["ce_weight"] = ce_weight  # None: 1 - kd_weight
    elif ce_weight is not None:
        args["ce_weight"] = ce_weight
    return KD_LOSSES[name](**args)  # type: ignore[arg-type]
