"""Distillation losses against hand computations written out step by step in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    KD_LOSSES,
    CELoss,
    DISTLoss,
    DKDLoss,
    KDLoss,
    build_loss,
    cross_entropy,
    standardize_logits,
)
from students.errors import UserError

B, C = 6, 5
TOL = dict(rel=1e-5, abs=1e-6)  # the losses compute in float32, the references in float64


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, C, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    return student, teacher, labels


# -------------------------------------------------------------------------- references, by the formulas


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for each row: sum_c p_c (log p_c - log q_c)."""
    return (p * (torch.log(p) - torch.log(q))).sum(dim=1)


def ref_ce(s: torch.Tensor, labels: torch.Tensor, eps: float = 0.0) -> float:
    """(1 - eps) * NLL of the label + eps * mean over classes of -log p: torch's label smoothing."""
    log_p = torch.log(softmax(s))
    nll = -log_p[torch.arange(len(labels)), labels]
    uniform = -log_p.mean(dim=1)
    return ((1 - eps) * nll + eps * uniform).mean().item()


def ref_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    p_s, p_t = softmax(s / temperature), softmax(t / temperature)
    return temperature**2 * kl_rows(p_t, p_s).mean().item()


def ref_dkd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[float, float]:
    """(TCKD, NCKD), each times T^2 and averaged over the batch, following the paper's definitions."""
    tckd, nckd = [], []
    for i, y in enumerate(labels.tolist()):
        p_s, p_t = softmax(s[i : i + 1] / temperature)[0], softmax(t[i : i + 1] / temperature)[0]
        b_s = torch.stack([p_s[y], 1 - p_s[y]])  # binary: target vs all others
        b_t = torch.stack([p_t[y], 1 - p_t[y]])
        tckd.append((b_t * torch.log(b_t / b_s)).sum())
        others = [c for c in range(len(p_s)) if c != y]
        q_s = p_s[others] / p_s[others].sum()  # distribution among the non-target classes
        q_t = p_t[others] / p_t[others].sum()
        nckd.append((q_t * torch.log(q_t / q_s)).sum())
    t2 = temperature**2
    return t2 * torch.stack(tckd).mean().item(), t2 * torch.stack(nckd).mean().item()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    da, db = a - a.mean(), b - b.mean()
    return ((da * db).sum() / torch.sqrt((da**2).sum() * (db**2).sum())).item()


def ref_dist(s: torch.Tensor, t: torch.Tensor, temperature: float) -> tuple[float, float]:
    """(inter, intra), each times T^2: 1 - mean Pearson over rows (samples), then over columns (classes)."""
    y_s, y_t = softmax(s / temperature), softmax(t / temperature)
    inter = 1 - sum(pearson(y_s[i], y_t[i]) for i in range(y_s.shape[0])) / y_s.shape[0]
    intra = 1 - sum(pearson(y_s[:, c], y_t[:, c]) for c in range(y_s.shape[1])) / y_s.shape[1]
    return temperature**2 * inter, temperature**2 * intra


def f32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


# ------------------------------------------------------------------------------------------------------ KD


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_hand_computation(logits, temperature: float) -> None:
    s, t, y = logits
    out = KDLoss(temperature=temperature, kd_weight=0.7)(*f32(s, t), y)
    assert out["kd"].item() == pytest.approx(ref_kd(s, t, temperature), **TOL)
    assert out["ce"].item() == pytest.approx(ref_ce(s, y), **TOL)
    assert out["loss"].item() == pytest.approx(0.7 * out["kd"].item() + 0.3 * out["ce"].item(), **TOL)


def test_kd_carries_the_t_squared_factor(logits) -> None:
    s, t, y = logits
    p_s, p_t = softmax(s / 4), softmax(t / 4)
    plain_kl = kl_rows(p_t, p_s).mean().item()
    kd4 = KDLoss(temperature=4.0, kd_weight=1.0)(*f32(s, t), y)["kd"].item()
    assert kd4 == pytest.approx(16 * plain_kl, **TOL)
    kd1 = KDLoss(temperature=1.0, kd_weight=1.0)(*f32(s, t), y)["kd"].item()
    assert kd1 == pytest.approx(kl_rows(softmax(t), softmax(s)).mean().item(), **TOL)


def test_kd_weight_extremes(logits) -> None:
    s, t, y = f32(*logits[:2]) + [logits[2]]
    only_ce = KDLoss(kd_weight=0.0)(s, t, y)
    assert only_ce["loss"].item() == pytest.approx(F.cross_entropy(s, y).item(), **TOL)
    only_kd = KDLoss(kd_weight=1.0)(s, t, y)
    assert only_kd["loss"].item() == pytest.approx(only_kd["kd"].item(), **TOL)
    explicit = KDLoss(kd_weight=1.0, ce_weight=1.0)(s, t, y)
    assert explicit["loss"].item() == pytest.approx(explicit["kd"].item() + explicit["ce"].item(), **TOL)


def test_label_smoothing_matches_torch(logits) -> None:
    s, t, y = logits
    out = KDLoss(kd_weight=0.5, label_smoothing=0.1)(*f32(s, t), y)
    assert out["ce"].item() == pytest.approx(F.cross_entropy(s, y, label_smoothing=0.1).item(), **TOL)
    assert out["ce"].item() == pytest.approx(ref_ce(s, y, eps=0.1), **TOL)


def test_soft_targets(logits) -> None:
    s, t, y = logits
    eps = 0.1
    smoothed = torch.full((B, C), eps / C, dtype=torch.float64)
    smoothed[torch.arange(B), y] += 1 - eps
    # Smoothed one-hot soft targets give the same CE as class indices with label smoothing.
    soft = cross_entropy(s.float(), smoothed.float())
    assert soft.item() == pytest.approx(F.cross_entropy(s, y, label_smoothing=eps).item(), **TOL)
    # A mix: -sum_c y_c log softmax(s)_c, and the loss's own label_smoothing is not applied twice.
    lam = 0.3
    mixed = lam * smoothed + (1 - lam) * smoothed.flip(0)
    expected = -(mixed * torch.log(softmax(s))).sum(dim=1).mean().item()
    out = KDLoss(kd_weight=0.5, label_smoothing=0.2)(*f32(s, t), mixed.float())
    assert out["ce"].item() == pytest.approx(expected, **TOL)
    assert out["kd"].item() == pytest.approx(ref_kd(s, t, 4.0), **TOL)


def test_no_teacher_is_plain_cross_entropy(logits) -> None:
    s, _, y = logits
    for loss in (KDLoss(), DKDLoss(), DISTLoss(), CELoss(label_smoothing=0.1)):
        out = loss(s.float(), None, y)
        assert set(out) == {"loss", "ce"}
        assert out["loss"].item() == pytest.approx(F.cross_entropy(s, y, label_smoothing=loss.label_smoothing).item(),
                                                   **TOL)
    out = CELoss()(s.float(), torch.zeros(B, C), y)  # CE ignores teacher logits
    assert set(out) == {"loss", "ce"}


def test_standardized_kd(logits) -> None:
    s, t, y = logits

    def zscore(z: torch.Tensor) -> torch.Tensor:
        mean = z.mean(dim=1, keepdim=True)
        std = torch.sqrt(((z - mean) ** 2).sum(dim=1, keepdim=True) / (z.shape[1] - 1))  # unbiased
        return (z - mean) / std

    assert torch.allclose(standardize_logits(s), zscore(s), atol=1e-6)  # float64 in, float64 out
    loss = KDLoss(temperature=2.0, kd_weight=1.0, standardize=True)
    out = loss(*f32(s, t), y)
    assert out["kd"].item() == pytest.approx(ref_kd(zscore(s), zscore(t), 2.0), **TOL)
    # Only the relations between logits count: a student off by a scale and a shift is not penalised for it.
    shifted = loss((3 * s + 5).float(), t.float(), y)
    assert shifted["kd"].item() == pytest.approx(out["kd"].item(), rel=1e-4)


# ----------------------------------------------------------------------------------------------------- DKD


def test_dkd_matches_hand_computation(logits) -> None:
    s, t, y = logits
    loss = DKDLoss(temperature=4.0, tckd_weight=1.0, nckd_weight=8.0)
    out = loss(*f32(s, t), y)
    tckd, nckd = ref_dkd(s, t, y, 4.0)
    assert out["tckd"].item() == pytest.approx(tckd, **TOL)
    assert out["nckd"].item() == pytest.approx(nckd, **TOL)
    assert out["kd"].item() == pytest.approx(tckd + 8 * nckd, **TOL)
    # The paper's total: a full-weight CE plus the DKD term.
    assert out["loss"].item() == pytest.approx(ref_ce(s, y) + tckd + 8 * nckd, **TOL)


def test_dkd_decomposes_classic_kd(logits) -> None:
    # The paper's equation: KD = TCKD + (1 - p_target^teacher) * NCKD, sample by sample.
    s, t, y = logits
    for i in range(B):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        parts = DKDLoss(temperature=4.0)(*f32(si, ti), yi)
        p_target = softmax(ti / 4)[0, yi].item()
        kd = KDLoss(temperature=4.0, kd_weight=1.0)(*f32(si, ti), yi)["kd"].item()
        assert kd == pytest.approx(parts["tckd"].item() + (1 - p_target) * parts["nckd"].item(), rel=1e-4)


def test_dkd_soft_targets_use_their_dominant_class(logits) -> None:
    s, t, y = logits
    soft = 0.7 * F.one_hot(y, C).double() + 0.3 * F.one_hot(y.flip(0), C).double()
    out = DKDLoss()(*f32(s, t), soft.float())
    tckd, nckd = ref_dkd(s, t, y, 4.0)  # argmax of the soft targets is y
    assert out["tckd"].item() == pytest.approx(tckd, **TOL) and out["nckd"].item() == pytest.approx(nckd, **TOL)


def test_dkd_confident_teacher_stays_finite() -> None:
    s = torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([1, 2, 3, 4])
    t = torch.zeros(4, 10)
    t[torch.arange(4), y] = 300.0  # 1 - p_target underflows to 0 in a naive log(1 - p)
    out = DKDLoss()(s, t, y)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values()) and torch.isfinite(s.grad).all()


def test_dkd_warmup() -> None:
    loss = DKDLoss(warmup_epochs=20)
    loss.set_epoch(0)
    assert loss.kd_scale == pytest.approx(1 / 20)
    loss.set_epoch(19)
    assert loss.kd_scale == 1.0
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    loss.set_epoch(4)
    out = loss(s, t, y)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.25 * out["kd"].item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------- DIST


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_matches_hand_computation(logits, temperature: float) -> None:
    s, t, y = logits
    out = DISTLoss(temperature=temperature, beta=2.0, gamma=0.5)(*f32(s, t), y)
    inter, intra = ref_dist(s, t, temperature)
    assert out["inter"].item() == pytest.approx(inter, **TOL)
    assert out["intra"].item() == pytest.approx(intra, **TOL)
    assert out["kd"].item() == pytest.approx(2 * inter + 0.5 * intra, **TOL)
    assert out["loss"].item() == pytest.approx(ref_ce(s, y) + 2 * inter + 0.5 * intra, **TOL)


# --------------------------------------------------------------------------------------------- all losses


@pytest.mark.parametrize("name", sorted(KD_LOSSES))
def test_identical_logits_give_zero_kd(logits, name: str) -> None:
    s, _, y = logits
    out = build_loss(name)(s.float(), s.float().clone(), y)
    assert out["kd"].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(KD_LOSSES))
def test_gradients_reach_student_only(logits, name: str) -> None:
    s, t, y = logits
    student = s.float().requires_grad_(True)
    teacher = t.float().requires_grad_(True)
    build_loss(name)(student, teacher, y)["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("name", sorted(KD_LOSSES))
def test_bf16_logits_are_computed_in_float32(logits, name: str) -> None:
    s, t, y = logits
    out = build_loss(name)(s.bfloat16(), t.bfloat16(), y)
    assert all(v.dtype == torch.float32 for v in out.values())
    reference = build_loss(name)(s.bfloat16().float(), t.bfloat16().float(), y)
    assert out["loss"].item() == reference["loss"].item()


def test_build_loss_defaults_and_weights() -> None:
    kd = build_loss("kd")
    assert isinstance(kd, KDLoss) and (kd.temperature, kd.kd_weight, kd.ce_weight) == (4.0, 0.9, pytest.approx(0.1))
    dkd = build_loss("dkd")
    assert (dkd.temperature, dkd.kd_weight, dkd.ce_weight, dkd.tckd_weight, dkd.nckd_weight) == (4.0, 1.0, 1.0, 1.0, 8.0)
    dist = build_loss("dist")
    assert (dist.temperature, dist.kd_weight, dist.ce_weight) == (1.0, 1.0, 1.0)
    # A kd_weight given without a ce_weight is Hinton's convex mix for every method.
    mixed = build_loss("dkd", temperature=2.0, kd_weight=0.8, label_smoothing=0.1, nckd_weight=2.0)
    assert (mixed.temperature, mixed.kd_weight, mixed.ce_weight, mixed.nckd_weight) == (2.0, 0.8, pytest.approx(0.2), 2.0)
    assert mixed.label_smoothing == 0.1
    assert build_loss("dist", kd_weight=2.0, ce_weight=1.0).kd_weight == 2.0
    assert isinstance(build_loss("ce", label_smoothing=0.1), CELoss)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(UserError, match=r"did you mean dkd"):
        build_loss("dkdd")
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=math.nan)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KDLoss(kd_weight=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        KDLoss(kd_weight=-0.1)
    with pytest.raises(ValueError, match="label smoothing"):
        KDLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="targets"):
        KDLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([[0, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="same classes"):
        KDLoss()(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))


def test_dkd_warmup_scales_with_the_run_and_can_be_set():
    """DKD's 20-of-240-epoch warm-up is a fraction of the run: a 5-epoch run gets its full term at once."""
    from distill.config import TrainConfig
    from distill.engine import build_train_loss

    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    short = build_train_loss(TrainConfig(kd_loss="dkd", epochs=5), student, teacher)
    assert short.warmup_epochs == pytest.approx(5 / 12)
    short.set_epoch(0)
    assert short.kd_scale == 1.0
    assert build_train_loss(TrainConfig(kd_loss="dkd", epochs=600), student, teacher).warmup_epochs == 20.0
    assert build_train_loss(TrainConfig(kd_loss="dkd", epochs=5, kd_warmup_epochs=2), student, teacher).warmup_epochs == 2
    assert build_train_loss(TrainConfig(kd_loss="kd", epochs=5), student, teacher).warmup_epochs == 0
    assert build_train_loss(TrainConfig(kd_loss="kd", epochs=5, kd_warmup_epochs=3), student, teacher).warmup_epochs == 3
    with pytest.raises(Exception, match="kd-warmup-epochs"):
        TrainConfig(kd_warmup_epochs=-1)
