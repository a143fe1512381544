"""Data: every source format, the decoded-image cache, the pickle guard, and the device-resident loader."""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import distill.data as data
from distill.data import DataError, DeviceLoader, ImageDataset, load_dataset, normalize
from distill.data import cache as data_cache
from distill.data import decode, unpickle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SUBSET_TRAIN_PER_CLASS, SUBSET_TEST_PER_CLASS = 30, 10  # what the cifar_subset_dir fixture extracts (conftest.py)
# Per-channel mean of CIFAR-10's training images as a fraction of 255 (Krizhevsky 2009; shared/data/README.md).
CIFAR10_MEAN = (0.491, 0.482, 0.447)


# ---- helpers -------------------------------------------------------------------------------------


def _write_image(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _solid_tree(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 2, size: int = 8) -> Path:
    """A tiny ImageFolder tree of solid-colour PNGs; colour encodes (split, class, index)."""
    for s, split in enumerate(("train", "test")):
        for c, cls in enumerate(classes):
            for i in range(per_class):
                colour = (40 * c + 10, 20 * i + 5, 100 + 50 * s)
                _write_image(root / split / cls / f"{i:03d}.png", Image.new("RGB", (size, size), colour))
    return root


def _fail_if_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were decoded although the cache should have answered")

    monkeypatch.setattr(decode, "decode_images", refuse)


def _count_decoding(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of images of every decode; an empty list means every load hit the cache."""
    calls: list[int] = []
    original = decode.decode_images

    def spy(named: list, **kwargs: object) -> np.ndarray:
        calls.append(len(named))
        return original(named, **kwargs)

    monkeypatch.setattr(decode, "decode_images", spy)
    return calls


def _synthetic(num: int = 100, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(num)  # labels double as image ids


def _to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """Undo normalisation with mean 0 and std 1, i.e. recover the uint8 pixels."""
    return (batch.float() * 255).round().to(torch.uint8)


UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # normalisation that keeps pixels recoverable


def _cifar_batch(num: int, offset: int, label_key: bytes = b"labels") -> dict[bytes, object]:
    rng = np.random.default_rng(offset)
    return {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, (num, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, 3, num)],
        b"filenames": [f"img{offset + i}.png".encode() for i in range(num)],
    }


def _write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _fake_cifar10_batches(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    for i in (1, 2):
        _write_pickle(folder / f"data_batch_{i}", _cifar_batch(12, 100 * i))
    _write_pickle(folder / "test_batch", _cifar_batch(6, 999), protocol=pickle.HIGHEST_PROTOCOL)
    _write_pickle(folder / "batches.meta", {b"label_names": [b"cat", b"dog", b"frog"], b"num_vis": 3072})
    return folder


class _RunsShell:
    """Unpickling this calls os.system: what a malicious CIFAR batch file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


# ---- the package ---------------------------------------------------------------------------------


def test_public_names_come_from_the_package() -> None:
    # The rest of the code imports these from distill.data; each module of the package has one job.
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    assert data.DeviceLoader.__module__ == "distill.data.loader"
    assert data.ImageDataset.__module__ == "distill.data.dataset"
    assert data.load_dataset.__module__ == "distill.data.sources"


def test_no_function_in_the_package_is_over_80_lines() -> None:
    import ast

    package = Path(data.__file__).parent
    long = []
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{module.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


# ---- ImageFolder ---------------------------------------------------------------------------------


def test_imagefolder_loads_real_cifar_subset(cifar_subset_dir: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    ds = load_dataset(cifar_subset_dir, cache_dir=tmp_path, progress=lambda done, total: calls.append((done, total)))
    num_train, num_test = 10 * SUBSET_TRAIN_PER_CLASS, 10 * SUBSET_TEST_PER_CLASS
    assert ds.train_images.shape == (num_train, 3, 32, 32) and ds.test_images.shape == (num_test, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.train_images.is_contiguous() and ds.test_images.is_contiguous()
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10 and ds.image_size == 32
    assert torch.bincount(ds.train_labels).tolist() == [SUBSET_TRAIN_PER_CLASS] * 10
    assert torch.bincount(ds.test_labels).tolist() == [SUBSET_TEST_PER_CLASS] * 10
    assert np.allclose(ds.mean, CIFAR10_MEAN, atol=0.04), ds.mean
    assert all(0.18 < s < 0.32 for s in ds.std), ds.std
    assert calls[-1] == (num_train + num_test, num_train + num_test)
    # Pixels are exactly what Pillow decodes: first "cat" training image, in sorted file order.
    first_cat = sorted((cifar_subset_dir / "train" / "cat").iterdir())[0]
    expected = torch.from_numpy(np.array(Image.open(first_cat).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(ds.train_images[3 * SUBSET_TRAIN_PER_CLASS], expected)
    assert str(cifar_subset_dir) in ds.source


def test_worker_pool_decodes_the_same_as_one_process(
    cifar_subset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = load_dataset(cifar_subset_dir, cache_dir=tmp_path / "serial")
    monkeypatch.setattr(decode, "_POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(decode, "_CHUNK_IMAGES", 64)  # several chunks per worker, out-of-order completion
    monkeypatch.setattr(decode, "_available_cpus", lambda: 2)
    pooled = load_dataset(cifar_subset_dir, cache_dir=tmp_path / "pooled")
    assert torch.equal(serial.train_images, pooled.train_images) and torch.equal(serial.test_images, pooled.test_images)


def test_modes_and_sizes_are_converted_to_rgb_squares(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    train = root / "train" / "odd"
    _write_image(train / "grey.png", Image.new("L", (40, 20), 77))
    _write_image(train / "rgba.png", Image.new("RGBA", (64, 64), (255, 0, 0, 128)))
    _write_image(train / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 0, 0, 0)))  # no ink: white
    _write_image(train / "palette.gif", Image.new("RGB", (7, 9), (0, 0, 255)).convert("P"))
    _write_image(train / "bw.bmp", Image.new("1", (5, 5), 1))
    _write_image(root / "test" / "odd" / "big.png", Image.new("RGB", (300, 100), (10, 20, 30)))
    (train / "notes.txt").write_text("not an image, and not named like one: ignored")

    ds = load_dataset(root, image_size=16, cache_dir=tmp_path / "cache")
    assert ds.train_images.shape == (5, 3, 16, 16) and ds.test_images.shape == (1, 3, 16, 16)
    by_name = dict(zip(["bw", "cmyk", "grey", "palette", "rgba"], ds.train_images, strict=True))  # sorted file names
    assert torch.all(by_name["grey"] == 77)
    assert torch.all(by_name["rgba"][0] == 255) and torch.all(by_name["rgba"][1:] == 0)  # alpha dropped
    assert torch.all(by_name["cmyk"] >= 250)
    assert torch.all(by_name["palette"][2] == 255) and torch.all(by_name["palette"][:2] == 0)
    assert torch.all(by_name["bw"] == 255)
    assert ds.test_images[0, :, 0, 0].tolist() == [10, 20, 30]


def test_resizing_is_logged_and_image_size_keeps_pixels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Images bigger than --image-size are shrunk with one warning naming their size; a larger side keeps them."""
    root = _solid_tree(tmp_path / "tree", size=48)
    with caplog.at_level(logging.WARNING, logger="distill"):
        small = load_dataset(root, cache_dir=tmp_path / "cache")
    assert small.image_size == 32
    assert any("resized 8 of 8 images to 32x32 px (from 48x48 (8))" in r.getMessage() and "--image-size" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distill"):
        full = load_dataset(root, image_size=48, cache_dir=tmp_path / "cache")
    assert full.train_images.shape[-2:] == (48, 48) and not [r for r in caplog.records if "resized" in r.getMessage()]


def test_image_size_flag_reaches_the_data_and_is_checked(tmp_path: Path) -> None:
    from distill.config import ConfigError, TrainConfig
    from distill.pipeline import load_data

    root = _solid_tree(tmp_path / "tree", size=48)
    cfg = TrainConfig(data=str(root), image_size=40, crop_padding=4)
    assert load_data(cfg).train_images.shape[-2:] == (40, 40)
    with pytest.raises(ConfigError, match="--image-size 4 "):
        TrainConfig(image_size=4)
    with pytest.raises(ConfigError, match="--crop-padding 20 is not smaller than the 16x16 images"):
        TrainConfig(image_size=16, crop_padding=20)
    assert TrainConfig(image_size=64, crop_padding=40).crop_padding == 40  # the bound follows the image side


def test_unreadable_images_are_named_in_the_error(tmp_path: Path) -> None:
    root = _solid_tree(tmp_path / "tree")
    (root / "train" / "a" / "broken.jpg").write_bytes(b"this is not a JPEG")
    truncated = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(truncated, format="PNG")
    (root / "test" / "b" / "truncated.png").write_bytes(truncated.getvalue()[:40])
    with pytest.raises(DataError, match=r"2 image file\(s\) could not be decoded") as caught:
        load_dataset(root, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "broken.jpg" in message and "truncated.png" in message and "\n" not in message


@pytest.mark.parametrize(
    "layout,error",
    [
        ("missing", "does not exist"),
        ("text_file", "not a .tar.gz"),
        ("empty_dir", "not a dataset folder"),
        ("no_test", "no test/ or val/"),
        ("class_mismatch", "same class folders"),
        ("empty_class", "no images"),
        ("two_trees", "several datasets"),
    ],
)
def test_bad_sources_raise_one_clear_line(tmp_path: Path, layout: str, error: str) -> None:
    source = tmp_path / "source"
    if layout == "text_file":
        source.write_text("hello")
    elif layout == "empty_dir":
        source.mkdir()
    elif layout == "no_test":
        _write_image(source / "train" / "a" / "x.png", Image.new("RGB", (4, 4)))
    elif layout == "class_mismatch":
        _solid_tree(source)
        shutil.move(source / "test" / "b", source / "test" / "c")
    elif layout == "empty_class":
        _solid_tree(source)
        (source / "train" / "zebra").mkdir()
        (source / "test" / "zebra").mkdir()
    elif layout == "two_trees":
        _solid_tree(source / "one")
        _solid_tree(source / "two")
    with pytest.raises(DataError, match=error) as caught:
        load_dataset(source, cache_dir=tmp_path / "cache")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bad_spec_names_the_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar10.*ImageFolder.*cifar-10-batches-py.*tar.gz"):
        load_dataset("imagenet-please", cache_dir=tmp_path)


def test_val_split_and_nested_folder_are_accepted(tmp_path: Path) -> None:
    tree = _solid_tree(tmp_path / "outer" / "mydata")
    (tree / "test").rename(tree / "val")
    ds = load_dataset(tmp_path / "outer", cache_dir=tmp_path / "cache")
    assert ds.classes == ("a", "b") and len(ds.train_labels) == 4 and len(ds.test_labels) == 4
    assert "val" in ds.source


# ---- archives ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,mode,top", [(".tar.gz", "w:gz", "cifar10"), (".tar", "w", "")])
def test_archive_loads_like_the_folder(
    cifar_subset_dir: Path, tmp_path: Path, suffix: str, mode: str, top: str
) -> None:
    archive = tmp_path / f"subset{suffix}"
    with tarfile.open(archive, mode) as tar:
        for split in ("test", "train"):  # test first, as in the real tarball: order must not matter
            tar.add(cifar_subset_dir / split, arcname=f"{top}/{split}" if top else split)
        junk = "/".join(part for part in (top, "train", "cat", "._0000.jpg") if part)
        tar.addfile(tarfile.TarInfo(junk))  # macOS resource fork: skipped, not decoded
    from_dir = load_dataset(cifar_subset_dir, cache_dir=tmp_path / "cache")
    from_tar = load_dataset(archive, cache_dir=tmp_path / "cache")
    assert from_tar.classes == from_dir.classes
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(from_tar, name), getattr(from_dir, name)), name
    assert str(archive) in from_tar.source


def test_archive_without_imagefolder_tree_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "wrong.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("images/cat/0001.jpg")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="no ImageFolder tree"):
        load_dataset(archive, cache_dir=tmp_path / "cache")


# ---- CIFAR python batches ------------------------------------------------------------------------


def test_cifar10_batches_folder(tmp_path: Path) -> None:
    folder = _fake_cifar10_batches(tmp_path)
    ds = load_dataset(folder, cache_dir=tmp_path / "cache")
    assert ds.classes == ("cat", "dog", "frog")
    assert ds.train_images.shape == (24, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    first = _cifar_batch(12, 100)
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major.
    assert torch.equal(ds.train_images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert ds.train_labels[:12].tolist() == first[b"labels"]
    assert torch.equal(ds.test_images, torch.from_numpy(_cifar_batch(6, 999)[b"data"].reshape(6, 3, 32, 32)))
    # One folder up works too (torchvision's root), and resizing applies to batches as well.
    assert load_dataset(tmp_path, image_size=16, cache_dir=tmp_path / "cache").train_images.shape == (24, 3, 16, 16)


def test_cifar100_python_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    _write_pickle(folder / "train", _cifar_batch(10, 1, label_key=b"fine_labels"))
    _write_pickle(folder / "test", _cifar_batch(4, 2, label_key=b"fine_labels"))
    _write_pickle(folder / "meta", {b"fine_label_names": [b"apple", b"bee", b"cloud"], b"coarse_label_names": []})
    ds = load_dataset(folder, cache_dir=tmp_path / "cache")
    assert ds.classes == ("apple", "bee", "cloud") and len(ds.train_labels) == 10 and len(ds.test_labels) == 4


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = _fake_cifar10_batches(tmp_path)
    marker = tmp_path / "pwned"
    _write_pickle(folder / "data_batch_2", {b"data": _RunsShell(marker), b"labels": []})
    with pytest.raises(DataError, match=r"data_batch_2.*refusing to load global (posix|os|nt)\.system"):
        load_dataset(folder, cache_dir=tmp_path / "cache")
    assert not marker.exists()
    # The same payload straight through the guard, and the guard still admits plain numpy arrays.
    with pytest.raises(DataError):
        unpickle.safe_unpickle(pickle.dumps(_RunsShell(marker)), "payload")
    assert not marker.exists()
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert np.array_equal(unpickle.safe_unpickle(pickle.dumps(array, protocol=protocol), "ok"), array)


def test_cifar10_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"CIFAR-10 is not available offline at .* could not be downloaded.*--data PATH"
    ):
        load_dataset("cifar10", cache_dir=tmp_path, download=False)
    with pytest.raises(DataError, match="CIFAR-100 is not available offline"):
        load_dataset("cifar100", cache_dir=tmp_path, download=False)


def test_cifar10_name_uses_torchvision_folder_in_cache(tmp_path: Path) -> None:
    _fake_cifar10_batches(tmp_path / "torchvision")
    ds = load_dataset("cifar10", cache_dir=tmp_path, download=False)
    assert ds.classes == ("cat", "dog", "frog") and len(ds.train_labels) == 24


# ---- cache ---------------------------------------------------------------------------------------


def test_cache_hit_is_fast_and_identical(
    cifar_subset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(cifar_subset_dir, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    _fail_if_decoding(monkeypatch)
    started = time.perf_counter()
    second = load_dataset(cifar_subset_dir, cache_dir=tmp_path)
    assert time.perf_counter() - started < 1.0
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert (first.classes, first.mean, first.std, first.source) == (
        second.classes,
        second.mean,
        second.std,
        second.source,
    )


def test_cache_defaults_to_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "from-env"))
    assert data.default_cache_dir() == tmp_path / "from-env"
    load_dataset(_solid_tree(tmp_path / "tree"))
    assert len(list((tmp_path / "from-env").glob("*.pt"))) == 1


def _bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # +5 s: beats coarse clocks


def test_cache_is_invalidated_by_touch_and_by_new_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _solid_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    decodes = _count_decoding(monkeypatch)
    load_dataset(root, cache_dir=cache)
    load_dataset(root, cache_dir=cache)
    assert decodes == [8]
    _bump_mtime(root / "test" / "b" / "001.png")  # same bytes, new mtime: rebuilt all the same
    load_dataset(root, cache_dir=cache)
    assert decodes == [8, 8]
    edited = root / "train" / "a" / "000.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(edited)
    _bump_mtime(edited)
    assert load_dataset(root, cache_dir=cache).train_images[0, :, 0, 0].tolist() == [1, 2, 3]
    _write_image(root / "train" / "b" / "new.png", Image.new("RGB", (8, 8)))
    assert len(load_dataset(root, cache_dir=cache).train_labels) == 5
    assert decodes == [8, 8, 8, 9]
    assert len(list(cache.glob("*.pt"))) == 4  # one per distinct state of the source

    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="tree")
    load_dataset(archive, cache_dir=cache)
    _bump_mtime(archive)
    load_dataset(archive, cache_dir=cache)
    assert decodes == [8, 8, 8, 9, 9, 9]


def test_cache_is_keyed_by_image_size(tmp_path: Path) -> None:
    root = _solid_tree(tmp_path / "tree")
    assert load_dataset(root, image_size=8, cache_dir=tmp_path / "cache").image_size == 8
    assert load_dataset(root, image_size=4, cache_dir=tmp_path / "cache").image_size == 4


def test_corrupt_cache_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _solid_tree(tmp_path / "tree")
    first = load_dataset(root, cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        again = load_dataset(root, cache_dir=tmp_path / "cache")
    assert "ignoring unreadable cache file" in caplog.text
    assert torch.equal(first.train_images, again.train_images)
    assert data_cache.read_cache(cache_file) is not None  # rewritten whole


# ---- dataset methods -----------------------------------------------------------------------------


def _image_keys(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def test_split_validation(cifar_subset_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(cifar_subset_dir, cache_dir=tmp_path)
    split = ds.split_validation(50, seed=1)
    assert len(split.train_labels) == len(ds.train_labels) - 50 and len(split.test_labels) == 50
    train_keys, val_keys = _image_keys(split.train_images), _image_keys(split.test_images)
    assert not train_keys & val_keys
    assert train_keys | val_keys == _image_keys(ds.train_images)
    assert "validation" in split.source and split.classes == ds.classes
    assert torch.equal(ds.split_validation(50, seed=1).test_images, split.test_images)
    assert not torch.equal(ds.split_validation(50, seed=2).test_images, split.test_images)
    with pytest.raises(DataError):
        ds.split_validation(len(ds.train_labels))


def test_subset_is_balanced_and_deterministic(cifar_subset_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(cifar_subset_dir, cache_dir=tmp_path)
    small = ds.subset(train=50, test=23, seed=4)
    assert torch.bincount(small.train_labels, minlength=10).tolist() == [5] * 10
    assert sorted(torch.bincount(small.test_labels, minlength=10).tolist()) == [2] * 7 + [3] * 3
    assert _image_keys(small.train_images) <= _image_keys(ds.train_images)
    assert torch.equal(ds.subset(train=50, test=23, seed=4).train_images, small.train_images)
    assert not torch.equal(ds.subset(train=50, test=23, seed=5).train_images, small.train_images)
    assert len(ds.subset(train=10).test_labels) == len(ds.test_labels)  # None keeps a split whole
    with pytest.raises(DataError, match="cannot take"):
        ds.subset(train=len(ds.train_labels) + 1)


def test_dataset_rejects_malformed_tensors() -> None:
    images, _ = _synthetic(4)
    good = {
        "train_images": images,
        "train_labels": torch.zeros(4, dtype=torch.int64),
        "test_images": images,
        "test_labels": torch.zeros(4, dtype=torch.int64),
        "classes": ("only",),
        "mean": (0.5,) * 3,
        "std": (0.2,) * 3,
        "source": "test",
    }
    ImageDataset(**good)
    for change in (
        {"train_images": images.float()},
        {"test_labels": torch.ones(4, dtype=torch.int64)},
        {"train_labels": torch.zeros(3, dtype=torch.int64)},
    ):
        with pytest.raises(DataError):
            ImageDataset(**{**good, **change})


# ---- DeviceLoader --------------------------------------------------------------------------------


def _collect(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_loader_is_a_pure_function_of_seed_and_epoch() -> None:
    images, labels = _synthetic(100)
    options = {"batch_size": 16, "train": True, "cutout": 3, **UNIT}
    one, two = DeviceLoader(images, labels, seed=7, **options), DeviceLoader(images, labels, seed=7, **options)
    one.set_epoch(3)
    two.set_epoch(3)
    x1, y1 = _collect(one)
    x2, y2 = _collect(two)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    two.set_epoch(4)
    x3, y3 = _collect(two)
    assert not torch.equal(y1, y3) and not torch.equal(x1, x3)
    # Without set_epoch each pass advances the epoch: passes 4 and 5 of a loader started at 3 are epochs 4, 5.
    two.set_epoch(3)
    assert torch.equal(_collect(two)[0], x1) and torch.equal(_collect(two)[0], x3)
    other_seed = DeviceLoader(images, labels, seed=8, **options)
    other_seed.set_epoch(3)
    assert not torch.equal(_collect(other_seed)[1], y1)


def test_loader_batches_are_normalised_floats(cifar_subset_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(cifar_subset_dir, cache_dir=tmp_path)
    evaluation = DeviceLoader(ds.train_images, ds.train_labels, batch_size=64, mean=ds.mean, std=ds.std, train=False)
    x, y = _collect(evaluation)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == ds.train_images.shape
    # mean/std come from these very images, so normalised channels have mean 0 and std 1.
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.allclose(x, normalize(ds.train_images, ds.mean, ds.std))
    manual = (ds.train_images[5].float() / 255 - torch.tensor(ds.mean).view(3, 1, 1)) / torch.tensor(ds.std).view(
        3, 1, 1
    )
    assert torch.allclose(normalize(ds.train_images[5], ds.mean, ds.std), manual, atol=1e-5)

    train = DeviceLoader(
        ds.train_images,
        ds.train_labels,
        batch_size=64,
        mean=ds.mean,
        std=ds.std,
        train=True,
        dtype=torch.bfloat16,
        channels_last=True,
    )
    images, labels = next(iter(train))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.bfloat16 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert images.device.type == "cpu" and labels.device.type == "cpu"


def test_eval_loader_keeps_order_and_pixels() -> None:
    images, labels = _synthetic(50)
    loader = DeviceLoader(images, labels, batch_size=16, train=False, **UNIT)
    assert len(loader) == 4 and loader.num_samples == 50
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = _collect(loader)
    assert torch.equal(y, labels) and torch.equal(_to_uint8(x), images)
    assert torch.equal(_collect(loader)[0], x)  # the same every pass


def test_drop_last_and_len() -> None:
    images, labels = _synthetic(100)
    train = DeviceLoader(images, labels, batch_size=32, train=True, **UNIT)
    assert len(train) == 3 and train.num_samples == 96
    assert [len(y) for _, y in train] == [32, 32, 32]
    keep = DeviceLoader(images, labels, batch_size=32, train=True, drop_last=False, **UNIT)
    assert len(keep) == 4 and keep.num_samples == 100
    assert sorted(_collect(keep)[1].tolist()) == list(range(100))  # a permutation of the epoch
    evaluation = DeviceLoader(images, labels, batch_size=32, train=False, **UNIT)
    assert len(evaluation) == 4 and evaluation.num_samples == 100


def test_random_crop_matches_torchvision_padding_semantics() -> None:
    # Pixel values encode their position, so every output reveals where it was cut from.
    size, padding = 8, 4
    grid = (torch.arange(size * size, dtype=torch.uint8) + 1).view(1, 1, size, size)
    images = (grid + torch.tensor([0, 70, 140], dtype=torch.uint8).view(1, 3, 1, 1)).expand(200, 3, size, size)
    loader = DeviceLoader(
        images.contiguous(), torch.arange(200), batch_size=50, train=True, crop_padding=padding, flip=False, **UNIT
    )
    crops = _to_uint8(_collect(loader)[0])
    padded = F.pad(images[0], (padding,) * 4)  # torchvision RandomCrop(size, padding=4): zero padding
    windows = {(top, left): padded[:, top : top + size, left : left + size] for top in range(9) for left in range(9)}
    seen = set()
    for crop in crops:
        matches = [offset for offset, window in windows.items() if torch.equal(crop, window)]
        assert len(matches) == 1, "every crop is exactly one window of the zero-padded image"
        seen.add(matches[0])
    assert {0, 8} <= {top for top, _ in seen} and {0, 8} <= {left for _, left in seen}  # full shift range
    assert len(seen) > 40


def test_flip_mirrors_about_half() -> None:
    images, labels = _synthetic(200)
    loader = DeviceLoader(images, labels, batch_size=64, train=True, crop_padding=0, **UNIT)
    x, y = _collect(loader)
    x = _to_uint8(x)
    flipped = [bool(torch.equal(out, images[i].flip(-1))) for out, i in zip(x, y, strict=True)]
    assert all(flipped[k] or torch.equal(x[k], images[y[k]]) for k in range(len(y)))
    assert 0.3 < sum(flipped) / len(flipped) < 0.7


def test_cutout_zeroes_one_square_per_image() -> None:
    images = torch.full((64, 3, 12, 12), 200, dtype=torch.uint8)
    loader = DeviceLoader(
        images,
        torch.arange(64),
        batch_size=64,
        mean=(0.1, 0.2, 0.3),
        std=(0.5, 0.5, 0.5),
        train=True,
        crop_padding=0,
        flip=False,
        cutout=5,
    )
    ((x, _),) = list(loader)
    value = (200 / 255 - torch.tensor([0.1, 0.2, 0.3])) / 0.5
    corners = set()
    for image in x:
        zero = image == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
        rows, cols = zero[0].nonzero(as_tuple=True)
        assert zero[0].sum() == 25 and rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4
        assert torch.allclose(image[:, ~zero[0]], value.view(3, 1).expand(3, 144 - 25))
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 10


def test_world_size_two_shards_the_epoch() -> None:
    images, labels = _synthetic(103)
    shards = [
        DeviceLoader(
            images, labels, batch_size=10, train=True, seed=5, rank=rank, world_size=2, drop_last=False, **UNIT
        )
        for rank in (0, 1)
    ]
    ids = [_collect(loader)[1] for loader in shards]
    assert len(ids[0]) == len(ids[1]) == 51 and shards[0].num_samples == 51 and len(shards[0]) == 6
    assert not set(ids[0].tolist()) & set(ids[1].tolist())
    single = DeviceLoader(images, labels, batch_size=10, train=True, seed=5, drop_last=False, **UNIT)
    epoch_order = _collect(single)[1]
    assert torch.equal(torch.stack([ids[0], ids[1]], 1).flatten(), epoch_order[:102])  # interleaved positions
    # Evaluation shards keep every image exactly once.
    evaluation = [
        DeviceLoader(images, labels, batch_size=10, train=False, rank=r, world_size=2, **UNIT) for r in (0, 1)
    ]
    assert sorted(torch.cat([_collect(loader)[1] for loader in evaluation]).tolist()) == list(range(103))


def test_loader_rejects_bad_arguments() -> None:
    images, labels = _synthetic(10)
    with pytest.raises(DataError):
        DeviceLoader(images.float(), labels, batch_size=4, train=True, **UNIT)
    with pytest.raises(DataError):
        DeviceLoader(images, labels, batch_size=0, train=True, **UNIT)
    with pytest.raises(DataError):
        DeviceLoader(images, labels, batch_size=4, train=True, rank=2, world_size=2, **UNIT)
    with pytest.raises(DataError):
        DeviceLoader(images, labels, batch_size=4, train=True, cutout=9, **UNIT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu_batches() -> None:
    images, labels = _synthetic(300, size=32)
    options = {"batch_size": 64, "train": True, "cutout": 8, "seed": 3, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    cpu = _collect(DeviceLoader(images, labels, device="cpu", **options))
    gpu = _collect(DeviceLoader(images, labels, device="cuda", **options))
    assert gpu[0].device.type == "cuda"
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-5)


def test_a_name_is_a_name_and_a_path_is_a_path(cifar_subset_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A ``./cifar10`` folder in the working directory does not change what ``cifar10`` means (torchvision's
    CIFAR-10, not cached here, so refused without a download); the folder is read when given as a path, and a
    config records the path absolute, so it finds the same files from anywhere."""
    from distill.config import TrainConfig

    shutil.copytree(cifar_subset_dir, tmp_path / "cifar10")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="CIFAR-10"):
        load_dataset("cifar10", cache_dir=tmp_path / "cache", download=False)
    folder = load_dataset("./cifar10", cache_dir=tmp_path / "cache")
    assert folder.train_labels.numel() == 300 and str(tmp_path / "cifar10") in folder.source
    assert TrainConfig(data="cifar10").data == "cifar10" and TrainConfig(data="CIFAR-10").data == "cifar10"
    assert TrainConfig(data="./cifar10").data == str(tmp_path / "cifar10")
    monkeypatch.chdir(cifar_subset_dir)  # elsewhere, the recorded config still names the same folder
    recorded = TrainConfig(data=str(tmp_path / "cifar10")).to_dict()
    assert TrainConfig.from_dict(recorded).data == str(tmp_path / "cifar10")
