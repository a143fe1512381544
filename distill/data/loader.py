"""The device-resident loader: batches gathered, augmented and normalised on the device, airbench style.

The whole uint8 dataset moves to the device once, and crop, flip, cutout and normalisation run there per
batch as a few tensor operations, with no worker processes (Keller Jordan's airbench). Shuffle order and
augmentation are a pure function of ``(seed, epoch)``, so a resumed run sees exactly the batches it would
have seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import DataError

__all__ = ["DeviceLoader", "normalize"]


def _channel_affine(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` and ``shift`` (1 x C x 1 x 1) such that ``uint8 * scale + shift == (uint8 / 255 - mean) / std``."""
    mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor([float(s) for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if bool((std_t <= 0).any()):
        raise DataError(f"std must be positive per channel, got {tuple(std)}")
    return 1.0 / (255.0 * std_t), -mean_t / std_t


def normalize(images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images / 255 - mean) / std`` per channel, as float32 on the images' device.

    Args:
        images_uint8: uint8 ``... x C x H x W``.
        mean: per-channel mean as a fraction of 255 (as in :attr:`ImageDataset.mean`).
        std: per-channel standard deviation, fraction of 255.
    """
    if images_uint8.dtype != torch.uint8:
        raise DataError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    scale, shift = _channel_affine(mean, std, images_uint8.device)
    if images_uint8.dim() == 3:
        scale, shift = scale[0], shift[0]
    # In place on the fresh float copy: a second temporary costs more than the arithmetic on CPU.
    return images_uint8.to(torch.float32).mul_(scale).add_(shift)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that is a stable function of (seed, epoch), unlike Python's salted hash()."""
    digest = hashlib.sha256(f"distill.DeviceLoader/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True, eq=False)
class _EpochPlan:
    """One rank's share of an epoch: image indices and per-image augmentation draws, on the device."""

    indices: torch.Tensor  # int64, images in the order they are served
    crop_y: torch.Tensor  # int64, top of the crop window in the padded image, 0..2*padding
    crop_x: torch.Tensor  # int64, left of the crop window
    flip: torch.Tensor  # bool, mirror left-right
    cutout_y: torch.Tensor  # int64, top of the cutout square
    cutout_x: torch.Tensor  # int64, left of the cutout square


class DeviceLoader:
    """Batches of normalised float images from a uint8 dataset held on the device, airbench style.

    The uint8 images move to ``device`` once. Each training batch is gathered, then augmented there with
    vectorised tensor operations: random crop after zero padding (torchvision ``RandomCrop(size, padding)``),
    horizontal flip with probability 1/2, optional cutout (a square set to 0 after normalisation, i.e. to
    the dataset mean), then normalised. Evaluation batches come in dataset order, unaugmented.

    Shuffle order and every augmentation draw are a pure function of ``(seed, epoch)``: random draws come
    from a CPU generator seeded with both, so CPU and CUDA runs see identical batches, and a run resumed at
    epoch ``e`` (``set_epoch(e)``) repeats the original exactly. Each ``iter()`` uses the current epoch and
    then advances it by one, so forgetting ``set_epoch`` still reshuffles.

    With ``world_size > 1`` (DDP), every rank draws the same permutation and takes positions
    ``rank, rank + world_size, ...`` of it; training drops the remainder so that ranks get equal shares.
    Augmentation draws belong to positions in the permutation, so an image gets the same crop whichever
    rank serves it.

    Args:
        images: uint8 ``N x C x H x W``.
        labels: int64 ``N``.
        batch_size: images per batch, per rank.
        mean: per-channel mean, fraction of 255.
        std: per-channel std, fraction of 255.
        train: shuffle and augment (True), or serve in order without augmentation (False).
        device: where the dataset lives and batches are made.
        crop_padding: zero padding in pixels on each side before the random crop; 0 turns cropping off.
        flip: random horizontal flips.
        cutout: side in pixels of the square zeroed in each image; 0 turns cutout off.
        drop_last: drop the final partial batch; defaults to ``train``.
        seed: base seed of shuffling and augmentation.
        channels_last: return batches in channels-last memory format.
        dtype: floating dtype of the returned images.
        rank: this process's rank in ``0..world_size-1``.
        world_size: number of processes sharing each epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        device: torch.device | str = "cpu",
        crop_padding: int = 4,
        flip: bool = True,
        cutout: int = 0,
        drop_last: bool | None = None,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"DeviceLoader needs uint8 N x C x H x W images, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"DeviceLoader needs one label per image: {images.shape[0]} images, labels {tuple(labels.shape)}"
            )
        if images.shape[0] == 0:
            raise DataError("DeviceLoader got an empty dataset")
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in 0..world_size-1, got rank {rank} with world_size {world_size}")
        height, width = images.shape[-2:]
        if crop_padding < 0 or not 0 <= cutout <= min(height, width):
            raise DataError(
                f"crop_padding must be >= 0 and cutout in 0..{min(height, width)} px, got {crop_padding}, {cutout}"
            )
        if not dtype.is_floating_point:
            raise DataError(f"dtype must be a floating type, got {dtype}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise DataError(
                f"mean and std need {images.shape[1]} values (one per channel), got {len(mean)} and {len(std)}"
            )

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.crop_padding = crop_padding
        self.flip = flip
        self.cutout = cutout
        self.drop_last = train if drop_last is None else drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.dtype = dtype
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, dtype=torch.int64)
        self._scale, self._shift = _channel_affine(mean, std, self.device)

    @property
    def num_samples(self) -> int:
        """Images this rank yields per epoch (after sharding and ``drop_last``)."""
        shard = self._shard_size()
        return (shard // self.batch_size) * self.batch_size if self.drop_last else shard

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        shard = self._shard_size()
        return shard // self.batch_size if self.drop_last else math.ceil(shard / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` on the next ``iter()``; its order and augmentation depend only on (seed, epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)``: normalised ``dtype`` images and int64 labels, both on the device."""
        epoch = self.epoch
        self.epoch += 1
        return self._batches(self._plan(epoch))

    def _shard_size(self) -> int:
        total = self.images.shape[0]
        if self.train:
            return total // self.world_size  # equal shares, so DDP ranks step in lockstep
        return len(range(self.rank, total, self.world_size))

    def _plan(self, epoch: int) -> _EpochPlan:
        total = self.images.shape[0]
        height, width = self.images.shape[-2:]
        if not self.train:
            indices = torch.arange(self.rank, total, self.world_size, device=self.device)
            unused = torch.zeros(0, dtype=torch.int64, device=self.device)  # no augmentation when evaluating
            return _EpochPlan(indices, unused, unused, unused.bool(), unused, unused)
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(total, generator=generator)
        # Draw every augmentation for every position even when switched off, so turning one on or off never
        # changes the others' draws.
        span = 2 * self.crop_padding + 1
        crop_y = torch.randint(0, span, (total,), generator=generator)
        crop_x = torch.randint(0, span, (total,), generator=generator)
        flip = torch.rand(total, generator=generator) < 0.5
        cutout_y = torch.randint(0, height - self.cutout + 1, (total,), generator=generator)
        cutout_x = torch.randint(0, width - self.cutout + 1, (total,), generator=generator)
        positions = torch.arange(self.rank, (total // self.world_size) * self.world_size, self.world_size)
        return _EpochPlan(*(t[positions].to(self.device) for t in (order, crop_y, crop_x, flip, cutout_y, cutout_x)))

    def _batches(self, plan: _EpochPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count = len(plan.indices)
        stop = (count // self.batch_size) * self.batch_size if self.drop_last else count
        contiguous = not self.train and self.world_size == 1  # plain slices, no gather
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, stop)
            if contiguous:
                images, labels = self.images[start:end], self.labels[start:end]
            else:
                index = plan.indices[start:end]
                images, labels = self.images[index], self.labels[index]
            if self.train:
                batch = slice(start, end)
                if self.crop_padding:
                    images = _crop(images, plan.crop_y[batch], plan.crop_x[batch], self.crop_padding)
                if self.flip:
                    images = torch.where(plan.flip[batch].view(-1, 1, 1, 1), images.flip(-1), images)
            out = images.to(torch.float32).mul_(self._scale).add_(self._shift)
            if self.train and self.cutout:
                out = _cutout(out, plan.cutout_y[start:end], plan.cutout_x[start:end], self.cutout)
            if self.dtype != torch.float32:
                out = out.to(self.dtype)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
            yield out, labels


def _crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-image crop of the zero-padded batch: ``out[i] = pad(images[i])[:, top[i]:top[i]+H, left[i]:left[i]+W]``.

    ``unfold`` views every window of the padded batch at no cost; one advanced index then picks each
    image's window, so there is no Python loop over images and no host-device sync.
    """
    height, width = images.shape[-2:]
    padded = F.pad(images, (padding, padding, padding, padding))  # zeros, like torchvision's RandomCrop
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # B x C x (2p+1) x (2p+1) x H x W
    batch = torch.arange(images.shape[0], device=images.device)
    return windows[batch, :, top, left]  # advanced indices around a slice -> B x C x H x W


def _cutout(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size x size`` square at (top, left) in each image (DeVries & Taylor 2017, arXiv:1708.04552)."""
    rows = torch.arange(images.shape[-2], device=images.device).view(1, -1, 1)
    cols = torch.arange(images.shape[-1], device=images.device).view(1, 1, -1)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)  # B x H x W
    return images.masked_fill_(inside.unsqueeze(1), 0.0)
