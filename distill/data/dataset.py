"""The dataset container: a labelled train/test image set held as uint8 CPU tensors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import DataError

__all__ = ["ImageDataset", "ProgressFn", "make_dataset"]

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with counts of images decoded so far and in all."""


# eq=False: the generated __eq__ would compare tensors elementwise and fail on truth-testing.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled train/test image set held as CPU tensors.

    Attributes:
        train_images: uint8, ``N x 3 x H x W``, contiguous, on the CPU.
        train_labels: int64, ``N``, class indices into ``classes``.
        test_images: uint8, ``M x 3 x H x W`` (the held-out split: test, val, or a validation carve-out).
        test_labels: int64, ``M``.
        classes: class names; label ``i`` is ``classes[i]``.
        mean: per-channel mean of ``train_images`` as a fraction of 255 (what ``Normalize`` expects).
        std: per-channel standard deviation of ``train_images``, fraction of 255.
        source: where the images came from, for logs and run records.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    def __post_init__(self) -> None:
        if len(self.classes) == 0:
            raise DataError(f"{self.source}: no classes")
        for split in ("train", "test"):
            images: torch.Tensor = getattr(self, f"{split}_images")
            labels: torch.Tensor = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
                raise DataError(
                    f"{self.source}: {split}_images must be uint8 N x 3 x H x W, "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            if images.device.type != "cpu" or not images.is_contiguous():
                raise DataError(f"{self.source}: {split}_images must be a contiguous CPU tensor")
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise DataError(
                    f"{self.source}: {split}_labels must be int64 of length {images.shape[0]}, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
                raise DataError(f"{self.source}: {split}_labels fall outside 0..{len(self.classes) - 1}")
        if self.train_images.shape[2:] != self.test_images.shape[2:]:
            raise DataError(
                f"{self.source}: train images are {tuple(self.train_images.shape[2:])} "
                f"but test images {tuple(self.test_images.shape[2:])}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """Image height in pixels (images are square when loaded by :func:`load_dataset`)."""
        return int(self.train_images.shape[2])

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> ImageDataset:
        """A random subset for tests and smoke runs, as close to class-balanced as the data allows.

        Args:
            train: number of training images to keep; ``None`` keeps them all.
            test: number of test images to keep; ``None`` keeps them all.
            seed: the same seed picks the same images.

        Classes are taken round-robin in a random order, so each class gets ``n // num_classes`` images
        (one more for some) unless it has fewer. Images keep their original relative order; ``mean`` and
        ``std`` are recomputed from the kept training images.
        """
        generator = torch.Generator().manual_seed(seed)
        train_index = _balanced_pick(self.train_labels, train, generator, "train")
        test_index = _balanced_pick(self.test_labels, test, generator, "test")
        return make_dataset(
            train_images=self.train_images[train_index].contiguous(),
            train_labels=self.train_labels[train_index].contiguous(),
            test_images=self.test_images[test_index].contiguous(),
            test_labels=self.test_labels[test_index].contiguous(),
            classes=self.classes,
            source=f"{self.source} [subset of {len(train_index)} train / {len(test_index)} test, seed {seed}]",
        )

    def split_validation(self, val_size: int, seed: int = 0) -> ImageDataset:
        """Hold out ``val_size`` random training images as a validation set.

        The returned dataset's ``test_*`` tensors are the validation images and ``train_*`` the remaining
        training images, so code that evaluates on "test" evaluates on validation without knowing it.
        The original test split is dropped. The split is deterministic for a given seed, and ``mean`` and
        ``std`` are recomputed from the remaining training images.
        """
        num_train = self.train_labels.numel()
        if not 0 < val_size < num_train:
            raise DataError(
                f"val_size must be between 1 and {num_train - 1} (the training set size - 1), got {val_size}"
            )
        order = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
        val_index = order[:val_size].sort().values
        train_index = order[val_size:].sort().values
        return make_dataset(
            train_images=self.train_images[train_index].contiguous(),
            train_labels=self.train_labels[train_index].contiguous(),
            test_images=self.train_images[val_index].contiguous(),
            test_labels=self.train_labels[val_index].contiguous(),
            classes=self.classes,
            source=f"{self.source} [validation: {val_size} images held out of train, seed {seed}; test split unused]",
        )


def _balanced_pick(labels: torch.Tensor, count: int | None, generator: torch.Generator, split: str) -> torch.Tensor:
    """Sorted indices of ``count`` labels taken round-robin over classes in random order."""
    total = labels.numel()
    if count is None:
        return torch.arange(total)
    if not 0 < count <= total:
        raise DataError(f"cannot take {count} {split} images: the {split} split has {total}; ask for 1..{total}")
    shuffled = torch.randperm(total, generator=generator)
    shuffled_labels = labels[shuffled]
    # Rank of each image among the shuffled images of its class (0 for the first cat, 1 for the second...);
    # taking the lowest ranks first is a round-robin over classes.
    by_class = torch.sort(shuffled_labels, stable=True).indices
    counts = torch.bincount(shuffled_labels)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_class)
    rank[by_class] = torch.arange(total) - class_start[shuffled_labels[by_class]]
    chosen = torch.sort(rank, stable=True).indices[:count]
    return shuffled[chosen].sort().values


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 images, as fractions of 255.

    A 256-bin histogram per channel gives exact moments without materialising a float copy of the
    dataset (which would be 600 MB for CIFAR-10).
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        histogram = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        count = histogram.sum().clamp_min(1.0)
        mean = float((histogram * values).sum() / count)
        variance = float((histogram * values.square()).sum() / count) - mean * mean
        means.append(mean)
        stds.append(math.sqrt(max(variance, 0.0)))
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def make_dataset(
    *,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    classes: Sequence[str],
    source: str,
) -> ImageDataset:
    """Build an :class:`ImageDataset`, computing mean and std from the training images."""
    if train_images.numel() == 0:
        raise DataError(f"{source}: no training images")
    mean, std = _channel_stats(train_images)
    return ImageDataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=tuple(classes),
        mean=mean,
        std=std,
        source=source,
    )
