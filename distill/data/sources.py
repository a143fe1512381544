"""Where data comes from: the ``spec`` a user gives, the dataset it names, and downloading CIFAR.

:func:`load_dataset` turns a name (``"cifar10"``, ``"cifar100"``), a folder (ImageFolder tree or official
CIFAR batches, possibly one folder down) or a tar archive into one kind of source, then asks the cache for
it and decodes it only on a miss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..config import data_name
from .archive import build_from_archive
from .cache import default_cache_dir, load_cached
from .cifar import build_from_pickle_folder
from .dataset import ImageDataset, ProgressFn
from .decode import EVAL_SPLITS, MAX_LISTED, build_from_imagefolder
from .errors import DataError

__all__ = ["load_dataset"]

_logger = logging.getLogger(__name__)

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CIFAR10_PICKLES = "cifar-10-batches-py"
_CIFAR100_PICKLES = "cifar-100-python"
_FORMATS_HINT = (
    "pass --data PATH to an ImageFolder tree (train/<class>/*.jpg and test/<class>/*.jpg), "
    "a cifar-10-batches-py folder, or a .tar.gz of an ImageFolder tree"
)
# How each kind of source is decoded: builder(root, image_size=..., progress=...).
_BUILDERS: dict[str, Callable[..., ImageDataset]] = {
    "archive": build_from_archive,
    "imagefolder": build_from_imagefolder,
    "cifar10-pickles": partial(build_from_pickle_folder, variant="cifar10"),
    "cifar100-pickles": partial(build_from_pickle_folder, variant="cifar100"),
}


def load_dataset(
    spec: str | Path,
    *,
    image_size: int = 32,
    cache_dir: str | Path | None = None,
    download: bool = False,
    progress: ProgressFn | None = None,
    write_cache: bool = True,
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
        write_cache: False reads the cache but writes nothing, neither the decoded tensors nor a download
            (``--dry-run``).

    Raises:
        DataError: the source is missing or malformed, an archive is damaged or cut short (it is read to
            the end and its checksum verified), or an image cannot be decoded. Nothing is cached then.
    """
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = data_name(str(spec))
    if name is not None:
        if Path(str(spec).strip()).exists():
            _logger.info("%s means torchvision's %s; the folder ./%s here is not read (pass ./%s to use it)",
                         spec, _TORCHVISION_SETS[name].title, str(spec).strip(), str(spec).strip())
        return _load_torchvision(
            name, image_size=image_size, cache_root=cache_root, download=download and write_cache,
            progress=progress, write_cache=write_cache,
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
    return _load_kind(kind, root, image_size=image_size, cache_root=cache_root, progress=progress,
                      write_cache=write_cache)


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
    name: str, *, image_size: int, cache_root: Path, download: bool, progress: ProgressFn | None,
    write_cache: bool = True,
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
    return _load_kind(kind, folder, image_size=image_size, cache_root=cache_root, progress=progress)


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
    return (folder / "train").is_dir() and any((folder / split).is_dir() for split in EVAL_SPLITS)


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
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:MAX_LISTED]) or "nothing"
    raise DataError(
        f"{path} is not a dataset folder (it holds {listing}); expected train/ and test/ (or val/) with one folder "
        f"per class, a {_CIFAR10_PICKLES} folder or a {_CIFAR100_PICKLES} folder, possibly one folder down"
    )


def _load_kind(
    kind: str, root: Path, *, image_size: int, cache_root: Path, progress: ProgressFn | None,
    write_cache: bool = True,
) -> ImageDataset:
    """The dataset at ``root`` of ``kind``: from the cache if the source is unchanged, else decoded (and
    cached, with ``write_cache``)."""
    build = partial(_BUILDERS[kind], root.resolve(), image_size=image_size, progress=progress)
    return load_cached(kind, root, image_size=image_size, cache_root=cache_root, build=build, write=write_cache)
