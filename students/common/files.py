"""Atomic file writes: readers see the old file or the complete new one, never half of one.

Checkpoints, caches, metrics and summaries all go through :func:`atomic_write_bytes`.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import UserError

__all__ = ["WriteError", "atomic_write_bytes", "atomic_write_text"]


class WriteError(UserError):
    """A file could not be written (full or read-only disk, no permission); nothing partial was left behind."""


def _write_error(path: Path, err: OSError) -> WriteError:
    """One line saying why ``path`` could not be written and that the previous file (if any) is intact."""
    try:
        kept = "; the previous file is unchanged" if path.is_file() else ""
    except OSError:
        kept = ""
    code = err.errno
    if code == errno.ENOSPC:
        why = f"no space left on device while writing {path}; free some space and run again"
    elif code == getattr(errno, "EDQUOT", "none"):
        why = f"disk quota exceeded while writing {path}; free some space and run again"
    elif code == errno.EROFS:
        why = f"cannot write {path}: the file system is read-only; choose a writable folder"
    elif code in (errno.EACCES, errno.EPERM):
        why = f"cannot write {path}: permission denied; choose a folder you can write to"
    elif code == errno.EFBIG:
        why = f"cannot write {path}: file too large for this file system or the process's file-size limit"
    else:
        why = f"cannot write {path}: {err.strerror or err}"
    return WriteError(why + kept)


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, are fsynced and then renamed over ``path``. On any
    ``OSError`` (full disk, read-only file system, no permission) the temporary file is removed, ``path`` is
    left as it was, and :class:`WriteError` says what happened in one line.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; give the usual permissions instead
                os.fchmod(fd, 0o666 & ~_UMASK)
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        if tmp is not None:  # failed or interrupted (even by KeyboardInterrupt): leave nothing behind
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_dir(path.parent)
    return path


def _read_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` can only swap it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text (JSON, CSV, reports)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
