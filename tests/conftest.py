"""Shared fixtures. Real CIFAR-10 images come from ``../shared/data/cifar10-jpeg.tar.gz``, never the repo."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SUBSET_TRAIN_PER_CLASS = 30
SUBSET_TEST_PER_CLASS = 10


def shared_cifar10_tarball() -> Path:
    """The real CIFAR-10 JPEG tarball: ``$DISTILL_SHARED_DATA`` (the file or its folder), else ``../shared/data``."""
    configured = os.environ.get("DISTILL_SHARED_DATA")
    if configured:
        path = Path(configured).expanduser()
        return path / "cifar10-jpeg.tar.gz" if path.is_dir() else path
    # The repository sits beside ``shared/`` (e.g. /work/main and /work/shared), in CI too.
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cifar10_tarball_or_skip() -> Path:
    """The real CIFAR-10 tarball, or skip the test that needs it (with where it was looked for)."""
    tarball = shared_cifar10_tarball()
    if not tarball.is_file():
        pytest.skip(f"real CIFAR-10 not found at {tarball}")
    return tarball


def import_benchmarks(*names: str) -> list:
    """Import scripts of ``benchmarks/`` as modules (the folder is not a package)."""
    import importlib

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="session")
def cifar_subset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree of 400 real CIFAR-10 JPEGs: 30 train and 10 test images for each of the 10 classes.

    Members are streamed from the tarball and the read stops once every class has its quota, so the
    60,000 images are never all extracted.
    """
    tarball = shared_cifar10_tarball()
    if not tarball.is_file():
        pytest.skip(f"real CIFAR-10 not found at {tarball}; set DISTILL_SHARED_DATA to cifar10-jpeg.tar.gz")
    quota = {"train": SUBSET_TRAIN_PER_CLASS, "test": SUBSET_TEST_PER_CLASS}
    wanted = {(split, cls): count for split, count in quota.items() for cls in CIFAR10_CLASSES}
    root = tmp_path_factory.mktemp("cifar10-subset")
    with tarfile.open(tarball, mode="r|gz") as archive:
        for member in archive:
            parts = Path(member.name).parts[-3:]
            if not member.isfile() or len(parts) != 3 or wanted.get(parts[:2], 0) == 0:
                continue
            handle = archive.extractfile(member)
            assert handle is not None
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(handle.read())
            wanted[parts[:2]] -= 1
            if not any(wanted.values()):
                break
    missing = {key: count for key, count in wanted.items() if count}
    assert not missing, f"{tarball} lacks images for {missing}"
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    """Decoded-data caches and stored teachers go to a temporary folder, never the user's ~/.cache."""
    root = tmp_path_factory.mktemp("caches")
    saved = {k: os.environ.get(k) for k in ("DISTILL_CACHE", "DISTILL_TEACHERS")}
    os.environ["DISTILL_CACHE"] = str(root / "data")
    os.environ["DISTILL_TEACHERS"] = str(root / "teachers")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
