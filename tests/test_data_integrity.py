"""Corrupt data is never used or cached: damaged, cut-short and foreign archives, bad images, damaged caches.

Archives are packed from real CIFAR-10 JPEGs (the ``cifar_subset_dir`` fixture: 300 train / 100 test images
out of ../shared/data/cifar10-jpeg.tar.gz) with fixed timestamps, so their bytes are the same on every run,
then damaged the way disks, networks and interrupted copies damage files.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import logging
import lzma
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.data import DataError, load_dataset
from distill.data import cache as data_cache
from cli_helpers import assert_one_line_error, invoke

NUM_TRAIN, NUM_TEST = 300, 100  # what cifar_subset_dir holds (conftest.py)
REDOWNLOAD = "download or copy it again"  # the advice every damaged-archive message ends with


# ---- helpers -------------------------------------------------------------------------------------


def _pack(tree: Path, out: Path, *, compress: bool = True, replace: dict[str, bytes] | None = None) -> Path:
    """Pack an ImageFolder tree as a tar (gzipped unless ``compress`` is False), members sorted (test/ before
    train/, as in the real tarball) and all timestamps 0 so the bytes are reproducible. ``replace`` swaps the
    contents of members by name."""
    replace = replace or {}
    with open(out, "wb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(p for p in tree.rglob("*") if p.is_file()):
                name = path.relative_to(tree).as_posix()
                contents = replace.get(name, path.read_bytes())
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(contents), 0
                tar.addfile(info, io.BytesIO(contents))
        if compress:
            stream.close()
    return out


def _with_bytes(source: Path, target: Path, edit) -> Path:
    """A copy of ``source`` at ``target`` whose bytes went through ``edit(bytearray) -> bytes-like``."""
    target.write_bytes(bytes(edit(bytearray(source.read_bytes()))))
    return target


def _flip(start: int, count: int = 16):
    def edit(contents: bytearray) -> bytearray:
        for i in range(start, start + count):
            contents[i] ^= 0xFF
        return contents

    return edit


def _header_offsets(archive: Path) -> dict[str, int]:
    """Byte offset of each member's header in an uncompressed tar."""
    with tarfile.open(archive, "r:") as tar:
        return {member.name: member.offset for member in tar.getmembers()}


def _cache_files(root: Path) -> list[str]:
    """Everything under the cache folder, temporary files included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _assert_refused(archive: Path, cache_root: Path, *fragments: str) -> str:
    """Loading ``archive`` fails with one line naming it, and writes nothing to the cache."""
    with pytest.raises(DataError) as caught:
        load_dataset(archive)  # the cache location comes from $DISTILL_CACHE (the cache_root fixture)
    message = str(caught.value)
    assert str(archive) in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert _cache_files(cache_root) == []
    return message


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder, named by $DISTILL_CACHE as a user would."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def good_tgz(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pack(cifar_subset_dir, tmp_path_factory.mktemp("archives") / "cifar-subset.tar.gz")


@pytest.fixture(scope="module")
def good_tar(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pack(cifar_subset_dir, tmp_path_factory.mktemp("archives") / "cifar-subset.tar", compress=False)


# ---- damaged and cut-short archives ---------------------------------------------------------------


def test_intact_archive_loads_whole_and_is_cached(good_tgz: Path, cache_root: Path) -> None:
    ds = load_dataset(good_tgz)
    assert (len(ds.train_labels), len(ds.test_labels)) == (NUM_TRAIN, NUM_TEST)
    assert len(list(cache_root.glob("*.pt"))) == 1 and _cache_files(cache_root) == [
        p.name for p in cache_root.glob("*.pt")
    ]


# Positions in the compressed stream. Damage near the end used to load part of the training set (tarfile
# stops silently at the first bad header after the first), exit 0 and cache the partial set.
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9, 0.97, 0.995])
def test_damaged_gzip_block_is_refused_and_not_cached(
    good_tgz: Path, tmp_path: Path, cache_root: Path, fraction: float
) -> None:
    damaged = _with_bytes(good_tgz, tmp_path / "damaged.tar.gz", _flip(int(good_tgz.stat().st_size * fraction)))
    _assert_refused(damaged, cache_root, "could not read archive", REDOWNLOAD)


def test_crc_is_checked_at_the_end_of_the_stream(good_tgz: Path, tmp_path: Path, cache_root: Path) -> None:
    # Every tar member reads fine; only the gzip trailer's CRC-32 (its last 8 bytes are CRC and size)
    # disagrees, which only reading the stream to its end can notice.
    size = good_tgz.stat().st_size
    damaged = _with_bytes(good_tgz, tmp_path / "bad-crc.tar.gz", _flip(size - 8, count=4))
    _assert_refused(damaged, cache_root, "CRC check failed", REDOWNLOAD)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_gzip_is_refused(good_tgz: Path, tmp_path: Path, cache_root: Path, keep: float) -> None:
    cut = _with_bytes(good_tgz, tmp_path / "cut.tar.gz", lambda b: b[: int(len(b) * keep)])
    _assert_refused(cut, cache_root, REDOWNLOAD)


def test_truncated_plain_tar_is_refused(good_tar: Path, tmp_path: Path, cache_root: Path) -> None:
    offsets = sorted(_header_offsets(good_tar).values())
    middle = offsets[len(offsets) // 2]
    mid_member = _with_bytes(good_tar, tmp_path / "mid-member.tar", lambda b: b[: middle + 512 + 100])
    _assert_refused(mid_member, cache_root, "unexpected end of data")
    # Cut exactly between two members: every header so far is intact, only the end-of-archive marker is missing.
    at_boundary = _with_bytes(good_tar, tmp_path / "at-boundary.tar", lambda b: b[:middle])
    _assert_refused(at_boundary, cache_root, "ends without its end-of-archive marker")


def test_damaged_plain_tar_header_is_refused(good_tar: Path, tmp_path: Path, cache_root: Path) -> None:
    # The header of the 10th-last training image (train/truck/...): the lenient reading stopped there and
    # loaded 290 of 300 training images, every class still present, and cached them.
    offset = sorted(_header_offsets(good_tar).values())[-10]
    garbled = _with_bytes(good_tar, tmp_path / "garbled.tar", _flip(offset + 100, count=8))
    _assert_refused(garbled, cache_root, "damaged header after member")

    def zero_header(contents: bytearray) -> bytearray:
        contents[offset : offset + 512] = bytes(512)  # reads as the end-of-archive marker
        return contents

    zeroed = _with_bytes(good_tar, tmp_path / "zeroed.tar", zero_header)
    _assert_refused(zeroed, cache_root, "data after an empty header")


def test_file_that_is_not_an_archive_is_refused(tmp_path: Path, cache_root: Path) -> None:
    fake = tmp_path / "photos.tar.gz"
    fake.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 8)  # gzip magic, then nonsense
    _assert_refused(fake, cache_root, "could not read archive")


@pytest.mark.parametrize("compression", ["bz2", "xz"])
def test_bzip2_and_xz_archives_are_verified_too(
    good_tar: Path, tmp_path: Path, cache_root: Path, compression: str
) -> None:
    compress = {"bz2": bz2.compress, "xz": lzma.compress}[compression]
    packed = tmp_path / f"subset-{compression}.tar"  # compression is recognised by content, not by name
    packed.write_bytes(compress(good_tar.read_bytes()))
    assert len(load_dataset(packed, cache_dir=tmp_path / "other-cache").train_labels) == NUM_TRAIN
    damaged = _with_bytes(packed, tmp_path / f"damaged-{compression}.tar", _flip(packed.stat().st_size // 2))
    _assert_refused(damaged, cache_root, "could not read archive", REDOWNLOAD)


# ---- bad images inside an intact archive ---------------------------------------------------------


def test_undecodable_images_in_an_archive_are_named(cifar_subset_dir: Path, tmp_path: Path, cache_root: Path) -> None:
    first_cat, first_dog = (sorted((cifar_subset_dir / "train" / c).iterdir())[0] for c in ("cat", "dog"))
    replace = {
        f"train/cat/{first_cat.name}": first_cat.read_bytes()[: first_cat.stat().st_size // 2],  # cut short
        f"train/dog/{first_dog.name}": b"this is not a JPEG",
    }
    archive = _pack(cifar_subset_dir, tmp_path / "bad-images.tar.gz", replace=replace)
    message = _assert_refused(archive, cache_root, "2 image file(s) could not be decoded", REDOWNLOAD)
    assert all(name in message for name in replace), message


# ---- the cache -----------------------------------------------------------------------------------


def test_cache_with_flipped_bytes_is_rebuilt_not_used(
    good_tgz: Path, cache_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = load_dataset(good_tgz)
    (cache_file,) = cache_root.glob("*.pt")
    with zipfile.ZipFile(cache_file) as packed:  # torch.save writes a zip; flip bytes inside the images' record
        biggest = max(packed.infolist(), key=lambda info: info.file_size)
    middle = biggest.header_offset + 100 + biggest.file_size // 2
    _with_bytes(cache_file, cache_file, _flip(middle, count=64))
    assert torch.load(cache_file, weights_only=True)["train_images"].numel()  # torch itself does not notice
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        again = load_dataset(good_tgz)
    assert f"ignoring unreadable cache file {cache_file}" in caplog.text and "SHA-256" in caplog.text
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert data_cache.read_cache(cache_file) is not None  # rewritten whole


def test_a_failed_cache_write_leaves_no_file(
    good_tgz: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(obj: object, handle: io.BufferedWriter) -> None:
        handle.write(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_cache.torch, "save", disk_full)
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        ds = load_dataset(good_tgz)
    assert len(ds.train_labels) == NUM_TRAIN  # the data is fine; only next time's speed suffers
    assert "could not write cache file" in caplog.text
    assert _cache_files(cache_root) == []  # no partial .pt, no stray temporary file


# ---- the command line ----------------------------------------------------------------------------


def test_cli_refuses_a_damaged_archive_in_one_line(
    capsys: pytest.CaptureFixture[str], good_tgz: Path, tmp_path: Path, cache_root: Path
) -> None:
    damaged = _with_bytes(good_tgz, tmp_path / "damaged.tar.gz", _flip(int(good_tgz.stat().st_size * 0.97)))
    code, _, err = invoke(
        main, capsys, "run", "--student", "r1_1_c8", "--data", damaged, "--epochs", "1", "--device", "cpu",
        "--out", tmp_path / "run",
    )
    assert_one_line_error(code, err, str(damaged))
    assert REDOWNLOAD in err
    assert _cache_files(cache_root) == []
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
