"""Tar archives (.tar.gz, .tgz, .tar): read in one streaming pass, verified to the last byte, never extracted.

A damaged archive must never load as a smaller dataset. Python's ``tarfile`` is lenient in two ways that
allow exactly that: in streaming mode it never checks the gzip CRC, and it ends the member list silently at
the first unreadable header after the first one. So the compressed stream is opened here with the
standard decompressors (gzip, bzip2 and xz verify their checksums once read to the end), headers are read
strictly (:class:`_StrictTarInfo`), and the stream is read to its end, where everything after the tar
end-of-archive marker must be zero padding. Any failure is one :class:`DataError` naming the archive.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .cifar import build_from_pickles, is_pickle_name
from .dataset import ImageDataset, ProgressFn
from .decode import EVAL_SPLITS, NamedImages, build_imagefolder_dataset, is_image_name
from .errors import DataError

__all__ = ["build_from_archive", "read_archive"]

_SPLITS = ("train", *EVAL_SPLITS)
_READ_BYTES = 1 << 20  # read size when draining the stream to its end
# Magic numbers of the compressed formats tarfile's "r|*" understands; anything else is read as a plain tar.
_DECOMPRESSORS: tuple[tuple[bytes, Callable[[IO[bytes]], IO[bytes]]], ...] = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", lambda raw: bz2.BZ2File(raw, mode="rb")),
    (b"\xfd7zXZ\x00", lambda raw: lzma.LZMAFile(raw, mode="rb")),
)
# Everything a damaged or cut-short archive raises somewhere in tarfile, a decompressor or the OS.
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)

Trees = dict[str, dict[str, dict[str, NamedImages]]]  # top folder ("" for none) -> split -> class -> images
Pickles = dict[str, dict[str, bytes]]  # top folder -> file name -> contents


def build_from_archive(path: Path, *, image_size: int, progress: ProgressFn | None) -> ImageDataset:
    """Read an ImageFolder tree (or CIFAR pickles) straight out of a tar archive, in one streaming pass.

    Raises:
        DataError: the archive is damaged, truncated or not a tar archive (nothing of it is used), holds
            no dataset or several, or holds an image that cannot be decoded (named in the message).
    """
    trees, pickles = read_archive(path)
    with_train = {top: tree for top, tree in trees.items() if "train" in tree}
    if len(with_train) > 1:
        tops = ", ".join(sorted(repr(top) for top in with_train))
        raise DataError(f"archive {path} holds several ImageFolder trees (top folders {tops}); pack only one")
    if with_train:
        top, raw_tree = next(iter(with_train.items()))
        # Members arrive in archive order; sort by name so labels and order never depend on how it was packed.
        tree = {split: {cls: sorted(images) for cls, images in classes.items()} for split, classes in raw_tree.items()}
        where = f"{path}:{top}/" if top else f"{path}:"
        return build_imagefolder_dataset(
            tree,
            where=where,
            source=f"ImageFolder archive {path}",
            image_size=image_size,
            progress=progress,
            container=str(path),
        )
    for top, blobs in pickles.items():
        variant = "cifar10" if "batches.meta" in blobs else "cifar100" if "meta" in blobs else None
        if variant is not None:
            return build_from_pickles(
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


def read_archive(path: Path) -> tuple[Trees, Pickles]:
    """The image bytes and CIFAR batch files in a tar archive, after verifying the whole archive.

    Raises:
        DataError: any part of the archive cannot be read, fails its checksum, or is cut short.
    """
    trees: Trees = {}
    pickles: Pickles = {}
    try:
        with contextlib.ExitStack() as stack:
            stream = _open_decompressed(path, stack)
            # Streaming mode ("r|") reads once, front to back, with no seeking.
            archive = stack.enter_context(tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo))
            for member in archive:
                _collect_member(archive, member, trees, pickles)
            _drain(stream)  # normally already at the end; reading it through makes the checksum count
    except _READ_ERRORS as error:
        raise DataError(
            f"could not read archive {path}: it is damaged, cut short or not a tar archive ({_describe(error)}); "
            f"nothing from it was used or cached; download or copy it again"
        ) from error
    return trees, pickles


def _open_decompressed(path: Path, stack: contextlib.ExitStack) -> IO[bytes]:
    """``path`` as a stream of tar bytes, through the decompressor its magic number names (if any)."""
    raw = stack.enter_context(open(path, "rb"))
    magic = raw.read(8)
    raw.seek(0)
    for prefix, opener in _DECOMPRESSORS:
        if magic.startswith(prefix):
            return stack.enter_context(opener(raw))
    return raw


def _collect_member(archive: tarfile.TarFile, member: tarfile.TarInfo, trees: Trees, pickles: Pickles) -> None:
    """File ``member`` under ``trees`` (an image or a class folder) or ``pickles`` (a CIFAR batch), or skip it."""
    parts = tuple(p for p in member.name.split("/") if p not in ("", "."))  # "./train/x/" too
    if not parts or any(p.startswith((".", "__MACOSX")) for p in parts):
        return  # hidden files, macOS resource forks and ".." are never data
    if member.isdir() and len(parts) in (2, 3) and parts[-2] in _SPLITS:
        top = parts[0] if len(parts) == 3 else ""
        trees.setdefault(top, {}).setdefault(parts[-2], {}).setdefault(parts[-1], [])
    elif member.isfile() and len(parts) in (3, 4) and parts[-3] in _SPLITS:
        if not is_image_name(parts[-1]):
            return
        top = parts[0] if len(parts) == 4 else ""
        classes = trees.setdefault(top, {}).setdefault(parts[-3], {})
        classes.setdefault(parts[-2], []).append((member.name, _member_bytes(archive, member)))
    elif member.isfile() and len(parts) in (1, 2) and is_pickle_name(parts[-1]):
        top = parts[0] if len(parts) == 2 else ""
        pickles.setdefault(top, {})[parts[-1]] = _member_bytes(archive, member)


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None  # regular files always have contents
    return handle.read()  # tarfile raises ReadError if the stream ends before the member does


class _StrictTarInfo(tarfile.TarInfo):
    """Tar headers read strictly.

    ``TarFile.next`` treats an unreadable header after the first as the end of the archive, so a damaged
    block in the middle used to load as a smaller dataset. Here such a header raises ``ReadError`` (which
    ``next`` passes on), and the end-of-archive marker counts only if everything after it is zero.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            _check_zero_tail(tarfile_)
            raise
        except tarfile.EmptyHeaderError:
            raise tarfile.ReadError(f"the archive ends without its end-of-archive marker{_after(tarfile_)}") from None
        except tarfile.TruncatedHeaderError:
            raise tarfile.ReadError(f"the archive ends inside a header{_after(tarfile_)}") from None
        except tarfile.InvalidHeaderError as error:
            raise tarfile.ReadError(f"damaged header{_after(tarfile_)} ({error})") from None


def _after(archive: tarfile.TarFile) -> str:
    """Where in the archive, for messages: after the last member read (``members`` never reads ahead)."""
    return f" after member {archive.members[-1].name!r}" if archive.members else " at the first member"


def _check_zero_tail(archive: tarfile.TarFile) -> None:
    """Read the stream after the end-of-archive block to its end; anything but zero padding is damage."""
    offset = archive.offset
    while chunk := archive.fileobj.read(_READ_BYTES):  # type: ignore[union-attr]
        if chunk.count(0) != len(chunk):
            raise tarfile.ReadError(
                f"data after an empty header at byte {offset:,} (a damaged header, or several archives "
                f"concatenated)"
            )


def _drain(stream: IO[bytes]) -> None:
    while stream.read(_READ_BYTES):
        pass


def _describe(error: BaseException) -> str:
    name = "zlib.error" if isinstance(error, zlib.error) else type(error).__name__
    return f"{name}: {error}".replace("\n", " ")
