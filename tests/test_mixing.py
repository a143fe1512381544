"""Batch mixing: one ratio, one partner (the flipped batch) and one box for images and targets alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.mixing import BatchMixer, MixConfig
from students.errors import UserError

C = 10


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.arange(n) % C  # distinct partners: label i vs label n-1-i differ except the odd middle
    return images, labels


def _lam(targets: torch.Tensor, labels: torch.Tensor) -> float:
    """The mixing ratio, read back from the targets: the weight on the image's own label."""
    return targets[0, labels[0]].item()


def _mix(config: MixConfig, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = _batch(n)
    np.random.seed(seed)  # timm draws ratio and box from numpy's global generator; the engine seeds it per epoch
    mixed, targets = BatchMixer(config, C)(images, labels)
    return images, labels, mixed, targets


@pytest.mark.parametrize("n", [6, 5])
def test_mixup_is_a_convex_mix_with_the_flipped_batch(n: int) -> None:
    images, labels, mixed, targets = _mix(MixConfig(mixup_alpha=1.0), n)
    lam = _lam(targets, labels)
    assert 0.0 < lam < 1.0
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    one_hot = F.one_hot(labels, C).float()
    assert torch.allclose(targets, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-6)
    if n % 2:  # an odd batch's middle image is its own partner: unchanged image, unchanged label
        mid = n // 2
        assert torch.allclose(mixed[mid], images[mid], atol=1e-6) and targets[mid, labels[mid]] == pytest.approx(1.0)


@pytest.mark.parametrize("n", [6, 5])
def test_cutmix_pastes_one_box_from_the_flipped_batch(n: int) -> None:
    images, labels, mixed, targets = _mix(MixConfig(cutmix_alpha=1.0), n, seed=3)
    changed = (mixed != images).any(dim=1)  # B x H x W
    box = changed.any(dim=0)  # the same box for every image
    rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
    assert rows.numel() and cols.numel()
    y0, y1, x0, x1 = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
    assert box[y0:y1, x0:x1].all() and box.sum() == (y1 - y0) * (x1 - x0)  # a filled rectangle
    assert torch.equal(mixed[:, :, y0:y1, x0:x1], images.flip(0)[:, :, y0:y1, x0:x1])
    outside = torch.ones_like(box)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(mixed[:, :, outside], images[:, :, outside])
    area = (y1 - y0) * (x1 - x0) / (16 * 16)
    lam = _lam(targets, labels)
    assert 1 - lam == pytest.approx(area)  # target weights are the pasted area fractions
    one_hot = F.one_hot(labels, C).float()
    assert torch.allclose(targets, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-6)


def test_teacher_and_student_see_the_same_mixed_batch() -> None:
    # The engine mixes once and feeds the result to both networks (function matching): record what each sees.
    images, labels = _batch(6)
    seen: dict[str, torch.Tensor] = {}

    def network(name: str):
        def forward(x: torch.Tensor) -> torch.Tensor:
            seen[name] = x
            return x.flatten(1)[:, :C]

        return forward

    teacher, student = network("teacher"), network("student")
    np.random.seed(1)
    mixed, targets = BatchMixer(MixConfig(mixup_alpha=0.4, cutmix_alpha=1.0), C)(images, labels)
    teacher(mixed), student(mixed)
    assert seen["teacher"] is seen["student"]
    # And the targets describe that same mix: the partner of image i is image n-1-i in both.
    lam = _lam(targets, labels)
    assert targets[0, labels[-1]].item() == pytest.approx(1 - lam)


def test_same_seed_same_mix() -> None:
    config = MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0)
    first = _mix(config, 8, seed=7)
    again = _mix(config, 8, seed=7)
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])
    other = _mix(config, 8, seed=8)
    assert not torch.equal(first[2], other[2])


def test_disabled_is_identity() -> None:
    images, labels = _batch(4)
    mixer = BatchMixer(MixConfig(label_smoothing=0.1), C)
    assert not mixer.enabled
    out_images, out_labels = mixer(images, labels)
    assert out_images is images and out_labels is labels  # hard labels: the loss applies its label smoothing


def test_input_batch_is_not_modified() -> None:
    images, labels = _batch(4)
    before = images.clone()
    np.random.seed(0)
    BatchMixer(MixConfig(cutmix_alpha=1.0), C)(images, labels)
    assert torch.equal(images, before)


def test_label_smoothing_in_soft_targets() -> None:
    eps = 0.1
    # prob=0: enabled but never mixed, so the targets are the smoothed one-hot labels.
    images, labels, mixed, targets = _mix(MixConfig(mixup_alpha=1.0, prob=0.0, label_smoothing=eps), 4)
    assert torch.equal(mixed, images)
    expected = torch.full((4, C), eps / C)
    expected[torch.arange(4), labels] = 1 - eps + eps / C
    assert targets.dtype == torch.float32 and torch.allclose(targets, expected)
    # Mixed and smoothed: still a distribution per row, smoothing on both labels.
    _, labels, _, targets = _mix(MixConfig(mixup_alpha=1.0, label_smoothing=eps), 6)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))
    assert targets.min().item() == pytest.approx(eps / C)


def test_switch_prob_picks_the_method() -> None:
    images, labels, mixed, _ = _mix(MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0), 6)
    assert (mixed == images).any()  # CutMix leaves pixels outside the box untouched
    images, labels, mixed, _ = _mix(MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0), 6)
    assert not (mixed == images).any()  # MixUp blends every pixel


def test_config_is_validated() -> None:
    with pytest.raises(UserError, match="mixup_alpha"):
        MixConfig(mixup_alpha=-1.0)
    with pytest.raises(UserError, match="probability"):
        MixConfig(cutmix_alpha=1.0, prob=1.5)
    with pytest.raises(UserError, match="label smoothing"):
        MixConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="integer label"):
        BatchMixer(MixConfig(mixup_alpha=1.0), C)(torch.randn(2, 3, 4, 4), torch.zeros(2, C))
    with pytest.raises(dataclasses.FrozenInstanceError):
        MixConfig().mixup_alpha = 1.0  # type: ignore[misc]
