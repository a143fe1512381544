"""The official CIFAR-10 / CIFAR-100 python batches, read through the restricted unpickler."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ImageDataset, ProgressFn, make_dataset
from .errors import DataError
from .unpickle import safe_unpickle

__all__ = ["build_from_pickle_folder", "build_from_pickles", "is_pickle_name"]


def _batch_arrays(batch: object, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels (N int64) of one unpickled CIFAR batch dict."""
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{where} is not a CIFAR batch (expected a dict with b'data' and {label_key!r})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{where} holds {data.dtype} data of shape {data.shape} and {len(labels)} labels; "
            f"expected uint8 N x 3072 and N labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


def is_pickle_name(name: str) -> bool:
    """Whether ``name`` is one of the official CIFAR-10 / CIFAR-100 python batch files."""
    return (
        name in ("batches.meta", "test_batch", "train", "test", "meta")
        or re.fullmatch(r"data_batch_\d+", name) is not None
    )


def build_from_pickle_folder(
    root: Path, *, variant: str, image_size: int, progress: ProgressFn | None
) -> ImageDataset:
    """Read a ``cifar-10-batches-py`` (``variant="cifar10"``) or ``cifar-100-python`` folder."""
    del progress  # unpickling takes about a second; there is nothing to report
    blobs = {path.name: path.read_bytes() for path in root.iterdir() if path.is_file() and is_pickle_name(path.name)}
    title = "CIFAR-10" if variant == "cifar10" else "CIFAR-100"
    return build_from_pickles(
        blobs, variant=variant, where=str(root), source=f"{title} python batches at {root}", image_size=image_size
    )


def build_from_pickles(
    blobs: Mapping[str, bytes], *, variant: str, where: str, source: str, image_size: int
) -> ImageDataset:
    """Assemble a dataset from the official CIFAR-10 (``data_batch_*``) or CIFAR-100 (``train``) pickles."""
    if variant == "cifar10":
        batches = [n for n in blobs if re.fullmatch(r"data_batch_\d+", n)]
        train_names = sorted(batches, key=lambda n: int(n.rsplit("_", 1)[1]))  # data_batch_10 after _9
        test_names, meta_name = ["test_batch"], "batches.meta"
        label_key, names_key = b"labels", b"label_names"
    else:
        train_names, test_names, meta_name = ["train"], ["test"], "meta"
        label_key, names_key = b"fine_labels", b"fine_label_names"  # the 100 classes, not the 20 superclasses
    missing = [n for n in (*train_names, *test_names, meta_name) if n not in blobs]
    if not train_names:
        missing.append("data_batch_1")
    if missing:
        raise DataError(
            f"{where} lacks {', '.join(missing)}; it needs the complete set of official {variant} batch files"
        )

    def read_split(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [_batch_arrays(safe_unpickle(blobs[n], f"{where}/{n}"), label_key, f"{where}/{n}") for n in names]
        images = torch.from_numpy(np.concatenate([a for a, _ in arrays]))
        labels = torch.from_numpy(np.concatenate([b for _, b in arrays]))
        return _resize_uint8(images, image_size), labels

    meta = safe_unpickle(blobs[meta_name], f"{where}/{meta_name}")
    if not isinstance(meta, dict) or names_key not in meta:
        raise DataError(f"{where}/{meta_name} has no {names_key!r}; replace it with the official file")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    train_images, train_labels = read_split(train_names)
    test_images, test_labels = read_split(test_names)
    return make_dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        source=f"{source} ({len(train_labels)} train / {len(test_labels)} test, {len(classes)} classes, "
        f"{image_size}x{image_size})",
    )


def _resize_uint8(images: torch.Tensor, image_size: int, chunk: int = 2048) -> torch.Tensor:
    """Resize uint8 N x C x H x W to ``image_size`` (bilinear, antialiased) in chunks to bound memory."""
    if images.shape[-2:] == (image_size, image_size):
        return images.contiguous()
    resized = [
        F.interpolate(part.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(resized).contiguous()
