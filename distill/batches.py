"""The data of a run as loaders of device batches: the project's device-resident loader for an
:class:`~distill.data.ImageDataset`, or any ``(images, labels)`` iterables (e.g. torch ``DataLoader``s)
moved to the device batch by batch, with what the summary and checkpoints record about them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from students.common.errors import UserError

from . import dist
from .config import TrainConfig
from .data import DeviceLoader, ImageDataset
from .device import memory_format_for

__all__ = ["EVAL_BATCH", "Loaders", "OnDevice", "Batches", "dataset_batches", "loader_batches", "eval_label",
           "check_classes"]

@dataclass
class Loaders:
    """Any iterables of ``(images, labels)`` batches (e.g. torch ``DataLoader``s), already normalised.

    Batches are moved to the run's device as they are drawn; augmentation is the loader's own (the
    config's crop, flip and cutout apply only to an ImageDataset, whose device loader does them).
    """

    train: Iterable[tuple[torch.Tensor, torch.Tensor]]
    test: Iterable[tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    classes: list[str] | None = None
    source: str = "python iterables"


class OnDevice:
    """A loader whose batches are moved to ``device`` (channels-last when asked) as they are drawn."""

    def __init__(self, loader: Iterable, device: torch.device, channels_last: bool) -> None:
        try:
            len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"train and test must have a length (a DataLoader or a list of batches), got a "
                            f"{type(loader).__name__}") from None
        self.loader, self.device, self.channels_last = loader, device, channels_last
        self._stream: Any = None  # CUDA: the side stream batches are copied on

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One batch ahead: while the consumer works on batch ``i``, batch ``i + 1`` is drawn and, on CUDA,
        pinned and copied on a side stream (timm's ``PrefetchLoader`` discipline; its class is not reused
        because it also normalises, which these batches already are, and does not pin). On other devices
        the same order runs with plain copies."""
        fmt = memory_format_for(self.channels_last)
        cuda = self.device.type == "cuda"
        if cuda and self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)  # one per loader: the allocator pools per stream
        consumer = torch.cuda.current_stream(self.device) if cuda else None

        def send(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            side = contextlib.nullcontext()
            if cuda:
                # Blocks the consumer freed may be handed to the copies below: let its queued work finish first.
                self._stream.wait_stream(consumer)
                images, labels = _pinned(images), _pinned(labels)  # pageable memory would copy synchronously
                side = torch.cuda.stream(self._stream)
            with side:
                return (images.to(self.device, non_blocking=True).float().contiguous(memory_format=fmt),
                        labels.to(self.device, non_blocking=True))

        ahead = None
        for images, labels in self.loader:
            sent = send(images, labels)
            if ahead is not None:
                yield ahead
            if cuda:
                consumer.wait_stream(self._stream)  # batch i + 1 is ready before the consumer touches it
            ahead = sent
        if ahead is not None:
            yield ahead

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a DistributedSampler reshuffles per epoch
            sampler.set_epoch(epoch)

    def count_images(self) -> int:
        dataset = getattr(self.loader, "dataset", None)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            return sum(int(labels.shape[0]) for _, labels in self.loader)


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pin_memory() if tensor.device.type == "cpu" and not tensor.is_pinned() else tensor


@dataclass
class Batches:
    """The data on the run's device, with what the summary and checkpoints record about it."""

    train: Any  # DeviceLoader or OnDevice: len(), iteration, set_epoch()
    test: Any
    num_classes: int
    source: str
    train_images: int
    test_images: int
    eval_set: str  # what the reported top-1 is measured on
    meta: dict[str, Any]  # normalisation and class names, recorded in checkpoints (a teacher re-normalises by it)
    input_shape: tuple[int, int, int] = (3, 32, 32)  # one image: channels, height, width


def dataset_batches(data: ImageDataset, cfg: TrainConfig, device: torch.device, world: dist.DistInfo, *,
                    channels_last: bool) -> Batches:
    """The device-resident loaders of an ImageDataset (airbench style: augmentation runs on the device)."""
    common = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last, rank=world.rank,
                  world_size=world.world_size)
    train = DeviceLoader(data.train_images, data.train_labels, batch_size=cfg.batch_size, train=True,
                         crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout, seed=cfg.stream_seed,
                         **common)
    if len(train) == 0:
        where = f" x {world.world_size} ranks" if world.distributed else ""
        raise UserError(
            f"--batch-size {cfg.batch_size}{where} is larger than the {data.train_labels.numel()} training images, "
            "so an epoch has no full batch; lower --batch-size or use fewer processes"
        )
    test = DeviceLoader(data.test_images, data.test_labels, batch_size=max(cfg.batch_size, EVAL_BATCH), train=False,
                        **common)
    return Batches(train, test, data.num_classes, data.source, int(data.train_labels.numel()),
                   int(data.test_labels.numel()), eval_label(cfg, data),
                   {"data_mean": list(data.mean), "data_std": list(data.std), "classes": list(data.classes)},
                   tuple(data.train_images.shape[1:]))


EVAL_BATCH = 500  # images per evaluation batch at least: no gradients, so larger batches are cheap


def loader_batches(data: Loaders, cfg: TrainConfig, device: torch.device, *, channels_last: bool) -> Batches:
    """Any sized iterables of batches, moved to ``device`` as they are drawn."""
    train = OnDevice(data.train, device, channels_last)
    test = OnDevice(data.test, device, channels_last)
    if len(train) == 0:
        raise UserError("train yields no batches")
    n_test = test.count_images()
    which = "validation set" if cfg.val_split else "test set"
    meta = {"classes": list(data.classes)} if data.classes else {}
    images, _ = next(iter(data.train))  # checked before (distill.engine): a float N x C x H x W tensor
    return Batches(train, test, data.num_classes, data.source, train.count_images(), n_test,
                   f"{which} ({n_test:,} images)", meta, tuple(images.shape[1:]))


def eval_label(cfg: TrainConfig, data: ImageDataset) -> str:
    """What the reported top-1 is measured on, e.g. ``test set (10,000 images)``."""
    which = "validation split" if cfg.val_split else "test set"
    return f"{which} ({data.test_labels.numel():,} images)"


def check_classes(ckpt: dict[str, Any], classes: Sequence[str], what: str) -> None:
    """Refuse a checkpoint trained on other class names, or on the same ones in another order: its label ``i``
    would mean another class here and every figure would be silently shifted. Checkpoints that record no
    class names (older ones, custom modules) are checked by their class count only, elsewhere."""
    recorded = ckpt.get("meta", {}).get("classes")
    if not isinstance(recorded, list) or list(recorded) == list(classes):
        return
    if sorted(recorded) == sorted(classes):
        first = next(i for i, (a, b) in enumerate(zip(recorded, classes)) if a != b)
        raise UserError(f"{what} was trained with the classes in another order (its label {first} is "
                        f"{recorded[first]!r}, here {classes[first]!r}); its predictions would be shifted: use data "
                        "whose class folders sort as they did")
    missing = [c for c in recorded if c not in classes][:3]
    raise UserError(f"{what} was trained on other classes ({len(recorded)}: {', '.join(map(repr, recorded[:4]))}"
                    f"{', ...' if len(recorded) > 4 else ''}) than the data's ({len(classes)}"
                    f"{'; it lacks ' + ', '.join(map(repr, missing)) if missing else ''}); use the data it was "
                    "trained on")
