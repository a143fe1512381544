"""The run folder: its file names, the per-epoch metrics, checkpoints and the typed :class:`Summary`.

Every command that writes or reads a run goes through this module, so the layout is written down once::

    config.json    the TrainConfig that ran (feed it back: ``distill run --config run/config.json``)
    metrics.jsonl  one JSON record per finished epoch; metrics.csv holds the same rows as a table
    last.pt        the latest epoch: weights, optimizer, EMA and RNG state, to resume exactly
    best.pt        the weights of the epoch with the best test top-1
    summary.json   the :class:`Summary` of the run, rewritten when it ends (or stops)
    prune.json     written by ``prune`` beside a pruned student's fine-tuning run
    .lock          held (``flock``) by the one process writing the run; released when it ends or dies

A folder "holds a run" once it has ``last.pt``. One with ``config.json`` but no checkpoint (killed or
stopped before its first epoch ended) is no dead end: ``--resume`` starts it again from its saved
settings, and a new run may take the same folder. Only one process writes a run folder at a time: a
second one is refused while the first holds the lock, and the kernel releases it when the holder dies.

``compare``, ``eval``, ``export``, ``prune`` and the benchmarks read runs with :func:`read_summary`,
:func:`read_metrics` and these constants; none of them needs the training engine.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from students.checkpoint import CheckpointError, load_file, save_checkpoint
from students.common.errors import UserError
from students.common.files import atomic_write_text

from .config import TrainConfig

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded against a second writer there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "METRICS_CSV", "SUMMARY_FILE", "LAST_CKPT", "BEST_CKPT", "PRUNE_RECORD",
    "RunError", "FolderBusy", "Summary", "RunDir", "read_metrics", "read_summary", "atomic_write_json", "is_complete",
    "find_checkpoint", "LOCK_FILE",
]

_logger = logging.getLogger(__name__)

CONFIG_FILE, METRICS_FILE, METRICS_CSV, SUMMARY_FILE = "config.json", "metrics.jsonl", "metrics.csv", "summary.json"
LAST_CKPT, BEST_CKPT = "last.pt", "best.pt"
PRUNE_RECORD = "prune.json"  # written by `prune` beside a pruned student's fine-tuning run
LOCK_FILE = ".lock"  # flock-ed by the process writing the run
# What a run writes as it trains; removed when a run that never reached its first checkpoint starts again.
_PROGRESS_FILES = (METRICS_FILE, METRICS_CSV, SUMMARY_FILE, BEST_CKPT)


class RunError(UserError):
    """A run directory that cannot be created, resumed or read."""


class FolderBusy(RunError):
    """Another process holds the run folder's lock (it is training into it right now)."""


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically: readers see the old file or the whole new one."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@dataclass
class Summary:
    """What a finished (or stopped) run reports; saved as ``summary.json``. Accuracies are percent.

    Reads like a dict too (``summary["top1_last"]``, ``summary.get("pruned")``), so code written against
    the JSON keeps working. Keys this class does not name (``pruned``, ``latency``, ...) live in ``extra``.
    """

    kind: str  # "run" or "teacher"
    complete: bool  # every configured epoch finished
    epochs_done: int
    epochs: int
    model: str  # student spec, teacher name, or a custom module's class name
    arch: dict[str, Any]  # how to rebuild the model (family "student", "timm" or "custom")
    num_params: int
    macs: int | None  # multiply-adds per image (fvcore's count); None where it could not be counted
    flops: int | None  # 2 x macs
    top1_last: float | None  # percent, last evaluated epoch
    top1_best: float | None
    top1_ema: float | None
    top1_tta: float | None  # flip test-time augmentation, at the end of a complete run
    eval_set: str
    student: str | None = None
    top1_unit: str = "percent"
    teacher: str | None = None
    teacher_top1: float | None = None  # percent, on the same evaluation set
    kd: dict[str, Any] | None = None  # {"loss", "temperature", "kd_weight", "ce_weight"}
    mixing: dict[str, Any] | None = None
    train_img_s: float | None = None  # median over epochs
    wall_s: float = 0.0  # seconds, all sessions of the run
    device: str = ""
    torch: str = ""
    git_commit: str = "unknown"
    data: str = ""
    train_images: int = 0
    test_images: int = 0
    finished_at: str = ""
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # keys not named above: pruned, latency, classes, ...
    run_dir: Path | None = field(default=None, compare=False)  # where it was read from or written; not saved

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _KEY_ORDER}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Summary":
        """From ``summary.json`` contents; keys not named here go to ``extra``, old ``kd.alpha`` to ``kd_weight``."""
        known = {f.name for f in fields(cls)} - {"extra", "run_dir"}
        values = {k: v for k, v in data.items() if k in known}
        kd = values.get("kd")
        if isinstance(kd, dict) and "alpha" in kd and "kd_weight" not in kd:
            values["kd"] = {("kd_weight" if k == "alpha" else k): v for k, v in kd.items()}
        for name in ("kind", "complete", "epochs_done", "epochs", "model", "arch", "num_params", "macs", "flops",
                     "top1_last", "top1_best", "top1_ema", "top1_tta", "eval_set"):
            values.setdefault(name, None)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def __getitem__(self, key: str) -> Any:
        if key in _KEY_SET:
            return getattr(self, key)
        return self.extra[key]

    def __contains__(self, key: object) -> bool:
        return key in _KEY_SET or key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


_KEY_ORDER = (
    "kind", "complete", "epochs_done", "epochs", "model", "arch", "student", "num_params", "macs", "flops",
    "top1_last", "top1_best", "top1_ema", "top1_tta", "top1_unit", "eval_set", "teacher", "teacher_top1", "kd",
    "mixing", "train_img_s", "wall_s", "device", "torch", "git_commit", "data", "train_images", "test_images",
    "finished_at", "world_size",
)
_KEY_SET = frozenset(_KEY_ORDER)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (empty when it has none yet); :class:`RunError` naming a damaged line."""
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunError(f"{path} line {number} is damaged ({err.msg}); delete the line or the file "
                           "(--resume rebuilds it from last.pt)") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise RunError(f"{path} line {number} is not an epoch record; delete the line or the file "
                           "(--resume rebuilds it from last.pt)")
        records.append(record)
    return records


def _metrics_csv(records: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def read_summary(run_dir: str | Path) -> Summary:
    """The :class:`Summary` of a run; :class:`RunError` when there is none or it cannot be read."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise RunError(f"corrupt {path} (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise RunError(f"corrupt {path} (not a JSON object)")
    summary = Summary.from_dict(data)
    summary.run_dir = Path(run_dir)
    return summary


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best (else last) checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST_CKPT, LAST_CKPT):
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path} holds no checkpoint ({BEST_CKPT} or {LAST_CKPT}); pass a run directory or .pt file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def update_summary(run_dir: str | Path, key: str, value: Callable[[Any], Any], what: str) -> Path:
    """Set ``key`` of the run's ``summary.json`` to ``value(its current value or None)``, atomically; a missing
    or damaged summary is a :class:`UserError` saying that ``what`` was not recorded. Figures measured after
    training (latency, int8) live there beside what training wrote."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot update {path}: {err}; {what} not recorded") from None
    if not isinstance(summary, dict):
        raise UserError(f"cannot update {path}: not a JSON object; {what} not recorded")
    summary[key] = value(summary.get(key))
    return atomic_write_json(path, summary)


SWEEP_FILE = "sweep.json"  # a sweep's folder: {"students": [...], "config": {...}}, one run folder per student


def checkpoint_model_name(path: str | Path) -> str:
    """The model a checkpoint (or a run folder's best one) holds, as ``--teacher`` names it: the student
    spec or timm name its architecture records. :class:`CheckpointError` for a file that records none."""
    ckpt_path = find_checkpoint(path)
    arch = load_file(ckpt_path).get("arch")
    name = (arch.get("name") or arch.get("spec")) if isinstance(arch, dict) else None
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{ckpt_path} does not record its model's name; pass --teacher NAME with it")
    return name


def is_complete(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a readable summary of a run that finished every epoch."""
    try:
        return bool(read_summary(run_dir).complete)
    except RunError:
        return False


class RunDir:
    """One run folder: creating it, resuming from it, and writing its records as training goes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._resumed_from: tuple[int, int, int] | None = None  # (inode, mtime ns, size) of the last.pt read

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def holds_run(self) -> bool:
        """True once the run has a checkpoint: something a new run in this folder would destroy."""
        return (self.path / LAST_CKPT).exists()

    def check_new(self, flag: str = "--out") -> None:
        """Refuse a folder that already holds a run, before any work is done (nothing is overwritten).

        A folder with settings but no checkpoint (the run stopped before its first epoch ended) is accepted:
        nothing in it is worth keeping, and :meth:`create` starts it afresh.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{flag} {self.path} exists and is not a directory")
        if self.holds_run():
            raise RunError(f"{self.path} already holds a run; continue it with --resume {self.path} or choose "
                           f"another {flag}")

    def create(self, cfg: TrainConfig) -> bool:
        """Create the folder (and parents) and write ``config.json``; refuses a folder holding a run.

        A folder left by a run that never reached its first checkpoint is taken over: its metrics, summary
        and ``best.pt`` are removed first. Returns True when that happened. Call it only once every setting
        has been checked (the engine does, after building the run), so a refused run leaves nothing behind.
        """
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create run directory {self.path}: {err.strerror}") from None
        with self.writing():
            self.check_new()  # again under the lock: another process may have written a checkpoint meanwhile
            restarted = (self.path / CONFIG_FILE).exists()
            if restarted:
                self.clear_progress()
            cfg.save(self.path / CONFIG_FILE)
        return restarted

    def clear_progress(self) -> None:
        """Remove what a run writes as it trains (metrics, summary, ``best.pt``); settings and prune records stay."""
        for name in _PROGRESS_FILES:
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError as err:
                raise RunError(f"cannot remove {self.path / name} to start the run again: {err.strerror}") from None

    def load_resume(self) -> tuple[TrainConfig, dict[str, Any] | None]:
        """The config and ``last.pt`` of an interrupted run; the checkpoint is None when the run never wrote one.

        :class:`RunError` when the folder is no run, or another process is writing it right now. A run
        without a checkpoint (killed, or stopped by a bad number, before its first epoch ended) is started
        again from its saved settings by the engine (:func:`distill.engine.train` with ``resume=None``).
        """
        if not self.path.is_dir():
            raise RunError(f"--resume {self.path}: no such run directory")
        if not (self.path / CONFIG_FILE).exists():
            raise RunError(f"--resume {self.path}: not a run directory (no {CONFIG_FILE})")
        self._check_unlocked()  # fail now, not after loading data and models, when another process holds it
        cfg = TrainConfig.load(self.path / CONFIG_FILE)
        last = self.path / LAST_CKPT
        if not last.exists():
            self._resumed_from = None
            return cfg, None
        stat = last.stat()
        self._resumed_from = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return cfg, load_file(last)

    def check_resume_current(self) -> None:
        """Under the lock: refuse when ``last.pt`` changed since :meth:`load_resume` read it (another process
        resumed and wrote the run in between), instead of training on from an older epoch."""
        if self._resumed_from is None:
            return
        try:
            stat = (self.path / LAST_CKPT).stat()
            now = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            now = None
        if now != self._resumed_from:
            raise RunError(f"{self.path / LAST_CKPT} was rewritten by another process after this one read it; "
                           f"run --resume {self.path} again to continue from the newer checkpoint")

    # ------------------------------------------------------------------------------------- one writer

    @contextlib.contextmanager
    def writing(self, enabled: bool = True) -> Iterator[None]:
        """Hold the folder's lock for the block (re-entrant); :class:`RunError` when another process holds it.

        The lock is an OS lock (``flock``) on ``.lock`` in the folder, which is created if needed: the
        kernel releases it when the holder exits or is killed, so a dead run never blocks its resume.
        ``enabled=False`` (data-parallel ranks other than 0, which write nothing) does nothing.
        """
        if not enabled:
            yield
            return
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _check_unlocked(self) -> None:
        """:class:`FolderBusy` when another process holds the lock. A shared, momentary look that creates and
        removes nothing, so every rank of a data-parallel resume may look at once."""
        holder = self.holder()
        if holder is not None:
            raise self._busy(holder)

    def holder(self) -> str | None:
        """The pid (as recorded) of another process writing this folder now, or None when nobody is."""
        if fcntl is None or self._lock_depth:
            return None
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return self._pid_in(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _pid_in(fd: int) -> str:
        try:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def _busy(self, holder: str) -> "FolderBusy":
        return FolderBusy(f"{self.path} is being written by another process (pid {holder}); wait for it to end or "
                          f"stop it, then continue with --resume {self.path}")

    def _held_by(self, fd: int) -> "FolderBusy":
        return self._busy(self._pid_in(fd))

    def _acquire(self) -> None:
        if self._lock_depth:
            self._lock_depth += 1
            return
        if fcntl is None:
            self._lock_depth = 1
            return
        lock = self.path / LOCK_FILE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for _ in range(10):
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    error = self._held_by(fd)
                    os.close(fd)
                    raise error from None
                except BaseException:
                    os.close(fd)
                    raise
                # The holder removes the file as it lets go: make sure we locked the file that is there now.
                try:
                    same = os.fstat(fd).st_ino == os.stat(lock).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            else:
                raise RunError(f"could not lock {lock}: another process keeps replacing it")
            try:  # who holds it, for the message a second process gets; a full disk must not stop the run here
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
        except OSError as err:
            raise RunError(f"cannot lock the run folder {self.path}: {err.strerror or err}") from None
        self._lock_fd, self._lock_depth = fd, 1

    def _release(self) -> None:
        self._lock_depth -= 1
        if self._lock_depth or self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        try:
            os.unlink(self.path / LOCK_FILE)  # while still holding it (see _acquire)
        except OSError:
            pass
        os.close(fd)

    def config(self) -> TrainConfig:
        return TrainConfig.load(self.path / CONFIG_FILE)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """All records so far, as ``metrics.jsonl`` and ``metrics.csv`` (each replaced atomically)."""
        atomic_write_text(self.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_text(self.path / METRICS_CSV, _metrics_csv(records))

    def save_best(self, model: Any, *, arch: dict[str, Any], meta: dict[str, Any]) -> None:
        """``best.pt``: the weights of the best epoch; written after ``last.pt``, so best never exists without last."""
        save_checkpoint(self.path / BEST_CKPT, model, arch=arch, meta=meta)

    def save_last(self, model: Any, *, arch: dict[str, Any], meta: dict[str, Any], **state: Any) -> None:
        """``last.pt``: weights plus the state to resume exactly (optimizer, RNG, EMA)."""
        save_checkpoint(self.path / LAST_CKPT, model, arch=arch, meta=meta, **state)

    def write_summary(self, summary: Summary) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary.to_dict())

    def read_summary(self) -> Summary:
        return read_summary(self.path)

    def tensorboard_writer(self) -> Any | None:
        """A TensorBoard ``SummaryWriter`` on this folder, or None when tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            return None
        return SummaryWriter(log_dir=str(self.path))

    def prune_record(self, full: bool = False) -> dict[str, Any] | None:
        """What ``prune`` recorded beside this run (as the summary embeds it), or None for an ordinary run.

        ``full`` keeps ``finetune_config`` too: the fine-tuning settings (they are config.json's once it runs).
        """
        path = self.path / PRUNE_RECORD
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
        if not isinstance(record, dict):
            raise RunError(f"corrupt {path} (not a JSON object)")
        return record if full else {k: v for k, v in record.items() if k != "finetune_config"}


def epoch_line(record: dict[str, Any]) -> list[str]:
    """:func:`epoch_summary` plus the epoch's speed and wall time: a progress printer's whole line."""
    return epoch_summary(record) + [f"{record['train_img_s']:,.0f} img/s", f"{record['seconds']:.1f} s"]


def epoch_summary(record: dict[str, Any]) -> list[str]:
    """The parts of one epoch's line that every progress printer shows: epoch, loss and top-1s (percent)."""
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.3f}", f"train {record['train_top1']:.1f}%"]
    if "test_top1" in record:
        parts.append(f"test {record['test_top1']:.2f}%")
    if "ema_top1" in record:
        parts.append(f"ema {record['ema_top1']:.2f}%")
    return parts
