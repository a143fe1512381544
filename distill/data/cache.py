"""The disk cache of decoded datasets: one ``.pt`` file per source state and image size.

Decoding 60,000 JPEGs takes seconds, so the decoded tensors are cached keyed by the source's path, size,
file count and newest modification time; the second load of CIFAR-10 is a single ``torch.load``.

A cache file is written only after a complete, successful read of the source, and atomically (a temporary
file, fsync, ``os.replace``), so it is either whole or absent. It carries a SHA-256 of its contents, checked
on every load: ``torch.load`` itself accepts a file with flipped bytes, and a damaged cache file is rebuilt
from the source instead of being used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .dataset import ImageDataset
from .errors import DataError

__all__ = ["CACHE_ENV_VAR", "cache_path", "default_cache_dir", "load_cached", "read_cache", "write_cache"]

_logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "DISTILL_CACHE"
# Bump whenever decoding or the cached layout changes, so stale cache files are never reused.
# 2: the payload carries a SHA-256 of its contents.
_CACHE_FORMAT = 2
_TENSORS = ("train_images", "train_labels", "test_images", "test_labels")


def default_cache_dir() -> Path:
    """The cache directory: ``$DISTILL_CACHE`` if set, else ``~/.cache/distill``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "distill"


def _fingerprint(root: Path) -> dict[str, object]:
    """What identifies the source's current contents, cheaply: path, sizes, file count, newest mtime."""
    resolved = root.resolve()
    if resolved.is_file():
        stat = resolved.stat()
        return {"path": str(resolved), "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "num_files": 1}
    size_bytes, num_files = 0, 0
    top = resolved.stat()
    newest_mtime_ns = top.st_mtime_ns
    pending = [str(resolved)]
    seen = {(top.st_dev, top.st_ino)}  # folders already walked: a symlink loop would otherwise never end
    # scandir reuses the directory read for type checks, so 60,000 files take a fraction of a second.
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                try:
                    stat = entry.stat(follow_symlinks=True)
                except OSError as err:  # a dangling link, or one that loops on itself
                    raise DataError(f"cannot read {entry.path} in {root} ({err.strerror}); remove the broken link") from None
                # Directory mtimes change when files are added, removed or renamed.
                newest_mtime_ns = max(newest_mtime_ns, stat.st_mtime_ns)
                if entry.is_dir(follow_symlinks=True):
                    if (stat.st_dev, stat.st_ino) in seen:
                        raise DataError(f"{entry.path} leads back to a folder already read (a symlink loop) in {root}; "
                                        "remove the link")
                    seen.add((stat.st_dev, stat.st_ino))
                    pending.append(entry.path)
                else:
                    size_bytes += stat.st_size
                    num_files += 1
    return {"path": str(resolved), "size_bytes": size_bytes, "mtime_ns": newest_mtime_ns, "num_files": num_files}


def cache_path(cache_root: Path, kind: str, root: Path, image_size: int) -> Path:
    """The cache file for source ``root`` of ``kind`` as it is now, decoded at ``image_size``."""
    key = {"format": _CACHE_FORMAT, "kind": kind, "image_size": image_size, **_fingerprint(root)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40]
    return cache_root / f"{readable}-{image_size}px-{digest}.pt"


def _content_hash(payload: Mapping[str, object]) -> str:
    """SHA-256 over the tensors' bytes (with dtype and shape) and the metadata, in a fixed order."""
    digest = hashlib.sha256()
    for name in _TENSORS:
        tensor = payload[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} is a {type(tensor).__name__}, not a tensor")
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().numpy().data)
    meta = {key: payload[key] for key in ("classes", "mean", "std", "source")}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def read_cache(path: Path) -> ImageDataset | None:
    """The cached dataset, or ``None`` when absent or unusable (a damaged file is logged, then rebuilt)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != _CACHE_FORMAT:
            raise ValueError(f"cache format {payload.get('format')!r}, expected {_CACHE_FORMAT}")
        if payload.get("sha256") != _content_hash(payload):
            raise ValueError("contents do not match their SHA-256: the file is damaged")
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


def write_cache(path: Path, dataset: ImageDataset) -> None:
    """Save atomically: a crash mid-write leaves at most a stray temp file, never a partial cache file."""
    payload: dict[str, object] = {
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
    payload["sha256"] = _content_hash(payload)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache holds public data, shareable between users
        os.replace(tmp_name, path)
        _logger.info("cached decoded images at %s", path)
    except OSError as error:  # a read-only or full disk costs speed next time, not correctness now
        _logger.warning("could not write cache file %s (%s); the next load will decode again", path, error)
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def load_cached(
    kind: str, root: Path, *, image_size: int, cache_root: Path, build: Callable[[], ImageDataset],
    write: bool = True,
) -> ImageDataset:
    """The cached tensors for ``root`` if its contents are unchanged, else ``build()``, cached once it succeeds
    (unless ``write`` is False).

    ``build`` raising (a damaged or incomplete source) writes nothing.
    """
    started = time.perf_counter()
    cache_file = cache_path(cache_root, kind, root, image_size)
    dataset = read_cache(cache_file)
    if dataset is not None:
        _logger.info("loaded %s from cache %s in %.2f s", dataset.source, cache_file, time.perf_counter() - started)
        return dataset
    dataset = build()
    _logger.info("built %s in %.1f s", dataset.source, time.perf_counter() - started)
    if write:
        write_cache(cache_file, dataset)
    return dataset
