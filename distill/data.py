"""Image datasets as uint8 tensors, and a loader that keeps them on the device and augments there.

Loading (:func:`load_dataset`) turns any of the supported sources into one :class:`ImageDataset` of
``N x 3 x H x W`` uint8 tensors:

- ``"cifar10"`` / ``"cifar100"``: torchvision's download folder under the cache directory;
- a ``cifar-10-batches-py`` or ``cifar-100-python`` folder (the official pickled batches);
- an ImageFolder tree (``train/<class>/*`` and ``test/<class>/*`` or ``val/<class>/*``), also one folder
  down, or packed as ``.tar.gz`` / ``.tgz`` / ``.tar`` (read in place, never extracted to disk).

Decoding 60,000 JPEGs takes seconds, so the decoded tensors are cached on disk keyed by the source's path,
size and modification time; the second load of CIFAR-10 is a single ``torch.load``.

Training reads batches from :class:`DeviceLoader`, which follows airbench (Keller Jordan): the whole uint8
dataset is moved to the device once, and crop, flip, cutout and normalisation run there per batch as a few
tensor operations, with no worker processes. Shuffle order and augmentation are a pure function of
``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from students.errors import UserError

__all__ = [
    "DataError",
    "ImageDataset",
    "load_dataset",
    "default_cache_dir",
    "DeviceLoader",
    "normalize",
    "IMAGE_EXTENSIONS",
]

_logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` with counts of images decoded so far and in all."""

# The extensions torchvision's ImageFolder accepts; other files in class folders are ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Bump whenever decoding or the cached layout changes, so stale cache files are never reused.
_CACHE_FORMAT = 1
_CACHE_ENV_VAR = "DISTILL_CACHE"

_EVAL_SPLITS = ("test", "val")  # first one present is the held-out split
_POOL_MIN_IMAGES = 2048  # below this, starting worker processes costs more than it saves
_CHUNK_IMAGES = 1000  # images per worker task: ~0.15 s of JPEG decoding, so progress moves smoothly
_MAX_LISTED = 5  # offending paths named in one error message

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CIFAR10_PICKLES = "cifar-10-batches-py"
_CIFAR100_PICKLES = "cifar-100-python"
_FORMATS_HINT = (
    "pass --data PATH to an ImageFolder tree (train/<class>/*.jpg and test/<class>/*.jpg), "
    "a cifar-10-batches-py folder, or a .tar.gz of an ImageFolder tree"
)


class DataError(UserError):
    """Bad or missing data; the message is one line saying what is wrong and how to fix it."""


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


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
        return _make_dataset(
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
        return _make_dataset(
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


def _make_dataset(
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


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The cache directory: ``$DISTILL_CACHE`` if set, else ``~/.cache/distill``."""
    configured = os.environ.get(_CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "distill"


def load_dataset(
    spec: str | Path,
    *,
    image_size: int = 32,
    cache_dir: str | Path | None = None,
    download: bool = False,
    progress: ProgressFn | None = None,
) -> ImageDataset:
    """Load a labelled train/test image set as uint8 tensors, decoding once and caching the result.

    Args:
        spec: ``"cifar10"`` or ``"cifar100"`` (torchvision's files under ``cache_dir``), or a path to a
            ``cifar-10-batches-py`` / ``cifar-100-python`` folder, an ImageFolder tree (``train/`` plus
            ``test/`` or ``val/``, one folder per class; the tree may also sit one folder down), or a
            ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of either.
        image_size: side in pixels; every image is resized (bilinear, antialiased) to a square this big.
        cache_dir: where decoded tensors and torchvision downloads live; default :func:`default_cache_dir`.
        download: allow torchvision to download ``cifar10`` / ``cifar100`` when they are not cached.
        progress: called as ``progress(done, total)`` while images are decoded (not on a cache hit).

    Raises:
        DataError: the source is missing, malformed, or holds unreadable images.
    """
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = str(spec).strip().lower().replace("-", "")
    if name in _TORCHVISION_SETS and not Path(spec).exists():
        return _load_torchvision(
            name, image_size=image_size, cache_root=cache_root, download=download, progress=progress
        )

    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data source {str(spec)!r} does not exist; use 'cifar10', 'cifar100', or {_FORMATS_HINT}")
    if path.is_file():
        if not path.name.lower().endswith(_TAR_SUFFIXES):
            raise DataError(f"{path} is a file but not a .tar.gz, .tgz or .tar archive; {_FORMATS_HINT}")
        kind, root = "archive", path
    else:
        kind, root = _detect_folder(path)
    return _load_cached(kind, root, image_size=image_size, cache_root=cache_root, progress=progress)


@dataclass(frozen=True)
class _TorchvisionSet:
    title: str  # as the dataset's authors write it
    folder: str  # what torchvision extracts under its root
    dataset_class: str  # name in torchvision.datasets


_TORCHVISION_SETS: dict[str, _TorchvisionSet] = {
    "cifar10": _TorchvisionSet("CIFAR-10", _CIFAR10_PICKLES, "CIFAR10"),
    "cifar100": _TorchvisionSet("CIFAR-100", _CIFAR100_PICKLES, "CIFAR100"),
}


def _load_torchvision(
    name: str, *, image_size: int, cache_root: Path, download: bool, progress: ProgressFn | None
) -> ImageDataset:
    """Load CIFAR-10/100 from torchvision's folder under the cache, downloading it only if allowed."""
    entry = _TORCHVISION_SETS[name]
    root = cache_root / "torchvision"
    folder = root / entry.folder
    kind = "cifar10-pickles" if name == "cifar10" else "cifar100-pickles"
    if _detect_pickles(folder) != kind:
        if not download:
            reason = "download=False"
        else:
            reason = _torchvision_download(entry, root)
        if _detect_pickles(folder) != kind:
            raise DataError(
                f"{entry.title} is not available offline at {folder} and could not be downloaded ({reason}); "
                f"{_FORMATS_HINT}"
            )
    return _load_cached(kind, folder, image_size=image_size, cache_root=cache_root, progress=progress)


def _torchvision_download(entry: _TorchvisionSet, root: Path) -> str:
    """Download and extract with torchvision; returns why it failed, or ``"ok"``."""
    import torchvision.datasets  # imported here: only this rarely used path needs it

    _logger.info("downloading %s to %s", entry.title, root)
    try:
        # One call fetches the whole archive (train and test). torchvision's own reader is not used
        # afterwards: it unpickles without restriction, ours only admits numpy arrays.
        getattr(torchvision.datasets, entry.dataset_class)(root=str(root), train=True, download=True)
    except Exception as error:  # offline machines fail with URLError, RuntimeError or OSError alike
        return f"{type(error).__name__}: {error}".replace("\n", " ")
    return "ok"


def _detect_pickles(folder: Path) -> str | None:
    """``"cifar10-pickles"``, ``"cifar100-pickles"`` or ``None`` for what ``folder`` holds."""
    if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
        return "cifar10-pickles"
    if all((folder / name).is_file() for name in ("train", "test", "meta")):
        return "cifar100-pickles"
    return None


def _detect_imagefolder(folder: Path) -> bool:
    return (folder / "train").is_dir() and any((folder / split).is_dir() for split in _EVAL_SPLITS)


def _detect_folder(path: Path) -> tuple[str, Path]:
    """What kind of dataset folder ``path`` is (looking one folder down too), and its root."""
    kind = _detect_pickles(path) or ("imagefolder" if _detect_imagefolder(path) else None)
    if kind:
        return kind, path
    found: list[tuple[str, Path]] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))):
        kind = _detect_pickles(child) or ("imagefolder" if _detect_imagefolder(child) else None)
        if kind:
            found.append((kind, child))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(str(root.name) for _, root in found)
        raise DataError(f"{path} holds several datasets ({names}); pass the one you mean, e.g. {found[0][1]}")
    if (path / "train").is_dir():
        raise DataError(
            f"{path} has train/ but no test/ or val/ folder; add a held-out split with one folder per class"
        )
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:_MAX_LISTED]) or "nothing"
    raise DataError(
        f"{path} is not a dataset folder (it holds {listing}); expected train/ and test/ (or val/) with one folder "
        f"per class, a {_CIFAR10_PICKLES} folder or a {_CIFAR100_PICKLES} folder, possibly one folder down"
    )


# ---- cache ---------------------------------------------------------------------------------------


def _fingerprint(root: Path) -> dict[str, object]:
    """What identifies the source's current contents, cheaply: path, sizes, file count, newest mtime."""
    resolved = root.resolve()
    if resolved.is_file():
        stat = resolved.stat()
        return {"path": str(resolved), "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "num_files": 1}
    size_bytes, num_files = 0, 0
    newest_mtime_ns = resolved.stat().st_mtime_ns
    pending = [str(resolved)]
    # scandir reuses the directory read for type checks, so 60,000 files take a fraction of a second.
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                stat = entry.stat(follow_symlinks=True)
                # Directory mtimes change when files are added, removed or renamed.
                newest_mtime_ns = max(newest_mtime_ns, stat.st_mtime_ns)
                if entry.is_dir(follow_symlinks=True):
                    pending.append(entry.path)
                else:
                    size_bytes += stat.st_size
                    num_files += 1
    return {"path": str(resolved), "size_bytes": size_bytes, "mtime_ns": newest_mtime_ns, "num_files": num_files}


def _cache_path(cache_root: Path, kind: str, root: Path, image_size: int) -> Path:
    key = {"format": _CACHE_FORMAT, "kind": kind, "image_size": image_size, **_fingerprint(root)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40]
    return cache_root / f"{readable}-{image_size}px-{digest}.pt"


def _read_cache(path: Path) -> ImageDataset | None:
    """The cached dataset, or ``None`` when absent or unusable (a corrupt file is logged and ignored)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != _CACHE_FORMAT:
            raise ValueError(f"cache format {payload.get('format')!r}, expected {_CACHE_FORMAT}")
        return ImageDataset(
            train_images=payload["train_images"],
            train_labels=payload["train_labels"],
            test_images=payload["test_images"],
            test_labels=payload["test_labels"],
            classes=tuple(str(name) for name in payload["classes"]),
            mean=tuple(float(v) for v in payload["mean"]),
            std=tuple(float(v) for v in payload["std"]),
            source=str(payload["source"]),
        )
    except Exception as error:  # any failure to read means the same thing: rebuild it
        _logger.warning("ignoring unreadable cache file %s (%s: %s); rebuilding it", path, type(error).__name__, error)
        return None


def _write_cache(path: Path, dataset: ImageDataset) -> None:
    """Save atomically: a crash mid-write leaves a stray temp file, never a truncated cache."""
    payload = {
        "format": _CACHE_FORMAT,
        "train_images": dataset.train_images,
        "train_labels": dataset.train_labels,
        "test_images": dataset.test_images,
        "test_labels": dataset.test_labels,
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "source": dataset.source,
    }
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache holds public data, shareable between users
        os.replace(tmp_name, path)
        _logger.info("cached decoded images at %s", path)
    except OSError as error:  # a read-only or full disk costs speed next time, not correctness now
        _logger.warning("could not write cache file %s (%s); the next load will decode again", path, error)
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _load_cached(
    kind: str, root: Path, *, image_size: int, cache_root: Path, progress: ProgressFn | None
) -> ImageDataset:
    """Return the cached tensors for ``root`` if its contents are unchanged, else build and cache them."""
    started = time.perf_counter()
    cache_file = _cache_path(cache_root, kind, root, image_size)
    dataset = _read_cache(cache_file)
    if dataset is not None:
        _logger.info("loaded %s from cache %s in %.2f s", dataset.source, cache_file, time.perf_counter() - started)
        return dataset
    builders: dict[str, Callable[..., ImageDataset]] = {
        "archive": _build_from_archive,
        "imagefolder": _build_from_imagefolder,
        "cifar10-pickles": partial(_build_from_pickle_folder, variant="cifar10"),
        "cifar100-pickles": partial(_build_from_pickle_folder, variant="cifar100"),
    }
    dataset = builders[kind](root.resolve(), image_size=image_size, progress=progress)
    _logger.info("built %s in %.1f s", dataset.source, time.perf_counter() - started)
    _write_cache(cache_file, dataset)
    return dataset


# ---- ImageFolder ---------------------------------------------------------------------------------

ImageRef = str | bytes  # a file path, or the encoded bytes of a member read from an archive
NamedImages = list[tuple[str, ImageRef]]  # (name shown in errors, image), sorted by name


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _scan_imagefolder(root: Path) -> dict[str, dict[str, NamedImages]]:
    """``{split: {class: [(path, path), ...] sorted}}`` for the train and held-out splits under ``root``."""
    tree: dict[str, dict[str, NamedImages]] = {}
    for split in ("train", *_EVAL_SPLITS):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        classes: dict[str, NamedImages] = {}
        with os.scandir(split_dir) as entries:
            for entry in entries:
                if entry.is_dir() and not entry.name.startswith("."):
                    with os.scandir(entry.path) as files:
                        paths = sorted(f.path for f in files if f.is_file() and _is_image_name(f.name))
                    classes[entry.name] = [(path, path) for path in paths]
        tree[split] = classes
    return tree


def _build_from_imagefolder(root: Path, *, image_size: int, progress: ProgressFn | None) -> ImageDataset:
    tree = _scan_imagefolder(root)
    return _build_imagefolder_dataset(
        tree, where=str(root), source=f"ImageFolder {root}", image_size=image_size, progress=progress
    )


def _build_from_archive(path: Path, *, image_size: int, progress: ProgressFn | None) -> ImageDataset:
    """Read an ImageFolder tree (or CIFAR pickles) straight out of a tar archive, in one streaming pass."""
    trees: dict[str, dict[str, dict[str, NamedImages]]] = {}  # top folder ("" for none) -> split -> class
    pickles: dict[str, dict[str, bytes]] = {}  # top folder -> file name -> contents
    try:
        # Streaming mode ("r|*") decompresses once, front to back, with no seeking.
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))  # "./train/x/" too
                if not parts or any(p.startswith((".", "__MACOSX")) for p in parts):
                    continue  # hidden files, macOS resource forks and ".." are never data
                if member.isdir() and len(parts) in (2, 3) and parts[-2] in ("train", *_EVAL_SPLITS):
                    top = parts[0] if len(parts) == 3 else ""
                    trees.setdefault(top, {}).setdefault(parts[-2], {}).setdefault(parts[-1], [])
                elif member.isfile() and len(parts) in (3, 4) and parts[-3] in ("train", *_EVAL_SPLITS):
                    if not _is_image_name(parts[-1]):
                        continue
                    top = parts[0] if len(parts) == 4 else ""
                    handle = archive.extractfile(member)
                    assert handle is not None  # regular files always have contents
                    classes = trees.setdefault(top, {}).setdefault(parts[-3], {})
                    classes.setdefault(parts[-2], []).append((member.name, handle.read()))
                elif member.isfile() and len(parts) in (1, 2) and _is_pickle_name(parts[-1]):
                    top = parts[0] if len(parts) == 2 else ""
                    handle = archive.extractfile(member)
                    assert handle is not None
                    pickles.setdefault(top, {})[parts[-1]] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(
            f"could not read archive {path} ({type(error).__name__}: {error}); is it a complete .tar.gz?"
        ) from error

    with_train = {top: tree for top, tree in trees.items() if "train" in tree}
    if len(with_train) > 1:
        tops = ", ".join(sorted(repr(top) for top in with_train))
        raise DataError(f"archive {path} holds several ImageFolder trees (top folders {tops}); pack only one")
    if with_train:
        top, raw_tree = next(iter(with_train.items()))
        # Members arrive in archive order; sort by name so labels and order never depend on how it was packed.
        tree = {split: {cls: sorted(images) for cls, images in classes.items()} for split, classes in raw_tree.items()}
        where = f"{path}:{top}/" if top else f"{path}:"
        return _build_imagefolder_dataset(
            tree, where=where, source=f"ImageFolder archive {path}", image_size=image_size, progress=progress
        )
    for top, blobs in pickles.items():
        variant = "cifar10" if "batches.meta" in blobs else "cifar100" if "meta" in blobs else None
        if variant is not None:
            return _build_from_pickles(
                blobs,
                variant=variant,
                where=f"{path}:{top}",
                source=f"{variant.upper()} pickles in {path}",
                image_size=image_size,
            )
    raise DataError(
        f"archive {path} holds no ImageFolder tree (train/<class>/*.jpg and test/<class>/*.jpg, optionally under one "
        f"top folder) and no CIFAR python batches; repack it in that layout"
    )


def _build_imagefolder_dataset(
    tree: Mapping[str, Mapping[str, NamedImages]],
    *,
    where: str,
    source: str,
    image_size: int,
    progress: ProgressFn | None,
) -> ImageDataset:
    """Check the tree's class folders, decode every image, and assemble the dataset."""
    eval_split = next((split for split in _EVAL_SPLITS if split in tree), None)
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
        listed = ", ".join(empty[:_MAX_LISTED]) + (
            f" and {len(empty) - _MAX_LISTED} more" if len(empty) > _MAX_LISTED else ""
        )
        raise DataError(
            f"{where} has class folders with no images ({listed}); add images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...) "
            f"or remove the folders"
        )

    named: NamedImages = []
    labels: dict[str, list[int]] = {}
    for split in ("train", eval_split):
        labels[split] = []
        for label, cls in enumerate(classes):
            named.extend(tree[split][cls])
            labels[split].extend([label] * len(tree[split][cls]))
    images = _decode_images(named, image_size=image_size, progress=progress)
    num_train = len(labels["train"])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
    return _make_dataset(
        train_images=tensor[:num_train].contiguous(),
        train_labels=torch.tensor(labels["train"], dtype=torch.int64),
        test_images=tensor[num_train:].contiguous(),
        test_labels=torch.tensor(labels[eval_split], dtype=torch.int64),
        classes=classes,
        source=f"{source} ({num_train} train / {len(labels[eval_split])} {eval_split}, {len(classes)} classes, "
        f"{image_size}x{image_size})",
    )


def _decode_one(ref: ImageRef, image_size: int) -> np.ndarray:
    """One image as ``image_size x image_size x 3`` uint8 RGB."""
    from PIL import Image  # imported here so worker processes pay for it only when decoding

    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as image:
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # palette transparency would otherwise warn on the RGB conversion
        rgb = image.convert("RGB")  # grey, CMYK, RGBA (alpha dropped), ... -> RGB
        if rgb.size != (image_size, image_size):
            # Pillow's bilinear filter widens its support when shrinking, so this is antialiased.
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _decode_chunk(refs: Sequence[ImageRef], image_size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode a chunk in a worker; failures come back as ``(index in chunk, reason)`` instead of raising."""
    out = np.zeros((len(refs), image_size, image_size, 3), dtype=np.uint8)
    failures: list[tuple[int, str]] = []
    for i, ref in enumerate(refs):
        try:
            out[i] = _decode_one(ref, image_size)
        except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
            failures.append((i, f"{type(error).__name__}: {error}".replace("\n", " ")))
    return out, failures


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # respects container and taskset limits, unlike os.cpu_count()
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _decode_images(named: NamedImages, *, image_size: int, progress: ProgressFn | None) -> np.ndarray:
    """Decode all images (in worker processes when there are many) to ``N x S x S x 3`` uint8."""
    refs = [ref for _, ref in named]
    total = len(refs)
    chunks = [refs[start : start + _CHUNK_IMAGES] for start in range(0, total, _CHUNK_IMAGES)]
    workers = min(_available_cpus(), len(chunks))
    out = np.empty((total, image_size, image_size, 3), dtype=np.uint8)
    failures: list[tuple[int, str]] = []
    decode = partial(_decode_chunk, image_size=image_size)
    started = time.perf_counter()

    def collect(results: Iterator[tuple[np.ndarray, list[tuple[int, str]]]]) -> None:
        done = 0
        for chunk_index, (images, chunk_failures) in enumerate(results):
            start = chunk_index * _CHUNK_IMAGES
            out[start : start + len(images)] = images
            failures.extend((start + i, reason) for i, reason in chunk_failures)
            done += len(images)
            if progress is not None:
                progress(done, total)

    if total < _POOL_MIN_IMAGES or workers == 1:
        collect(map(decode, chunks))
    else:
        # fork starts workers instantly; they only run Pillow and numpy, never torch or CUDA, so forking a
        # process that has torch threads or a CUDA context is safe here. spawn would re-import torch per worker.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        _logger.info("decoding %d images with %d processes", total, workers)
        with context.Pool(workers) as pool:
            collect(pool.imap(decode, chunks))
    _logger.info("decoded %d images in %.1f s", total, time.perf_counter() - started)

    if failures:
        listed = "; ".join(f"{named[i][0]} ({reason})" for i, reason in failures[:_MAX_LISTED])
        more = f" and {len(failures) - _MAX_LISTED} more" if len(failures) > _MAX_LISTED else ""
        raise DataError(
            f"{len(failures)} image file(s) could not be decoded: {listed}{more}; fix or delete them and load again"
        )
    return out


# ---- CIFAR python batches ------------------------------------------------------------------------


def _numpy_global(module: str, name: str) -> Callable[[], object]:
    """Resolve a numpy global lazily, preferring numpy 2's ``numpy._core`` over the deprecated ``numpy.core``."""

    def resolve() -> object:
        import importlib

        for candidate in (module.replace("numpy.core", "numpy._core"), module):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")

    return resolve


# Everything an ndarray pickle needs, and nothing else: the official CIFAR files are pickles, and
# pickle.load on an untrusted file runs arbitrary code.
_ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    (module, name): _numpy_global(module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
}
_ALLOWED_PICKLE_GLOBALS[("numpy", "ndarray")] = lambda: np.ndarray
_ALLOWED_PICKLE_GLOBALS[("numpy", "dtype")] = lambda: np.dtype


def _latin1_encode(text: str, encoding: str) -> bytes:
    """What Python 3 pickles bytes as below protocol 3 (``_codecs.encode(text, "latin1")``), and only that."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Python 3 writes bytes (and ndarray buffers) this way at protocol 2, e.g. batches re-pickled by a py3 script.
_ALLOWED_PICKLE_GLOBALS[("_codecs", "encode")] = lambda: _latin1_encode


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, dicts, lists, bytes and numbers, and refuses any other global."""

    def find_class(self, module: str, name: str) -> object:
        resolve = _ALLOWED_PICKLE_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        return resolve()


def _safe_unpickle(data: bytes, where: str) -> object:
    """Unpickle CIFAR batch bytes, allowing only numpy arrays; raises DataError otherwise."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # UnpicklingError, EOFError, ValueError...: all mean a bad file
        raise DataError(
            f"could not read CIFAR batch file {where} ({type(error).__name__}: {error}); "
            f"replace it with a fresh copy of the official files"
        ) from error


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


def _is_pickle_name(name: str) -> bool:
    """Whether ``name`` is one of the official CIFAR-10 / CIFAR-100 python batch files."""
    return (
        name in ("batches.meta", "test_batch", "train", "test", "meta")
        or re.fullmatch(r"data_batch_\d+", name) is not None
    )


def _build_from_pickle_folder(
    root: Path, *, variant: str, image_size: int, progress: ProgressFn | None
) -> ImageDataset:
    del progress  # unpickling takes about a second; there is nothing to report
    blobs = {path.name: path.read_bytes() for path in root.iterdir() if path.is_file() and _is_pickle_name(path.name)}
    title = "CIFAR-10" if variant == "cifar10" else "CIFAR-100"
    return _build_from_pickles(
        blobs, variant=variant, where=str(root), source=f"{title} python batches at {root}", image_size=image_size
    )


def _build_from_pickles(
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
        arrays = [_batch_arrays(_safe_unpickle(blobs[n], f"{where}/{n}"), label_key, f"{where}/{n}") for n in names]
        images = torch.from_numpy(np.concatenate([a for a, _ in arrays]))
        labels = torch.from_numpy(np.concatenate([b for _, b in arrays]))
        return _resize_uint8(images, image_size), labels

    meta = _safe_unpickle(blobs[meta_name], f"{where}/{meta_name}")
    if not isinstance(meta, dict) or names_key not in meta:
        raise DataError(f"{where}/{meta_name} has no {names_key!r}; replace it with the official file")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    train_images, train_labels = read_split(train_names)
    test_images, test_labels = read_split(test_names)
    return _make_dataset(
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


# --------------------------------------------------------------------------------------------------
# Device-resident loader
# --------------------------------------------------------------------------------------------------


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
