"""No silent wrong results (issue 12): bad numbers, damaged or foreign checkpoints, full disks, huge specs.

Every bad input is refused with one line that names the setting or the file, before anything is trained on
or written; a failed write leaves neither a temporary nor a partial file behind.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

import students
from distill.config import ConfigError, TrainConfig
from students.checkpoint import CheckpointError, WriteError, load_file, load_state_into
from cli_helpers import assert_one_line_error, invoke

INF, NAN = float("inf"), float("nan")

# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "name,value,fragment",
    [
        ("lr", INF, "--lr must be a finite number"),
        ("lr", NAN, "--lr must be a finite number"),
        ("momentum", NAN, "--momentum must be a finite number"),
        ("weight_decay", INF, "--weight-decay must be a finite number"),
        ("temperature", NAN, "--temperature must be a finite number"),
        ("ema_decay", NAN, "--ema-decay must be a finite number"),
        ("kd_weight", NAN, "--kd-weight must be a finite number"),
        ("warmup_epochs", INF, "--warmup-epochs must be a finite number"),
        ("gamma", -INF, "--gamma must be a finite number"),
        ("mixup", NAN, "--mixup must be a finite number"),
        ("label_smoothing", NAN, "--label-smoothing must be a finite number"),
        ("milestones", (0.5, NAN), "--milestones must be a finite number"),
        ("crop_padding", 1000, "--crop-padding 1000"),
        ("crop_padding", 32, "--crop-padding 32"),
        ("cutout", 33, "--cutout 33"),
        ("epochs", 2.5, "--epochs must be a whole number"),
        ("batch_size", True, "--batch-size must be a whole number"),
    ],
)
def test_bad_numbers_are_refused_naming_the_setting(name: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{name: value})
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_every_float_setting_is_checked_for_finiteness() -> None:
    """The check is generic: no float field (present or added later) lets NaN through."""
    float_fields = [f.name for f in TrainConfig.__dataclass_fields__.values() if "float" in str(f.type)]
    assert {"lr", "momentum", "weight_decay", "temperature", "ema_decay"} <= set(float_fields)
    for name in float_fields:
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a finite number"):
            TrainConfig(**{name: (NAN,) if name == "milestones" else NAN})  # milestones: a list of numbers


def test_sane_edge_values_still_pass() -> None:
    cfg = TrainConfig(crop_padding=31, cutout=32, lr=1e-6, temperature=20.0, epochs=1)
    assert cfg.crop_padding == 31 and cfg.cutout == 32
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "flag,value,fragment",
    [("--lr", "inf", "--lr"), ("--momentum", "nan", "--momentum"), ("--weight-decay", "inf", "--weight-decay"),
     ("--crop-padding", "1000", "--crop-padding")],
)
def test_cli_refuses_bad_numbers_in_one_line(capsys, tmp_path: Path, flag: str, value: str, fragment: str) -> None:
    from distill.cli import main

    code, _, err = invoke(main, capsys, "run", "--student", "r1_1_c4", "--data", tmp_path / "no-data",
                          "--device", "cpu", flag, value, "--out", tmp_path / "run")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------------------------------------------------- checkpoints


def _last_pt_like(path: Path, spec: str = "r2_11_c8-16") -> Path:
    """A checkpoint shaped like the engine's last.pt: weights, optimizer with momentum, EMA, RNG and meta."""
    torch.manual_seed(0)
    model = students.create(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
    optimizer.step()
    return students.save_checkpoint(
        path, model, meta={"epoch": 1, "elapsed_s": 1.5, "best_top1": 10.0},
        optimizer=optimizer.state_dict(), ema_state_dict=model.state_dict(), rng={"torch": torch.get_rng_state()},
    )


def _largest_tensor_record(path: Path) -> tuple[int, int]:
    """Byte offset and size of the largest tensor storage inside a ``torch.save`` zip file."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip(path: Path, offset: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


def test_checkpoint_with_64_flipped_bytes_in_tensor_data_is_refused(tmp_path: Path) -> None:
    path = _last_pt_like(tmp_path / "last.pt")
    load_file(path)  # intact: loads
    start, size = _largest_tensor_record(path)
    assert size > 1024
    _flip(path, start + size // 2)
    assert torch.load(path, weights_only=True)["format"] == students.CHECKPOINT_FORMAT  # torch alone would accept it
    for load in (load_file, students.load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(path) in str(info.value) and "damaged" in str(info.value) and "\n" not in str(info.value)


def test_hash_covers_every_part_of_the_checkpoint(tmp_path: Path) -> None:
    """Edits that keep the recorded hash (weights, optimizer state, metadata, RNG) are all caught."""
    path = _last_pt_like(tmp_path / "last.pt")
    edits = {
        "weights": lambda c: c["state_dict"]["fc.bias"].add_(1e-3),
        "momentum": lambda c: next(iter(c["optimizer"]["state"].values()))["momentum_buffer"].mul_(2),
        "meta": lambda c: c["meta"].update(epoch=2),
        "rng": lambda c: c["rng"]["torch"].__setitem__(0, c["rng"]["torch"][0] ^ 1),
        "dtype": lambda c: c["ema_state_dict"].update({"fc.bias": c["ema_state_dict"]["fc.bias"].double()}),
    }
    for what, edit in edits.items():
        raw = torch.load(path, weights_only=True)
        assert raw["integrity"]["scheme"] == "sha256-content/1"
        edit(raw)
        tampered = tmp_path / f"{what}.pt"
        torch.save(raw, tampered)
        with pytest.raises(CheckpointError, match="damaged"):
            load_file(tampered)


def test_truncated_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    path = _last_pt_like(tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_without_hash_loads_with_a_warning(tmp_path: Path, caplog) -> None:
    """Checkpoints written before hashes were recorded still load (existing runs keep working)."""
    path = _last_pt_like(tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)
    del raw["integrity"]
    torch.save(raw, path)
    with caplog.at_level(logging.WARNING, logger="students.checkpoint"):
        model, ckpt = students.load_checkpoint(path)
    assert ckpt["meta"]["epoch"] == 1 and "no content hash" in caplog.text and str(path) in caplog.text


def test_foreign_architecture_gives_one_line(tmp_path: Path) -> None:
    path = _last_pt_like(tmp_path / "last.pt", spec="r1_1_c8")
    ckpt = load_file(path)
    other = students.create("r2_11_c8-16")
    with pytest.raises(CheckpointError) as info:
        load_state_into(other, ckpt, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "r1_1_c8" in message and "r2_11_c8-16" in message and "another architecture" in message
    same_spec_other_classes = students.create("r1_1_c8", num_classes=100)
    with pytest.raises(CheckpointError, match="fc.weight is 10x8 there, 100x8 here"):
        load_state_into(same_spec_other_classes, ckpt, path)
    # the optimizer state of another architecture is refused in one line too
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match="optimizer state in .* does not fit"):
        load_state_into(optimizer, ckpt, path, key="optimizer")
    # and the matching model loads
    model = students.create("r1_1_c8")
    load_state_into(model, ckpt, path)
    assert torch.equal(model.fc.bias, ckpt["state_dict"]["fc.bias"])


def test_checkpoint_with_huge_recorded_widths_is_refused_before_building(tmp_path: Path) -> None:
    path = _last_pt_like(tmp_path / "last.pt", spec="r1_1_c8")
    raw = torch.load(path, weights_only=True)
    raw["arch"]["widths"]["stages.0.0.conv1"] = 10**8
    students.atomic_save(raw, path)  # resealed: a consistent but hostile file
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="parameters, beyond"):
        students.load_checkpoint(path)
    assert time.perf_counter() - start < 2.0


def test_real_run_with_flipped_last_pt_is_not_resumed(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    """End to end: a real ``distill run`` checkpoint, damaged on disk, is refused by ``--resume`` in one line."""
    from distill.cli import main

    out = tmp_path / "run"
    code, _, err = invoke(main, capsys, "run", "--student", "r1_1_c4", "--data", cifar_subset_dir, "--epochs", "2",
                          "--batch-size", "100", "--device", "cpu", "--out", out)
    assert code == 0, err
    last = out / "last.pt"
    start, size = _largest_tensor_record(last)
    _flip(last, start + size // 2)
    code, _, err = invoke(main, capsys, "run", "--resume", out, "--epochs", "3")
    assert_one_line_error(code, err, "damaged")
    assert str(last) in err


# ------------------------------------------------------------------------------------- full disks


def _failing_writes(monkeypatch, folder: Path, err: int, after: int = 100) -> None:
    """Make ``os.write`` to files under ``folder`` write ``after`` bytes, then fail with ``err``."""
    real_write = os.write
    written = {"n": 0}

    def write(fd: int, data) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not target.startswith(str(folder)):
            return real_write(fd, data)
        if written["n"] >= after:
            raise OSError(err, os.strerror(err))
        n = real_write(fd, bytes(memoryview(data)[: after - written["n"]]))
        written["n"] += n
        return n

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to map descriptors to files")
@pytest.mark.parametrize("code,fragment", [(errno.ENOSPC, "no space left on device"),
                                           (errno.EROFS, "read-only"), (errno.EDQUOT, "quota")])
def test_failed_write_leaves_no_partial_file(monkeypatch, tmp_path: Path, code: int, fragment: str) -> None:
    good = _last_pt_like(tmp_path / "last.pt")
    before = good.read_bytes()
    _failing_writes(monkeypatch, tmp_path, code)
    for target in (good, tmp_path / "new.pt"):
        with pytest.raises(WriteError) as info:
            _last_pt_like(target)
        message = str(info.value)
        assert fragment in message and str(target) in message and "\n" not in message
    with pytest.raises(WriteError, match=fragment):
        students.atomic_write_text(tmp_path / "summary.json", "{}\n")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary, no new, no 0-byte file
    assert good.read_bytes() == before
    load_file(good)


def test_interrupted_write_leaves_no_temporary_file(monkeypatch, tmp_path: Path) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        students.atomic_write_text(tmp_path / "x.json", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 256 KiB tmpfs where this process may mount one (root on Linux); skipped elsewhere."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:100]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_real_full_and_read_only_filesystem(small_tmpfs: Path) -> None:
    good = _last_pt_like(small_tmpfs / "last.pt", spec="r1_1_c4")  # small enough to fit
    before = good.read_bytes()
    with pytest.raises(WriteError, match="no space left on device while writing .*last.pt"):
        _last_pt_like(good, spec="r2_11_c64-128")  # ~1 MB: does not fit
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["last.pt"] and good.read_bytes() == before
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(WriteError, match="read-only"):
        students.atomic_write_text(small_tmpfs / "summary.json", "{}\n")
    with pytest.raises(WriteError, match="read-only"):
        _last_pt_like(good, spec="r1_1_c4")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["last.pt"] and good.read_bytes() == before
    load_file(good)


# -------------------------------------------------------------------------------------- huge specs


def test_huge_spec_is_refused_by_cost_before_building(monkeypatch) -> None:
    import students.registry

    def never(*args, **kwargs):
        raise AssertionError("a refused student must not be built")

    monkeypatch.setattr(students.registry, "CifarResNet", never)
    start = time.perf_counter()
    for spec in ("r2_11_c100000-100000", "r1_9_c20000", "r4_9999_c4096-4096-4096-4096"):
        with pytest.raises(students.CostError) as info:
            students.create(spec)
        assert "parameters, beyond the 1,000,000,000" in str(info.value) and spec in str(info.value)
    with pytest.raises(students.CostError, match="370,004,900,010 parameters"):
        students.create("r2_11_c100000-100000")
    assert time.perf_counter() - start < 1.0


def test_cli_show_huge_spec_is_one_line_and_quick(capsys) -> None:
    from students.cli import main

    start = time.perf_counter()
    code, _, err = invoke(main, capsys, "show", "r2_11_c100000-100000")
    assert_one_line_error(code, err, "370,004,900,010 parameters")
    assert "r2_11_c100000-100000" in err and time.perf_counter() - start < 2.0
    code, _, err = invoke(main, capsys, "show", "r1_1_c" + "9" * 5000)  # beyond Python's int-parsing limit
    assert_one_line_error(code, err, "more than 9 digits")
    code, _, err = invoke(main, capsys, "show", "r1_1_c8", "--input-size", "100000")
    assert_one_line_error(code, err, "--input-size")


def test_timm_refuses_huge_spec_too() -> None:
    import timm

    with pytest.raises(students.CostError):
        timm.create_model("r2_11_c100000-100000")
