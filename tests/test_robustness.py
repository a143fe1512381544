"""No dead ends and no silent wrong results (issue 12): runs survive kills, concurrent resumes, damaged
metrics, divergence and full disks, on the CPU with tiny nets and real CIFAR-10 images.

Kills are real: a ``distill`` process is started with a hook that parks it at the moment it would write a
checkpoint, and the test sends it SIGKILL from outside.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_one_line_error, invoke
from distill.cli import main
from distill.config import TrainConfig
from distill.rundir import CONFIG_FILE, LAST_CKPT, LOCK_FILE, RunDir, RunError, read_metrics

TINY = "r1_1_c8"
FAST = ["--epochs", "2", "--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--no-ema", "--no-tta"]

# Run the distill CLI, but park the process where it would write its N-th last.pt (or best.pt), after touching
# a marker file: the test then kills it there with a real SIGKILL.
_PARKED_DRIVER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even where the test runs in the background
import distill.rundir as rundir
calls = {"n": 0}
method = os.environ.get("PARK_IN", "save_last")
real = getattr(rundir.RunDir, method)
def parked(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] >= int(os.environ["PARK_AT_SAVE"]):
        open(os.environ["PARK_MARKER"], "w").close()
        time.sleep(600)
    return real(self, *args, **kwargs)
setattr(rundir.RunDir, method, parked)
if os.environ.get("PARK_CLI") == "prune":
    from prune.cli import main
else:
    from distill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(capsys, *args) -> tuple[int, str, str]:
    return invoke(main, capsys, *args)


def _start_parked(tmp_path: Path, args: list, park_at_save: int, park_in: str = "save_last",
                  cli: str = "distill") -> tuple[subprocess.Popen, Path]:
    """Start ``CLI ARGS`` in a child process that stops at its ``park_at_save``-th call of ``RunDir.park_in``."""
    driver = tmp_path / "parked_driver.py"
    driver.write_text(_PARKED_DRIVER)
    marker = tmp_path / f"parked-{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PARK_AT_SAVE": str(park_at_save), "PARK_MARKER": str(marker),
           "PARK_IN": park_in, "PARK_CLI": cli}
    log = marker.with_suffix(".log")
    with log.open("wb") as sink:  # a file, not a pipe: a chatty child never blocks on a full pipe
        proc = subprocess.Popen([sys.executable, str(driver), *map(str, args)], env=env, stdout=sink,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended ({proc.returncode}) before parking:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the child never reached its checkpoint write")
        time.sleep(0.1)
    return proc, marker


def _sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------ 1. no run folder is a dead end


@pytest.mark.parametrize("flags, fragment", [
    (["--batch-size", "1000"], "larger than the 300 training images"),
    (["--train-subset", "5", "--batch-size", "2"], "without a training image"),
    (["--train-subset", "0"], "--train-subset must be at least 1"),
    (["--cutout", "40"], "--cutout 40"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--lr", "inf"], "--lr must be a finite number"),
])
def test_refused_settings_write_nothing(capsys, cifar_subset_dir: Path, tmp_path: Path, flags, fragment) -> None:
    out = tmp_path / "refused"
    code, _, err = _cli(capsys, "run", "--student", TINY, "--data", cifar_subset_dir, *FAST, *flags, "--out", out)
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_empty_data_is_refused_not_read_from_the_working_folder(capsys, tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "run", "--student", TINY, "--data", "", *FAST, "--out", tmp_path / "x")
    assert_one_line_error(code, err, "--data is empty")
    assert not (tmp_path / "x").exists()


def test_killed_before_first_checkpoint_resumes_and_restarts(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--out", out]
    proc, _ = _start_parked(tmp_path, args, park_at_save=1)
    _sigkill(proc)  # a real SIGKILL while epoch 1 was being saved: settings written, no checkpoint
    assert (out / CONFIG_FILE).exists() and not (out / LAST_CKPT).exists()

    code, stdout, err = _cli(capsys, "run", "--resume", out)
    assert code == 0, err
    assert "starting it again" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["epochs_done"] == 2 and _epochs(out) == [1, 2]
    assert not (out / LOCK_FILE).exists()  # released (and removed) when the run ended

    # The same with a plain re-run on the same --out (new settings are welcome: nothing was saved).
    proc, _ = _start_parked(tmp_path, [*args[:-2], "--out", tmp_path / "again"], park_at_save=1)
    _sigkill(proc)
    code, stdout, err = _cli(capsys, *args[:-2], "--epochs", "1", "--out", tmp_path / "again")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["epochs"] == 1
    assert _epochs(tmp_path / "again") == [1]
    # Once it holds a checkpoint, the folder is refused to a new run, and nothing in it changes.
    before = (tmp_path / "again" / LAST_CKPT).read_bytes()
    code, _, err = _cli(capsys, *args[:-2], "--out", tmp_path / "again")
    assert_one_line_error(code, err, "already holds a run")
    assert (tmp_path / "again" / LAST_CKPT).read_bytes() == before


def test_prune_killed_before_fine_tuning_resumes(capsys, finished_run: Path, tmp_path: Path) -> None:
    from prune.cli import main as prune_main

    out = tmp_path / "pruned"
    args = [finished_run, "--ratio", "0.25", "--finetune-epochs", "1", "--out", out]
    proc, _ = _start_parked(tmp_path, args, park_at_save=1, park_in="create", cli="prune")
    _sigkill(proc)  # pruned and recorded, fine-tuning not started
    assert (out / "prune.json").exists() and (out / "pruned.pt").exists() and not (out / CONFIG_FILE).exists()
    record = (out / "prune.json").read_bytes()
    code, _, err = invoke(prune_main, capsys, *args)  # the same command again is guided to --resume
    assert_one_line_error(code, err, f"continue it with prune --resume {out}")
    assert (out / "prune.json").read_bytes() == record
    code, _, err = invoke(prune_main, capsys, "--resume", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["epochs_done"] == 1 and "pruned" in summary
    assert "finetune_config" not in summary["pruned"]  # the settings are config.json's, not repeated there
    assert TrainConfig.load(out / CONFIG_FILE).init_ckpt == str(out / "pruned.pt")


def test_folder_without_checkpoint_is_taken_over(tmp_path: Path) -> None:
    folder = RunDir(tmp_path / "run")
    assert folder.create(TrainConfig(epochs=3)) is False
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (folder / "best.pt").write_bytes(b"stale")
    cfg, ckpt = folder.load_resume()
    assert cfg.epochs == 3 and ckpt is None  # the engine starts it again from its settings
    assert folder.create(TrainConfig(epochs=5)) is True  # taken over: stale progress removed
    assert not (folder / "metrics.jsonl").exists() and not (folder / "best.pt").exists()
    assert TrainConfig.load(folder / CONFIG_FILE).epochs == 5
    (folder / LAST_CKPT).write_bytes(b"x")
    with pytest.raises(RunError, match="already holds a run"):
        folder.create(TrainConfig())


def test_nan_in_the_first_epoch_leaves_a_restartable_folder(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    import distill.engine as engine

    real = engine.build_train_loss

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)

        def forward(student, teacher, targets, **extra):
            parts = type(loss).forward(loss, student, teacher, targets, **extra)
            parts["loss"] = parts["loss"] * float("nan")
            return parts

        loss.forward = forward
        return loss

    out = tmp_path / "nan"
    args = ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--out", out]
    with monkeypatch.context() as patch:
        patch.setattr(engine, "build_train_loss", poisoned)
        code, _, err = _cli(capsys, *args)
    assert_one_line_error(code, err, "loss became nan")
    assert "no checkpoint" in err and not (out / LAST_CKPT).exists()
    code, stdout, err = _cli(capsys, "run", "--resume", out)  # e.g. after fixing the data: starts again
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["complete"] and _epochs(out) == [1, 2]


# ------------------------------------------------- 2. damaged or foreign state is refused; one writer


def test_foreign_last_pt_and_damaged_metrics(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    base = ["--data", cifar_subset_dir, *FAST, "--stop-after", "1"]
    assert _cli(capsys, "run", "--student", TINY, *base, "--out", tmp_path / "a")[0] == 0
    assert _cli(capsys, "run", "--student", "r1_1_c4", *base, "--out", tmp_path / "b")[0] == 0
    own = (tmp_path / "a" / LAST_CKPT).read_bytes()

    # A last.pt of another architecture (a valid, sealed checkpoint): one line, and nothing is trained.
    (tmp_path / "a" / LAST_CKPT).write_bytes((tmp_path / "b" / LAST_CKPT).read_bytes())
    code, _, err = _cli(capsys, "run", "--resume", tmp_path / "a")
    assert_one_line_error(code, err, "another architecture")
    assert (tmp_path / "a" / LAST_CKPT).read_bytes() == (tmp_path / "b" / LAST_CKPT).read_bytes()
    assert not (tmp_path / "a" / LOCK_FILE).exists()

    # A truncated metrics.jsonl: readers get one line naming it; --resume rebuilds it from last.pt.
    (tmp_path / "a" / LAST_CKPT).write_bytes(own)
    metrics = tmp_path / "a" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:25])
    with pytest.raises(RunError, match="metrics.jsonl line 1 is damaged"):
        read_metrics(tmp_path / "a")
    code, _, err = _cli(capsys, "run", "--resume", tmp_path / "a")
    assert code == 0, err
    assert _epochs(tmp_path / "a") == [1, 2] and json.loads((tmp_path / "a" / "summary.json").read_text())["complete"]


def test_second_resume_is_refused_while_the_first_runs(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--epochs", "3", "--out", out]
    assert _cli(capsys, *args, "--stop-after", "1")[0] == 0
    first, _ = _start_parked(tmp_path, ["run", "--resume", out], park_at_save=1)  # mid-run, holding the folder
    try:
        before = (out / LAST_CKPT).read_bytes()
        code, _, err = _cli(capsys, "run", "--resume", out)
        assert_one_line_error(code, err, f"being written by another process (pid {first.pid})")
        code, _, err = _cli(capsys, *args)  # a new run into the same folder: refused too
        assert_one_line_error(code, err, "already holds a run")
        assert (out / LAST_CKPT).read_bytes() == before
    finally:
        _sigkill(first)  # the kernel releases the lock of a dead process
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert code == 0, err
    assert _epochs(out) == [1, 2, 3] and not (out / LOCK_FILE).exists()


# --------------------------------------------------- 3. divergence is caught at every epoch end


@pytest.mark.parametrize("poison, fragment", [
    ("test_loss", "the test loss of epoch 2 is inf"),
    ("weights", "weights became NaN or infinite in epoch 2"),
])
def test_divergence_at_an_epoch_end_keeps_the_last_good_epoch(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                               monkeypatch, poison: str, fragment: str) -> None:
    import distill.engine as engine

    real_train, real_eval = engine._train_epoch, engine._evaluate_epoch

    def train_epoch(members, epoch, reporter, source):  # the epoch trains normally; then the weights go bad
        records = real_train(members, epoch, reporter, source)
        if epoch == 1 and poison == "weights":
            with torch.no_grad():
                next(members[0].parts.model.parameters())[0].fill_(float("nan"))
        return records

    def evaluate_epoch(parts):
        out = real_eval(parts)
        if poison == "test_loss" and len(calls) == 1:
            out["test_loss"] = float("inf")
        calls.append(1)
        return out

    calls: list[int] = []
    monkeypatch.setattr(engine, "_train_epoch", train_epoch)
    monkeypatch.setattr(engine, "_evaluate_epoch", evaluate_epoch)
    out = tmp_path / "diverged"
    code, _, err = _cli(capsys, "run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--out", out)
    assert_one_line_error(code, err, fragment)
    assert f"{out / LAST_CKPT} keeps epoch 1" in err
    ckpt = torch.load(out / LAST_CKPT, weights_only=True)
    assert ckpt["meta"]["epoch"] == 1 and torch.load(out / "best.pt", weights_only=True)["meta"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["epochs_done"] == 1 and fragment in summary["stopped"]
    assert _epochs(out) == [1]


def test_last_pt_is_written_before_best_pt(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "order"
    proc, _ = _start_parked(tmp_path, ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--out", out],
                            park_at_save=1, park_in="save_best")
    _sigkill(proc)  # killed between the two writes of epoch 1 (which is the best so far)
    assert (out / LAST_CKPT).exists() and not (out / "best.pt").exists()
    code, stdout, err = _cli(capsys, "run", "--resume", out)
    assert code == 0, err
    assert "rewritten from last.pt" in stdout
    assert (out / "best.pt").exists() and _epochs(out) == [1, 2]


def _weights(path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_every_writes_last_pt_less_often_and_the_same_files(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """``--save-every 2`` over 3 epochs writes last.pt after epochs 2 and 3 only; the best epoch (made the
    first here) waits on the CPU and reaches best.pt, so the files equal those of a run that saved every epoch."""
    import distill.engine as engine
    import distill.rundir as rundir

    real_eval, real_save = engine._evaluate_epoch, rundir.RunDir.save_last
    saved: list[int] = []
    evaluated: list[int] = []

    def evaluate_epoch(parts):  # epoch 1 is the best, whatever the tiny net learns
        out = real_eval(parts)
        out["test_top1"] = 90.0 - 10 * len(evaluated)
        evaluated.append(1)
        return out

    def save_last(self, *args, **kwargs):
        saved.append(kwargs["meta"]["epoch"])
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(engine, "_evaluate_epoch", evaluate_epoch)
    monkeypatch.setattr(rundir.RunDir, "save_last", save_last)
    runs = {}
    for every in (1, 2):
        saved.clear()
        evaluated.clear()
        runs[every] = tmp_path / f"every{every}"
        code, _, err = _cli(capsys, "run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--epochs", "3",
                            "--save-every", str(every), "--out", runs[every])
        assert code == 0, err
        assert saved == ([1, 2, 3] if every == 1 else [2, 3])
    one, two = runs[1], runs[2]
    assert torch.load(two / "best.pt", weights_only=True)["meta"]["epoch"] == 1
    assert _same(_weights(one / "best.pt"), _weights(two / "best.pt"))
    assert _same(_weights(one / LAST_CKPT), _weights(two / LAST_CKPT))
    assert "best_state_dict" not in torch.load(two / LAST_CKPT, weights_only=True)  # best.pt holds it since epoch 2
    assert _epochs(two) == [1, 2, 3]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["complete"] and summary["top1_best"] == 90.0


def test_save_every_keeps_a_waiting_best_epoch_through_a_kill(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    """Killed between last.pt and best.pt of epoch 2 under ``--save-every 2``: last.pt carries the best
    epoch's weights, so the resume rewrites best.pt from it whichever epoch was the best."""
    out = tmp_path / "every2"
    args = ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--epochs", "3", "--save-every", "2",
            "--out", out]
    proc, _ = _start_parked(tmp_path, args, park_at_save=1, park_in="save_best")
    _sigkill(proc)
    last = torch.load(out / LAST_CKPT, weights_only=True)
    assert last["meta"]["epoch"] == 2 and not (out / "best.pt").exists()
    best_epoch = last["meta"]["best_epoch"]
    held = last["best_state_dict"] if best_epoch == 1 else last["state_dict"]
    code, stdout, err = _cli(capsys, "run", "--resume", out, "--stop-after", "0")
    assert code == 0, err
    assert "rewritten from last.pt" in stdout
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["meta"]["epoch"] == best_epoch and _same(best["state_dict"], held)


def test_stop_after_writes_last_pt_whatever_save_every_says(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    code, stdout, err = _cli(capsys, "run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--epochs", "3",
                             "--save-every", "3", "--stop-after", "1", "--out", out)
    assert code == 0, err
    assert torch.load(out / LAST_CKPT, weights_only=True)["meta"]["epoch"] == 1
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert code == 0, err
    assert _epochs(out) == [1, 2, 3]


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_interrupt_and_terminate_print_the_command_that_continues(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                                   sig, code: int, said: str) -> None:
    out = tmp_path / "stopped"
    proc, marker = _start_parked(tmp_path, ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--out", out],
                                 park_at_save=2)  # parked inside training, epoch 2's checkpoint write
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    log = marker.with_suffix(".log").read_text()
    assert f"{said}; continue with: distill run --resume {out}" in log and "Traceback" not in log
    assert torch.load(out / LAST_CKPT, weights_only=True)["meta"]["epoch"] == 1
    code, _, err = _cli(capsys, "run", "--resume", out)  # the command it printed
    assert code == 0, err
    assert _epochs(out) == [1, 2]


# ------------------------------------------- 4. a full or read-only disk: one line, no partial file


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder)``: from now on every ``os.write`` into a file under ``folder`` fails with ENOSPC,
    as on a full file system (files elsewhere, and the terminal, are written as usual)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a write goes to")
    real_write = os.write
    folders: list[str] = []

    def write(fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if any(target.startswith(folder) for folder in folders):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return lambda folder: folders.append(str(Path(folder).resolve()) + os.sep)


def _leftovers(folder: Path) -> list[str]:
    """Partial or temporary files: anything but what a run or an export writes whole."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or
                                                                         p.stat().st_size == 0))


def test_full_disk_while_training_keeps_the_run_resumable(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                          full_disk) -> None:
    args = ["run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--epochs", "3"]
    # Full from the start: config.json cannot be written; nothing partial, and the same --out works later.
    full_disk(tmp_path / "fresh")
    code, _, err = _cli(capsys, *args, "--out", tmp_path / "fresh")
    assert_one_line_error(code, err, "no space left on device while writing")
    assert not (tmp_path / "fresh" / CONFIG_FILE).exists() and _leftovers(tmp_path / "fresh") == []

    # Full after epoch 1: the error says the run is intact at epoch 1, and --resume continues it.
    out = tmp_path / "run"
    assert _cli(capsys, *args, "--out", out, "--stop-after", "1")[0] == 0
    full_disk(out)
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert_one_line_error(code, err, "no space left on device while writing")
    assert f"holds epoch 1; free some space, then continue with --resume {out}" in err
    assert torch.load(out / LAST_CKPT, weights_only=True)["meta"]["epoch"] == 1
    assert _leftovers(out) == [] and not (out / LOCK_FILE).exists()


def test_full_disk_after_the_disk_is_freed_the_run_completes(capsys, cifar_subset_dir: Path, tmp_path: Path,
                                                             full_disk) -> None:
    out = tmp_path / "run"
    assert _cli(capsys, "run", "--student", TINY, "--data", cifar_subset_dir, *FAST, "--out", out,
                "--stop-after", "1")[0] == 0
    with pytest.MonkeyPatch.context() as patch:  # full for this one resume only
        real_write = os.write
        patch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
                      if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out.resolve())) else real_write(fd, data))
        code, _, err = _cli(capsys, "run", "--resume", out)
        assert_one_line_error(code, err, "no space left on device")
    code, _, err = _cli(capsys, "run", "--resume", out)
    assert code == 0, err
    assert _epochs(out) == [1, 2] and json.loads((out / "summary.json").read_text())["complete"]


@pytest.fixture(scope="module")
def finished_run(cifar_subset_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robust-runs") / "run"
    assert main(["run", "--student", TINY, "--data", str(cifar_subset_dir), *FAST, "--epochs", "1",
                 "--out", str(out)]) == 0
    return out


def test_exports_plots_and_reports_on_a_full_disk(capsys, cifar_subset_dir: Path, finished_run: Path,
                                                  tmp_path: Path, full_disk) -> None:
    pytest.importorskip("onnxruntime")
    full = tmp_path / "full"
    full.mkdir()
    full_disk(full)
    summary_before = (finished_run / "summary.json").read_text()
    for args in (["export", finished_run, "--torchscript", full / "m.ts"],
                 ["export", finished_run, "--onnx", full / "m.onnx"],
                 ["compare", finished_run, "--plot", full / "runs.png"],
                 ["compare", finished_run, "--csv", full / "runs.csv"],
                 ["eval", finished_run, "--data", cifar_subset_dir, "--device", "cpu", "--report", full / "report"]):
        code, _, err = _cli(capsys, *args)
        assert_one_line_error(code, err, "no space left on device while writing")
        assert [p.name for p in full.rglob("*") if p.is_file()] == [], args  # no partial or empty file
    assert (finished_run / "summary.json").read_text() == summary_before
    # The same commands on a disk with room write whole files.
    code, _, err = _cli(capsys, "export", finished_run, "--torchscript", tmp_path / "m.ts", "--onnx", tmp_path / "m.onnx")
    assert code == 0, err
    assert torch.jit.load(str(tmp_path / "m.ts"))(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def _small_tmpfs(folder: Path, kib: int) -> bool:
    """Mount a ``kib`` KiB tmpfs on ``folder`` where this process may (root in a container); False otherwise."""
    folder.mkdir()
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_torchscript_export_on_a_really_full_filesystem(cifar_subset_dir: Path, finished_run: Path,
                                                        tmp_path: Path) -> None:
    """torch.jit.save streaming into a full file system used to abort the process (an uncaught C++ error)."""
    full = tmp_path / "tmpfs"
    if not _small_tmpfs(full, 64):
        pytest.skip("cannot mount a small tmpfs here (needs root); the patched-write test covers the rest")
    try:
        (full / "filler").write_bytes(b"\0" * 60 * 1024)
        done = subprocess.run([sys.executable, "-m", "distill", "export", str(finished_run), "--torchscript",
                               str(full / "m.ts")], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "no space left on device while writing" in done.stderr
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=False)


# ------------------------------------------------------------- 7. flags that would be ignored; -v anywhere


def test_teacher_weights_with_a_student_spec_teacher_is_refused(capsys, cifar_subset_dir: Path,
                                                                 tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    for command in (["run", "--student", TINY], ["teacher"]):
        code, _, err = _cli(capsys, *command, "--teacher", "r1_1_c8", "--teacher-weights", weights,
                            "--data", cifar_subset_dir, *FAST, "--out", tmp_path / "x")
        assert_one_line_error(code, err, "--teacher-weights loads timm weights, but --teacher r1_1_c8 is a student")
        code, _, err = _cli(capsys, *command, "--teacher", "r1_1_c8", "--teacher-pretrained",
                            "--data", cifar_subset_dir, *FAST, "--out", tmp_path / "x")
        assert_one_line_error(code, err, "--teacher-pretrained loads timm weights")
    assert not (tmp_path / "x").exists()
    TrainConfig(teacher="resnet18", teacher_weights=str(weights))  # a timm teacher takes them


def test_verbose_before_or_after_the_command(capsys, cifar_subset_dir: Path, tmp_path: Path) -> None:
    import logging

    args = ["--student", TINY, "--data", cifar_subset_dir, *FAST, "--epochs", "1"]
    for i, argv in enumerate((["-v", "run", *args], ["run", "-v", *args], ["run", *args, "-v"],
                              ["run", *args, "--verbose"])):
        logging.getLogger().setLevel(logging.INFO)
        code, _, err = _cli(capsys, *argv, "--out", tmp_path / f"v{i}")
        assert code == 0, (argv, err)
        assert logging.getLogger().level == logging.DEBUG, argv
    logging.getLogger().setLevel(logging.INFO)
    code, _, err = _cli(capsys, "run", *args, "--out", tmp_path / "quiet")
    assert code == 0 and logging.getLogger().level == logging.INFO
    assert "verbose" not in json.loads((tmp_path / "v2" / CONFIG_FILE).read_text())


def test_resume_refuses_a_last_pt_rewritten_after_it_was_read(tmp_path: Path) -> None:
    import students

    folder = RunDir(tmp_path / "run")
    folder.create(TrainConfig(student=TINY))
    model = students.create(TINY)
    folder.save_last(model, arch=students.student_arch(model), meta={"epoch": 1})
    _, ckpt = folder.load_resume()
    assert ckpt["meta"]["epoch"] == 1
    with folder.writing():
        folder.check_resume_current()  # unchanged: fine
    other = RunDir(folder.path)  # another process resumed meanwhile and wrote epoch 2
    other.save_last(model, arch=students.student_arch(model), meta={"epoch": 2})
    with folder.writing(), pytest.raises(RunError, match="rewritten by another process"):
        folder.check_resume_current()
    with folder.writing():  # the lock is re-entrant in one process, exclusive across processes
        with folder.writing():
            assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert (folder / LOCK_FILE).exists()
        with pytest.raises(RunError, match=f"being written by another process \\(pid {os.getpid()}\\)"):
            with RunDir(folder.path).writing():  # another open file: refused like another process
                pass
    assert not (folder / LOCK_FILE).exists()
