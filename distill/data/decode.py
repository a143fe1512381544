"""ImageFolder trees: find the images, decode them (in worker processes when there are many), build the dataset.

The same code serves folders on disk and trees read out of an archive: a tree maps each split and class to
``(name, image)`` pairs, where the image is a file path or the encoded bytes of an archive member.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, ProgressFn, make_dataset
from .errors import DataError

__all__ = [
    "EVAL_SPLITS",
    "IMAGE_EXTENSIONS",
    "MAX_LISTED",
    "ImageRef",
    "NamedImages",
    "ImageTree",
    "build_from_imagefolder",
    "build_imagefolder_dataset",
    "decode_images",
    "is_image_name",
]

_logger = logging.getLogger(__name__)

# The extensions torchvision's ImageFolder accepts; other files in class folders are ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

EVAL_SPLITS = ("test", "val")  # first one present is the held-out split
MAX_LISTED = 5  # offending paths named in one error message
_POOL_MIN_IMAGES = 2048  # below this, starting worker processes costs more than it saves
_CHUNK_IMAGES = 1000  # images per worker task: ~0.15 s of JPEG decoding, so progress moves smoothly

ImageRef = str | bytes  # a file path, or the encoded bytes of a member read from an archive
NamedImages = list[tuple[str, ImageRef]]  # (name shown in errors, image), sorted by name
ImageTree = Mapping[str, Mapping[str, NamedImages]]  # split -> class -> images

# A decoded chunk, its (index in chunk, reason) failures, and how many images of each (width, height) it resized.
ChunkResult = tuple[np.ndarray, list[tuple[int, str]], dict[tuple[int, int], int]]


def is_image_name(name: str) -> bool:
    """Whether a file name is an image ImageFolder would load (by extension; hidden files never are)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _scan_imagefolder(root: Path) -> dict[str, dict[str, NamedImages]]:
    """``{split: {class: [(path, path), ...] sorted}}`` for the train and held-out splits under ``root``."""
    tree: dict[str, dict[str, NamedImages]] = {}
    for split in ("train", *EVAL_SPLITS):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        classes: dict[str, NamedImages] = {}
        with os.scandir(split_dir) as entries:
            for entry in entries:
                if entry.is_dir() and not entry.name.startswith("."):
                    with os.scandir(entry.path) as files:
                        paths = sorted(f.path for f in files if f.is_file() and is_image_name(f.name))
                    classes[entry.name] = [(path, path) for path in paths]
        tree[split] = classes
    return tree


def build_from_imagefolder(root: Path, *, image_size: int, progress: ProgressFn | None) -> ImageDataset:
    """Decode the ImageFolder tree at ``root`` (``train/`` plus ``test/`` or ``val/``, one folder per class)."""
    tree = _scan_imagefolder(root)
    return build_imagefolder_dataset(
        tree, where=str(root), source=f"ImageFolder {root}", image_size=image_size, progress=progress
    )


def build_imagefolder_dataset(
    tree: ImageTree,
    *,
    where: str,
    source: str,
    image_size: int,
    progress: ProgressFn | None,
    container: str | None = None,
) -> ImageDataset:
    """Check the tree's class folders, decode every image, and assemble the dataset.

    ``container`` names the archive the images were read from, for error messages; ``None`` for a folder.
    """
    classes, eval_split = _check_tree(tree, where)
    named: NamedImages = []
    labels: dict[str, list[int]] = {}
    for split in ("train", eval_split):
        labels[split] = []
        for label, cls in enumerate(classes):
            named.extend(tree[split][cls])
            labels[split].extend([label] * len(tree[split][cls]))
    check_memory(len(named), image_size, where)
    images = decode_images(named, image_size=image_size, progress=progress, container=container)
    num_train = len(labels["train"])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
    return make_dataset(
        train_images=tensor[:num_train].contiguous(),
        train_labels=torch.tensor(labels["train"], dtype=torch.int64),
        test_images=tensor[num_train:].contiguous(),
        test_labels=torch.tensor(labels[eval_split], dtype=torch.int64),
        classes=classes,
        source=f"{source} ({num_train} train / {len(labels[eval_split])} {eval_split}, {len(classes)} classes, "
        f"{image_size}x{image_size})",
    )


def _check_tree(tree: ImageTree, where: str) -> tuple[list[str], str]:
    """The sorted class names and the held-out split, after checking both splits have the same non-empty classes."""
    eval_split = next((split for split in EVAL_SPLITS if split in tree), None)
    if "train" not in tree or eval_split is None:
        raise DataError(f"{where} needs train/ and test/ (or val/) folders with one folder per class")
    if eval_split == "test" and "val" in tree:
        _logger.info("%s has both test/ and val/; using test/ as the held-out split", where)
    classes = sorted(tree["train"])
    if not classes:
        raise DataError(f"{where}train/ has no class folders; put each class's images in train/<class>/")
    eval_classes = sorted(tree[eval_split])
    if eval_classes != classes:
        only_train = sorted(set(classes) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(classes))
        raise DataError(
            f"{where} train/ and {eval_split}/ must have the same class folders; only in train/: "
            f"{only_train or 'none'}, only in {eval_split}/: {only_eval or 'none'}"
        )
    empty = [f"{split}/{cls}" for split in ("train", eval_split) for cls in classes if not tree[split][cls]]
    if empty:
        listed = ", ".join(empty[:MAX_LISTED]) + (
            f" and {len(empty) - MAX_LISTED} more" if len(empty) > MAX_LISTED else ""
        )
        raise DataError(
            f"{where} has class folders with no images ({listed}); add images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...) "
            f"or remove the folders"
        )
    return classes, eval_split


# Peak copies of the decoded pixels while a dataset is built and cached: the decoded array, the per-split
# tensors, and the cache file's serialised bytes.
DECODE_COPIES = 3


def available_memory_bytes() -> int | None:
    """Memory the system can give without swapping (Linux ``MemAvailable``), else None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(count: int, image_size: int, where: str) -> None:
    """Refuse, before decoding starts, a dataset whose decoded pixels will not fit in memory, with the figures
    and the way forward; a dataset that fits (or a system that does not say) passes."""
    needed = DECODE_COPIES * count * image_size * image_size * 3
    available = available_memory_bytes()
    if available is None or needed <= available:
        return
    fits = int((available / (DECODE_COPIES * count * 3)) ** 0.5)
    raise DataError(f"{where}: decoding its {count:,} images at {image_size}x{image_size} px needs about "
                    f"{_size(needed)} of memory, but {_size(available)} are available; lower --image-size (at most "
                    f"about {fits} px fits), or use a folder with fewer images")


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _decode_one(ref: ImageRef, image_size: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """One image as ``image_size x image_size x 3`` uint8 RGB, and its original (width, height) if resized."""
    from PIL import Image  # imported here so worker processes pay for it only when decoding

    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as image:
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # palette transparency would otherwise warn on the RGB conversion
        if image.mode.startswith("I") or image.mode == "F":
            image = Image.fromarray(_to_8bit(np.asarray(image), image.mode))
        rgb = image.convert("RGB")  # grey, CMYK, RGBA (alpha dropped), ... -> RGB
        original = None if rgb.size == (image_size, image_size) else rgb.size
        if original is not None:
            # Pillow's bilinear filter widens its support when shrinking, so this is antialiased.
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8), original


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image as uint8, scaled by its type's range.

    Pillow's own conversion to RGB clips these at 255, which turns a 16-bit image nearly white. 16-bit
    images are scaled by 255/65535; 32-bit integers that fit 0..255 or 0..65535 likewise; float images in
    0..1 by 255, in 0..255 as they are. Anything else has no known range and is refused (the caller names the file).
    """
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and 255 < high <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif mode == "F" and low >= 0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        raise ValueError(f"a {mode} image with values {low:g}..{high:g} has no known range; save it as 8 or 16 bits "
                         "per channel")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode_chunk(refs: Sequence[ImageRef], image_size: int) -> ChunkResult:
    """Decode a chunk in a worker; failures come back as ``(index in chunk, reason)`` instead of raising."""
    out = np.zeros((len(refs), image_size, image_size, 3), dtype=np.uint8)
    failures: list[tuple[int, str]] = []
    resized: dict[tuple[int, int], int] = {}  # original (width, height) -> images
    for i, ref in enumerate(refs):
        try:
            out[i], original = _decode_one(ref, image_size)
        except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
            failures.append((i, f"{type(error).__name__}: {error}".replace("\n", " ")))
            continue
        if original is not None:
            resized[original] = resized.get(original, 0) + 1
    return out, failures, resized


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # respects container and taskset limits, unlike os.cpu_count()
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def decode_images(
    named: NamedImages, *, image_size: int, progress: ProgressFn | None, container: str | None = None
) -> np.ndarray:
    """Decode all images (in worker processes when there are many) to ``N x S x S x 3`` uint8.

    Every image must decode: a file Pillow cannot read is never skipped, it fails the whole load with a
    :class:`DataError` naming it (``container`` names the archive it came from, if any).
    """
    refs = [ref for _, ref in named]
    total = len(refs)
    out = np.empty((total, image_size, image_size, 3), dtype=np.uint8)
    failures: list[tuple[int, str]] = []
    started = time.perf_counter()
    done = 0
    resized: dict[tuple[int, int], int] = {}
    for start, (images, chunk_failures, chunk_resized) in _decoded_chunks(refs, image_size):
        out[start : start + len(images)] = images
        failures.extend((start + i, reason) for i, reason in chunk_failures)
        for size, count in chunk_resized.items():
            resized[size] = resized.get(size, 0) + count
        done += len(images)
        if progress is not None:
            progress(done, total)
    _logger.info("decoded %d images in %.1f s", total, time.perf_counter() - started)
    if resized:
        _log_resized(resized, total, image_size)
    if failures:
        _raise_decode_failures(named, failures, container)
    return out


def _log_resized(resized: dict[tuple[int, int], int], total: int, image_size: int) -> None:
    """One line saying how many images were resized from which sizes: a shrink is never silent."""
    count = sum(resized.values())
    common = sorted(resized.items(), key=lambda kv: -kv[1])[:3]
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in common) + (" ..." if len(resized) > 3 else "")
    larger = any(w > image_size or h > image_size for w, h in resized)
    hint = "; pass --image-size to keep more pixels" if larger else ""
    _logger.warning("resized %d of %d images to %dx%d px (from %s)%s", count, total, image_size, image_size, sizes,
                    hint)


def _decoded_chunks(refs: Sequence[ImageRef], image_size: int) -> Iterator[tuple[int, ChunkResult]]:
    """``(index of the chunk's first image, result)`` for each chunk of images, in order."""
    chunks = [refs[start : start + _CHUNK_IMAGES] for start in range(0, len(refs), _CHUNK_IMAGES)]
    starts = range(0, len(refs), _CHUNK_IMAGES)
    workers = min(_available_cpus(), len(chunks))
    decode = partial(_decode_chunk, image_size=image_size)
    if len(refs) < _POOL_MIN_IMAGES or workers == 1:
        yield from zip(starts, map(decode, chunks))
        return
    # fork starts workers instantly; they only run Pillow and numpy, never torch or CUDA, so forking a
    # process that has torch threads or a CUDA context is safe here. spawn would re-import torch per worker.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    _logger.info("decoding %d images with %d processes", len(refs), workers)
    with context.Pool(workers) as pool:
        yield from zip(starts, pool.imap(decode, chunks))


def _raise_decode_failures(named: NamedImages, failures: list[tuple[int, str]], container: str | None) -> None:
    listed = "; ".join(f"{named[i][0]} ({reason})" for i, reason in failures[:MAX_LISTED])
    more = f" and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
    if container is None:
        raise DataError(
            f"{len(failures)} image file(s) could not be decoded: {listed}{more}; fix or delete them and load again"
        )
    raise DataError(
        f"{len(failures)} image file(s) could not be decoded in archive {container}: {listed}{more}; "
        f"repack the archive from good images, or download or copy it again if it came intact from elsewhere"
    )
