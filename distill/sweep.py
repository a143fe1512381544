"""Several students trained in one process on one batch stream: ``distill sweep``.

Comparing students is the point of this project, and the teacher's forward pass is a large share of a KD
step's cost on a CPU. A sweep trains its students through the engine's one loop
(:func:`distill.engine.train_many`): each batch is drawn once (shuffle, crops, flips, MixUp/CutMix), the
teacher's outputs for it come once (live, or replayed from the teacher-output cache,
:mod:`distill.teacher_cache`), then every student takes its optimiser step on that same batch. Every student
keeps its own run folder, written exactly as ``distill run`` writes it (``config.json``, ``metrics.jsonl``,
checkpoints, ``summary.json``), so ``distill compare`` reads them.

Why the results equal separate runs with the same seed: a run's randomness is reseeded from (seed, epoch)
at the start of every epoch and drawn only by the data pipeline and the mixer (the students have no
dropout by default and evaluation draws nothing), the initial weights come from ``torch.manual_seed(seed)``
right before each student is built, and FitNets regressors from the seed alone. So each student sees the
very batches, teacher outputs and initial weights it would see alone. (A student whose forward pass draws
random numbers, e.g. a ``_d`` dropout spec, shifts the later draws: its sweep differs from its lone run.)

What is the sweep's own: its folder (``sweep.json``, the students and shared settings, and one run folder per
student), the Python entry point :func:`sweep` (like :func:`distill.fit`), the CLI's :func:`run_sweep` (by
names), and resuming: finished students are skipped and the others resume from their ``last.pt``; students
that stopped at different epochs are caught up one epoch at a time by the loop.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.common.errors import UserError

from . import dist, engine
from .batches import Loaders
from .config import FEATURE_KD_NAMES, TrainConfig
from .data import ImageDataset
from .engine import Models, Reporter, train_many
from .rundir import (CONFIG_FILE, SWEEP_FILE, RunDir, RunError, Summary, atomic_write_json, is_complete,  # noqa: F401
                     read_summary)  # SWEEP_FILE: what `distill sweep --resume` continues

__all__ = ["SWEEP_FILE", "SweepError", "train_many", "sweep", "run_sweep", "read_sweep", "student_dirs"]

_logger = logging.getLogger(__name__)



class SweepError(UserError):
    """An invalid sweep: repeated students, settings that differ between students, an existing sweep."""


def _check_adoptable(folder: RunDir, cfg: TrainConfig, resume: bool) -> None:
    """A student's folder that already holds a run is continued (or kept, when finished) only when that run
    has the sweep's settings: anything else would put another run's result in this sweep's table."""
    recorded = folder.config().to_dict()
    wanted = cfg.to_dict()
    diff = sorted(k for k in wanted if recorded.get(k) != wanted[k])
    if diff:
        what = "is not this sweep's" if resume else "was trained with other settings"
        raise SweepError(f"{folder.path} holds a {recorded.get('student')} run that {what} (it differs in "
                         f"{', '.join(diff[:6])}); move it away or choose another --out")


# ------------------------------------------------------------------------------------------ sweep folders


_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def student_dirs(root: str | Path, names: Sequence[str]) -> list[Path]:
    """The run folder of each student of a sweep in ``root``: ``root/<name>`` (unsafe characters as ``_``)."""
    folders = [Path(root) / (_SAFE.sub("_", n) or "student") for n in names]
    repeated = sorted({f.name for f in folders if folders.count(f) > 1})
    if repeated:
        raise SweepError(f"students {', '.join(repeated)} appear more than once in the sweep; name each once")
    return folders


def read_sweep(root: str | Path) -> tuple[TrainConfig, list[str]]:
    """The shared settings and the students of the sweep in ``root``; :class:`RunError` when it holds none."""
    path = Path(root) / SWEEP_FILE
    try:
        record = json.loads(path.read_text())
        return TrainConfig.from_dict(record["config"]), [str(s) for s in record["students"]]
    except OSError:
        raise RunError(f"--resume {root}: not a sweep folder (no {SWEEP_FILE})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunError(f"corrupt {path} ({err})") from None


def _write_sweep(root: Path, cfg: TrainConfig, names: Sequence[str]) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create sweep folder {root}: {err.strerror}") from None
    atomic_write_json(root / SWEEP_FILE, {"students": list(names), "config": cfg.to_dict()})


def _check_new(root: Path, flag: str) -> None:
    """Refuse a folder holding a sweep; ``flag`` is ``--out`` (the CLI) or ``out`` (the Python API)."""
    cli = flag.startswith("--")
    if (root / SWEEP_FILE).exists():
        raise RunError(f"{root} already holds a sweep; " + (f"continue it with --resume {root} or choose another --out"
                                                            if cli else "pass a new folder as out"))
    if root.exists() and not root.is_dir():
        raise RunError(f"{flag} {root} exists and is not a folder" if cli else f"out={str(root)!r} is not a folder")


# ------------------------------------------------------------------------------------------ the Python API


def sweep(
    students: Sequence[nn.Module] | Mapping[str, nn.Module],
    train: ImageDataset | Iterable[tuple[torch.Tensor, torch.Tensor]],
    test: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    teacher: nn.Module | None = None,
    config: TrainConfig | None = None,
    out: str | Path | None = None,
    reporter: Reporter | None = None,
) -> list[Summary]:
    """Train several students against one teacher pass per batch, as :func:`distill.fit` trains one.

    Args:
        students: the classifiers to train (in place), or a mapping from run-folder name to classifier;
            unnamed ones are named as ``fit`` names them (a student's spec, else the class name).
        train, test, teacher, config: as for :func:`distill.fit`; ``config`` is shared by every student.
        out: the sweep folder (must not hold a sweep); each student's run folder is ``out/<name>``. None
            for a new temporary folder.
        reporter: receives progress (see :class:`distill.engine.Reporter`).

    Returns:
        Each student's :class:`Summary`, in order; ``summary.run_dir`` is its folder.
    """
    from . import api
    from .feature_kd import feature_levels
    from teachers import FrozenTeacher

    modules = list(students.values()) if isinstance(students, Mapping) else list(students)
    if not modules:
        raise ValueError("students is empty; pass at least one nn.Module")
    names = list(students.keys()) if isinstance(students, Mapping) else [api._name(m) for m in modules]
    data, num_classes = api._data(modules[0], train, test, config if config is not None else TrainConfig())
    cfg = api._settings(config, modules[0], teacher, data)
    root = Path(tempfile.mkdtemp(prefix="distill-sweep-")) if out is None else Path(out)
    _check_new(root, "out")
    folders = student_dirs(root, names)
    frozen = None
    if teacher is not None:
        frozen = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        if cfg.kd_loss in FEATURE_KD_NAMES:  # a teacher without stage features fails before out is written
            feature_levels(frozen, role="teacher")
    cfgs = [api._settings(config, m, teacher, data) for m in modules]
    models = [Models(model=m, arch=api.module_arch(m, num_classes), teacher=frozen,
                     extra_summary={"classes": list(data.classes)} if data.classes else {}) for m in modules]
    return train_many(cfgs, models, data, folders, reporter=reporter,
                      on_checked=lambda: _write_sweep(root, cfg, names))


# ------------------------------------------------------------------------------------------ the CLI's level


def run_sweep(
    cfg: TrainConfig,
    students: Sequence[str],
    out: str | Path,
    *,
    resume: bool = False,
    reporter: Reporter,
    progress: Any = None,
    stop_after: int | None = None,
    make_reporter: Any = None,
) -> list[Summary]:
    """``distill sweep``: train the named ``students`` with the settings ``cfg`` into ``out/<student>``.

    With ``resume``, ``cfg`` and ``students`` come from ``out/sweep.json``: finished students are skipped
    (their summaries are read back), the others resume from their ``last.pt`` or start again.
    """
    from . import pipeline

    root = Path(out)
    if resume:
        cfg, students = read_sweep(root)
    else:
        if not students:
            raise SweepError("no students given; pass --students SPEC,SPEC,...")
        _check_new(root, "--out")
    if cfg.init_ckpt:  # every student would be that one checkpoint's net, recorded under another name
        raise SweepError(f"a sweep trains its students from scratch, but its settings start from init_ckpt "
                         f"{cfg.init_ckpt}; drop init_ckpt (a pruned student is fine-tuned by prune, or by distill run "
                         "--config with its own config.json)")
    folders = student_dirs(root, students)
    for name in students:
        pipeline.check_names(cfg.replace(student=name))
    dist.setup(engine.resolve_device(cfg.device).type)
    data = pipeline.load_data(cfg, progress)
    teacher, teacher_top1, source = None, None, None
    if cfg.uses_teacher:
        teacher, source = pipeline.resolve_teacher(cfg, data, reporter, make_reporter=make_reporter)
        reporter.message(f"teacher: {source}")
        if cfg.kd_loss in FEATURE_KD_NAMES:  # a teacher without stage features fails before anything is written
            from .feature_kd import probe_levels

            probe_levels(teacher, (3, data.image_size, data.image_size), role="teacher")
    todo: list[tuple[TrainConfig, Models, RunDir, dict[str, Any] | None]] = []
    for name, path in zip(students, folders):
        folder, student_cfg, checkpoint = RunDir(path), cfg.replace(student=name), None
        if (folder / CONFIG_FILE).exists():
            _check_adoptable(folder, student_cfg, resume)
        if is_complete(folder.path):
            reporter.message(f"{name}: finished before, skipped ({folder.path})")
            continue
        if (folder / CONFIG_FILE).exists():
            student_cfg, checkpoint = folder.load_resume()  # None: stopped before its first checkpoint
        torch.manual_seed(student_cfg.seed)  # the initial weights are part of what the seed decides
        model, arch, adapter = pipeline.build_trainee(student_cfg, data)
        models = Models(model=model, arch=arch, input_adapter=adapter, teacher=teacher,
                        extra_summary={"classes": list(data.classes), "sweep": str(root)})
        if source is not None:
            models.extra_summary["teacher_source"] = source
        if checkpoint is not None:
            models.teacher_top1 = checkpoint["meta"].get("teacher_top1")
        todo.append((student_cfg, models, folder, checkpoint))
    def write_sweep() -> None:  # once every setting has been checked: a refused sweep leaves nothing
        if not resume and dist.is_main():
            _write_sweep(root, cfg, students)

    if todo:
        train_many([t[0] for t in todo], [t[1] for t in todo], data, [t[2] for t in todo],
                   resumes=[t[3] for t in todo], reporter=reporter, stop_after=stop_after,
                   resume_hint=f"distill sweep --resume {root}", on_checked=write_sweep)
    else:
        write_sweep()
    return [read_summary(path) for path in folders]
