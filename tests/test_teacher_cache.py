"""The teacher-output cache (issue 27): recorded once, replayed exactly, keyed by every stream setting, safe.

CPU, tiny nets, real CIFAR-10 images (300 train / 100 test). Each test gets its own cache folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import students
from cli_helpers import invoke
from distill import TrainConfig, fit
from distill.cli import main
from distill.data import load_dataset
from distill.device import resolve_device
from distill.teacher_cache import (CacheEntry, TeacherOutputs, cache_root, evict, stream_key)
from students.checkpoint import content_digest

TEACHER, STUDENT = "r2_11_c8-16", "r1_1_c4"
TIMING = {"seconds", "train_seconds", "train_img_s", "teacher_outputs"}


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch) -> Path:
    """A fresh data cache (and so teacher-output cache) for this test only."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_CACHE", str(root))
    return root / "teacher-outputs"


@pytest.fixture(scope="module")
def data(cifar_subset_dir: Path):
    return load_dataset(str(cifar_subset_dir))


def _teacher() -> torch.nn.Module:
    torch.manual_seed(123)
    return students.create(TEACHER, num_classes=10)  # untrained: its logits are still a fixed function


def _cfg(**changes) -> TrainConfig:
    base = dict(epochs=2, batch_size=50, lr=0.05, device="cpu", seed=5, mixup=0.4, cutmix=1.0, kd_weight=0.9)
    return TrainConfig(**{**base, **changes})


def _fit(data, out: Path, teacher=None, seed_weights: int = 5, **changes):
    torch.manual_seed(seed_weights)
    student = students.create(STUDENT, num_classes=10)
    return fit(student, data, teacher=teacher if teacher is not None else _teacher(), config=_cfg(**changes), out=out)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_identical(a: Path, b: Path) -> None:
    """Every metric (times aside) and every weight equal, bit for bit."""
    ra, rb = _records(a), _records(b)
    assert len(ra) == len(rb) and ra
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}
    wa, wb = (torch.load(r / "last.pt", weights_only=True) for r in (a, b))
    for key in ("state_dict", "ema_state_dict"):
        for name, value in wa[key].items():
            assert torch.equal(value, wb[key][name]), (key, name)


def _modes(run: Path) -> list[str]:
    return [r.get("teacher_outputs") for r in _records(run)]


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and p.name != "evals") if cache.is_dir() else []


def test_a_replayed_run_equals_a_live_run_bit_for_bit_and_skips_the_teacher(data, cache: Path, tmp_path: Path) -> None:
    live = _fit(data, tmp_path / "live", teacher_cache=False)
    assert _modes(live.run_dir) == ["live", "live"] and not cache.exists()  # off writes nothing
    cold = _fit(data, tmp_path / "cold")
    assert _modes(cold.run_dir) == ["recorded", "recorded"]
    [entry] = _entries(cache)
    assert sorted(p.name for p in entry.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt", "key.json"]

    teacher, calls = _teacher(), []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    warm = _fit(data, tmp_path / "warm", teacher=teacher)
    assert _modes(warm.run_dir) == ["replayed", "replayed"]
    assert calls == []  # neither its training forward passes nor its test top-1 (recorded too) ran again
    assert warm.extra["teacher_outputs"] == {"replayed": 2, "recorded": 0, "live": 0}
    assert warm.teacher_top1 == live.teacher_top1 == cold.teacher_top1
    for run in (cold, warm):
        _assert_identical(live.run_dir, run.run_dir)


def test_other_students_losses_and_longer_runs_hit_the_entry(data, cache: Path, tmp_path: Path) -> None:
    _fit(data, tmp_path / "first", epochs=1)
    other = _fit(data, tmp_path / "other", epochs=2, kd_loss="dist", lr=0.02, seed_weights=9, temperature=2.0)
    assert _modes(other.run_dir) == ["replayed", "recorded"]  # epoch 2 was not recorded yet
    assert len(_entries(cache)) == 1


@pytest.mark.parametrize("change, hit", [
    ({"crop_padding": 2}, False), ({"flip": False}, False), ({"cutout": 8}, False), ({"mixup": 0.2}, False),
    ({"cutmix": 0.0}, False), ({"mix_prob": 0.5}, False), ({"seed": 6}, False), ({"batch_size": 25}, False),
    ({"data_seed": 7}, False), ({"channels_last": False}, False),
    ({"seed": 6, "data_seed": 5}, True), ({"lr": 0.3}, True), ({"kd_loss": "dkd"}, True), ({"temperature": 2.0}, True),
    ({"kd_weight": 0.5}, True), ({"epochs": 9}, True), ({"label_smoothing": 0.1}, True), ({"ema": False}, True),
    ({"optimizer": "adamw"}, True), ({"student": "other"}, True),
])
def test_the_key_holds_every_setting_that_changes_the_images_and_nothing_else(data, change: dict, hit: bool) -> None:
    teacher = _teacher()
    cpu = resolve_device("cpu")

    def key(cfg: TrainConfig) -> str:
        return CacheEntry(stream_key(cfg, teacher=teacher, data=data, device=cpu,
                                     teacher_channels_last=cfg.channels_last)).digest

    assert (key(_cfg()) == key(_cfg(**change))) is hit


def test_mixing_probabilities_do_not_split_unmixed_streams(data) -> None:
    teacher, cpu = _teacher(), resolve_device("cpu")
    keys = {CacheEntry(stream_key(_cfg(mixup=0.0, cutmix=0.0, mix_prob=p), teacher=teacher, data=data, device=cpu,
                                  teacher_channels_last=True)).digest for p in (1.0, 0.5)}
    assert len(keys) == 1


def test_other_teacher_weights_other_data_and_other_rank_miss(data) -> None:
    cpu = resolve_device("cpu")
    teacher = _teacher()

    def digest(t=teacher, d=data, **kw) -> str:
        return CacheEntry(stream_key(_cfg(), teacher=t, data=d, device=cpu, teacher_channels_last=True, **kw)).digest

    base = digest()
    with torch.no_grad():
        next(teacher.parameters())[0, 0, 0, 0] += 1e-3  # an in-place change is seen (tensor versions)
    assert digest() != base
    assert digest(t=_teacher()) == base
    assert digest(d=data.subset(train=200, test=50)) != base
    assert digest(world_size=2, rank=1) != base


def test_a_damaged_or_truncated_epoch_file_is_recomputed(data, cache: Path, tmp_path: Path, caplog) -> None:
    first = _fit(data, tmp_path / "first")
    [entry] = _entries(cache)
    flipped = bytearray((entry / "epoch-0001.pt").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # inside the tensor data: torch.load reads it, the SHA-256 does not match
    (entry / "epoch-0001.pt").write_bytes(bytes(flipped))
    whole = (entry / "epoch-0002.pt").read_bytes()
    (entry / "epoch-0002.pt").write_bytes(whole[: len(whole) // 3])
    again = _fit(data, tmp_path / "again")
    assert _modes(again.run_dir) == ["recorded", "recorded"]
    assert "damaged" in caplog.text and "unreadable" in caplog.text
    _assert_identical(first.run_dir, again.run_dir)
    third = _fit(data, tmp_path / "third")
    assert _modes(third.run_dir) == ["replayed", "replayed"]
    assert not list(entry.glob(".*.tmp"))


def test_an_entry_that_does_not_match_its_batches_is_dropped_before_use(data, cache: Path, tmp_path: Path,
                                                                        caplog) -> None:
    """Second line of defence: a well-formed entry whose batches differ (a setting the key missed) is caught by
    the per-batch image checks and the teacher runs live; nothing wrong is trained on."""
    first = _fit(data, tmp_path / "first", epochs=1)
    [entry] = _entries(cache)
    obj = torch.load(entry / "epoch-0001.pt", weights_only=True)
    obj["checks"][3] += 5.0  # batch 4's images "differ"
    obj["logits"][3:] = 0.0  # and the logits from there on are wrong
    obj["sha256"] = content_digest({k: v for k, v in obj.items() if k != "sha256"})
    torch.save(obj, entry / "epoch-0001.pt")
    again = _fit(data, tmp_path / "again", epochs=1)
    assert "does not match batch 4 of epoch 1" in caplog.text
    assert _modes(again.run_dir) == ["recorded"]
    _assert_identical(first.run_dir, again.run_dir)


def test_a_run_stopped_while_recording_resumes_and_records_the_rest(capsys, cifar_subset_dir: Path, cache: Path,
                                                                    tmp_path: Path, monkeypatch) -> None:
    teacher_run = tmp_path / "teacher"
    common = ["--data", cifar_subset_dir, "--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--mixup", "0.4"]
    assert main([str(a) for a in ["teacher", "--teacher", TEACHER, "--epochs", "1", *common, "--out", teacher_run]]) == 0
    run = ["run", "--teacher", TEACHER, "--teacher-ckpt", teacher_run, "--student", STUDENT, "--epochs", "3", *common]
    calls = {"n": 0}
    real = TeacherOutputs.forward

    def failing(self, images):
        calls["n"] += 1
        if calls["n"] == 9:  # step 3 of epoch 2 (6 batches per epoch)
            raise RuntimeError("killed while recording")
        return real(self, images)

    with monkeypatch.context() as patch:
        patch.setattr(TeacherOutputs, "forward", failing)
        with pytest.raises(RuntimeError, match="killed while recording"):
            main([str(a) for a in [*run, "--out", tmp_path / "stopped"]])
    capsys.readouterr()
    [entry] = _entries(cache)
    assert sorted(p.name for p in entry.iterdir()) == ["epoch-0001.pt", "key.json"]  # nothing of epoch 2
    code, out, err = invoke(main, capsys, "run", "--resume", tmp_path / "stopped")
    assert code == 0, err
    assert "teacher outputs: live, recorded in" in out
    assert _modes(tmp_path / "stopped") == ["recorded", "recorded", "recorded"]
    code, _, err = invoke(main, capsys, *run, "--out", tmp_path / "whole", "--teacher-cache", "off")
    assert code == 0, err
    _assert_identical(tmp_path / "whole", tmp_path / "stopped")


def test_feature_methods_run_the_teacher_live_and_record_its_logits(data, cache: Path, tmp_path: Path) -> None:
    feat = _fit(data, tmp_path / "kd+at", kd_loss="kd+at")
    assert _modes(feat.run_dir) == ["recorded", "recorded"]
    feat_again = _fit(data, tmp_path / "kd+at-again", kd_loss="kd+at")
    assert _modes(feat_again.run_dir) == ["live", "live"]  # its stage maps are needed every step
    _assert_identical(feat.run_dir, feat_again.run_dir)
    logit = _fit(data, tmp_path / "kd", kd_loss="kd")
    assert _modes(logit.run_dir) == ["replayed", "replayed"]
    live = _fit(data, tmp_path / "kd-live", kd_loss="kd", teacher_cache=False)
    _assert_identical(live.run_dir, logit.run_dir)


def test_seeds_of_initialisation_share_one_stream_with_data_seed(data, cache: Path, tmp_path: Path) -> None:
    a = _fit(data, tmp_path / "a", seed=1, data_seed=0, seed_weights=1)
    b = _fit(data, tmp_path / "b", seed=2, data_seed=0, seed_weights=2)
    assert _modes(a.run_dir) == ["recorded"] * 2 and _modes(b.run_dir) == ["replayed"] * 2
    assert _records(a.run_dir)[0]["train_loss"] != _records(b.run_dir)[0]["train_loss"]  # other initial weights
    assert TrainConfig.load(b.run_dir / "config.json").data_seed == 0


def test_dataloader_batches_run_the_teacher_live(cifar_subset_dir: Path, cache: Path, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor()])
    train = DataLoader(datasets.ImageFolder(str(cifar_subset_dir / "train"), tf), batch_size=50)
    test = DataLoader(datasets.ImageFolder(str(cifar_subset_dir / "test"), tf), batch_size=50)
    student = students.create(STUDENT, num_classes=10)
    summary = fit(student, train, test, teacher=_teacher(), config=TrainConfig(epochs=1, device="cpu"),
                  out=tmp_path / "loader")
    assert summary.extra["teacher_outputs"] == {"replayed": 0, "recorded": 0, "live": 1}
    assert not cache.exists()


def test_the_size_limit_evicts_the_least_recently_used_entries(data, cache: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    _fit(data, tmp_path / "a", epochs=1, crop_padding=1)
    _fit(data, tmp_path / "b", epochs=1, crop_padding=2)
    first, second = _entries(cache)
    old = min((first, second), key=lambda p: (p / "key.json").stat().st_mtime)
    os.utime(old / "key.json", (1, 1))
    size = sum(f.stat().st_size for f in first.rglob("*"))
    monkeypatch.setenv("DISTILL_TEACHER_CACHE_GB", str(2.5 * size / 2**30))  # room for two entries, not three
    _fit(data, tmp_path / "c", epochs=1, crop_padding=3)
    assert old not in _entries(cache) and len(_entries(cache)) == 2
    monkeypatch.setenv("DISTILL_TEACHER_CACHE_GB", "0")  # no room at all: the run trains, nothing is recorded
    tiny = _fit(data, tmp_path / "d", epochs=1, crop_padding=0)
    assert _modes(tiny.run_dir) == ["live"] and tiny.complete
    assert evict(cache, 0) and _entries(cache) == []


def test_a_bad_size_limit_is_one_clear_line(capsys, cifar_subset_dir: Path, cache: Path, tmp_path: Path,
                                            monkeypatch) -> None:
    from cli_helpers import assert_one_line_error

    monkeypatch.setenv("DISTILL_TEACHER_CACHE_GB", "lots")
    code, _, err = invoke(main, capsys, "run", "--teacher", TEACHER, "--student", STUDENT, "--data", cifar_subset_dir,
                          "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "DISTILL_TEACHER_CACHE_GB='lots' is not a size in GB")
    assert not (tmp_path / "run").exists()  # refused before the run folder was written


def test_the_plan_says_what_is_cached_and_dry_run_writes_nothing(capsys, cifar_subset_dir: Path, cache: Path,
                                                                  tmp_path: Path) -> None:
    teacher_run = tmp_path / "teacher"
    common = ["--data", cifar_subset_dir, "--batch-size", "50", "--device", "cpu"]
    assert main([str(a) for a in ["teacher", "--teacher", TEACHER, "--epochs", "1", *common, "--out", teacher_run]]) == 0
    run = ["run", "--teacher", TEACHER, "--teacher-ckpt", teacher_run, "--student", STUDENT, *common]
    code, out, _ = invoke(main, capsys, *run, "--epochs", "2", "--dry-run")
    assert code == 0 and "teacher forward live, its logits recorded for all 2 epochs" in out
    assert not cache.exists()
    code, out, err = invoke(main, capsys, *run, "--epochs", "2", "--out", tmp_path / "first")
    assert code == 0, err
    code, out, _ = invoke(main, capsys, *run, "--epochs", "3", "--dry-run")
    assert code == 0 and "replayed from the cache for 2 of 3 epochs" in out and "the other 1 recorded" in out
    assert "saves about" in out and "replayed in 2" in out
    code, out, _ = invoke(main, capsys, *run, "--epochs", "3", "--teacher-cache", "off", "--dry-run")
    assert code == 0 and "teacher forward live on every step (--teacher-cache off)" in out
    code, out, _ = invoke(main, capsys, *run, "--epochs", "3", "--kd-loss", "kd+at", "--dry-run")
    assert code == 0 and "the feature method needs its stage maps" in out


_FILLER = textwrap.dedent("""
    import sys, torch, students
    from distill import TrainConfig, fit
    from distill.data import load_dataset
    data = load_dataset(sys.argv[1])
    torch.manual_seed(123)
    teacher = students.create("r2_11_c8-16", num_classes=10)
    torch.manual_seed(5)
    student = students.create("r1_1_c4", num_classes=10)
    cfg = TrainConfig(epochs=3, batch_size=50, lr=0.05, device="cpu", seed=5, mixup=0.4, cutmix=1.0, kd_weight=0.9)
    fit(student, data, teacher=teacher, config=cfg, out=sys.argv[2])
""")


@pytest.mark.slow
def test_two_runs_filling_one_entry_at_once_leave_it_whole(cifar_subset_dir: Path, cache: Path, tmp_path: Path,
                                                           data) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _FILLER, str(cifar_subset_dir), str(tmp_path / name)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in ("p1", "p2")]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()[-2000:]
    [entry] = _entries(cache)
    assert sorted(p.name for p in entry.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt", "key.json"]
    for run in ("p1", "p2"):  # each epoch recorded by one or both, or replayed when the other was first
        assert set(_modes(tmp_path / run)) <= {"recorded", "replayed"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fillers' numerics
    try:
        torch.manual_seed(5)
        student = students.create(STUDENT, num_classes=10)
        replayed = fit(student, data, teacher=_teacher(), config=_cfg(epochs=3), out=tmp_path / "p3")
    finally:
        torch.set_num_threads(threads)
    assert _modes(replayed.run_dir) == ["replayed"] * 3
    _assert_identical(tmp_path / "p1", replayed.run_dir)
    _assert_identical(tmp_path / "p1", tmp_path / "p2")
