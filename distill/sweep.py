"""Several students trained in one process against one teacher pass per batch: ``distill sweep``.

Comparing students is the point of this project, and the teacher's forward pass is a large share of a KD
step's cost on a CPU. A sweep draws each batch once (shuffle, crops, flips, MixUp/CutMix), runs the
teacher on it once (its logits, and the stage maps that feature methods use, :func:`engine.teacher_forward`),
then takes one optimiser step per student on that same batch (:func:`engine.student_step`, the step a
single run takes too). Every student keeps its own run folder, written exactly as ``distill run`` writes
it (``config.json``, ``metrics.jsonl``, checkpoints, ``summary.json``), so ``distill compare`` reads them.

Why the results equal separate runs with the same seed: a run's randomness is reseeded from (seed, epoch)
at the start of every epoch and drawn only by the data pipeline and the mixer (the students have no
dropout by default and evaluation draws nothing), the initial weights come from ``torch.manual_seed(seed)``
right before each student is built, and FitNets regressors from the seed alone. So each student sees the
very batches, teacher outputs and initial weights it would see alone. (A student whose forward pass draws
random numbers, e.g. a ``_d`` dropout spec, shifts the later draws: its sweep differs from its lone run.)

Three entry points, as for single runs: :func:`train_many` (engine level: modules in, run folders out),
:func:`sweep` (the notebook API, like :func:`distill.fit`) and :func:`run_sweep` (the CLI's, by names).
A sweep folder holds ``sweep.json`` (the students and shared settings) and one run folder per student.
Resuming a sweep skips finished students and resumes the others from their ``last.pt``; students that
stopped at different epochs are caught up one epoch at a time (those behind train alone until the others'
epoch is reached), which keeps every student's batches the same as in its lone run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.common.errors import UserError

from . import dist, engine
from .batches import Loaders
from .config import FEATURE_KD_NAMES, TrainConfig
from .data import ImageDataset
from .engine import Models, Reporter
from .optim import set_lr
from .rundir import (CONFIG_FILE, RunDir, RunError, Summary, atomic_write_json, epoch_summary, is_complete,
                     read_summary)

__all__ = ["SWEEP_FILE", "SweepError", "train_many", "sweep", "run_sweep", "read_sweep", "student_dirs"]

_logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # {"students": [...], "config": {...}}: what `distill sweep --resume` continues


class SweepError(UserError):
    """An invalid sweep: repeated students, settings that differ between students, an existing sweep."""


# --------------------------------------------------------------------------------------- reporting


class _Labelled:
    """One student's view of the sweep's reporter: its messages and epoch lines carry its name; the sweep
    itself draws the progress bars (one per epoch, for all students)."""

    def __init__(self, reporter: Reporter, name: str) -> None:
        self.reporter, self.name = reporter, name

    def message(self, text: str) -> None:
        _say(self.reporter, f"{self.name}: {text}")

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def end_epoch(self, record: dict[str, Any]) -> None:
        _say(self.reporter, f"{self.name}: " + "  ".join(epoch_summary(record)))


def _say(reporter: Reporter, text: str) -> None:
    message = getattr(reporter, "message", None)
    if message is not None:
        message(text)
    else:
        _logger.info(text)


def _call(reporter: Reporter, method: str, *args: Any) -> None:
    fn = getattr(reporter, method, None)
    if fn is not None:
        fn(*args)


# ------------------------------------------------------------------------------------- the engine level


@dataclass
class _Member:
    """One student of the sweep: its engine parts, its state, and the checkpoint it resumes from."""

    name: str
    parts: Any  # engine._Parts
    resume: dict[str, Any] | None
    state: Any = None  # engine._State


def _check_same_settings(cfgs: Sequence[TrainConfig]) -> None:
    """Every setting but the student's name must agree: they decide the shared batches and teacher outputs."""
    base = cfgs[0].replace(student="-", max_params=None)
    for cfg in cfgs[1:]:
        other = cfg.replace(student="-", max_params=None)
        if other != base:
            diff = sorted(k for k, v in other.to_dict().items() if base.to_dict()[k] != v)
            raise SweepError(f"the students of a sweep must share every setting but the student; "
                             f"{cfg.student} differs in {', '.join(diff)}")


def train_many(
    cfgs: Sequence[TrainConfig],
    models: Sequence[Models],
    data: ImageDataset | Loaders,
    run_dirs: Sequence[str | Path | RunDir],
    *,
    resumes: Sequence[dict[str, Any] | None] | None = None,
    reporter: Reporter | None = None,
    stop_after: int | None = None,
) -> list[Summary]:
    """Train several students into their run folders, one teacher pass per batch; their summaries, in order.

    The multi-student :func:`distill.engine.train`: ``cfgs[i]``, ``models[i]``, ``run_dirs[i]`` and
    ``resumes[i]`` are what ``train`` takes for student ``i``. Every config must equal the others but for
    ``student`` (and ``max_params``), and every ``models[i].teacher`` must be the same module (or all None).
    ``stop_after`` ends this invocation after that many sweep epochs.
    """
    if not (len(cfgs) == len(models) == len(run_dirs)) or not cfgs:
        raise ValueError(f"need as many configs, models and run_dirs (at least one), got {len(cfgs)}, "
                         f"{len(models)} and {len(run_dirs)}")
    resumes = list(resumes) if resumes is not None else [None] * len(cfgs)
    if len(resumes) != len(cfgs):
        raise ValueError(f"resumes has {len(resumes)} entries for {len(cfgs)} students")
    if len({id(m.teacher) for m in models}) != 1:
        raise ValueError("every student of a sweep must have the same teacher module (models[i].teacher)")
    _check_same_settings(cfgs)
    reporter = reporter if reporter is not None else engine._Silent()
    folders = [d if isinstance(d, RunDir) else RunDir(d) for d in run_dirs]
    for cfg in cfgs:
        engine._check_data(cfg, data)
    members = []
    for cfg, m, folder, resume in zip(cfgs, models, folders, resumes):
        name = folder.path.name
        members.append(_Member(name, engine._build(cfg, m, data, folder, _Labelled(reporter, name)), resume))
    world = members[0].parts.world
    with contextlib.ExitStack() as stack:
        for member in members:
            stack.enter_context(member.parts.run_dir.writing(enabled=world.is_main))
            if world.is_main:
                engine._open_folder(member.parts, member.resume)
        try:
            summaries = _run(members, reporter, stop_after)
        finally:
            for member in members:
                if member.parts.tensorboard is not None:
                    member.parts.tensorboard.close()
    dist.barrier()  # nobody reads the run folders before rank 0 has written them
    return summaries


def _run(members: list[_Member], reporter: Reporter, stop_after: int | None) -> list[Summary]:
    teacher_top1 = None
    for member in members:  # the teacher is evaluated once, not once per student
        if member.parts.models.teacher_top1 is None and member.resume is None:
            member.parts.models.teacher_top1 = teacher_top1
        member.state = engine._start(member.parts, member.resume)
        teacher_top1 = member.state.teacher_top1 if teacher_top1 is None else teacher_top1
    cfg = members[0].parts.cfg
    epochs_run = 0
    for epoch in range(min(m.state.epoch for m in members), cfg.epochs):
        if stop_after is not None and epochs_run >= stop_after:
            _say(reporter, f"stopping after {stop_after} epoch(s) as asked; continue with distill sweep --resume")
            break
        active = [m for m in members if m.state.epoch == epoch]  # those behind catch up first
        if active:
            records = _train_epoch(active, epoch, reporter)
            for member, record in zip(active, records):
                engine._end_epoch(member.parts, member.state, record)
            epochs_run += 1
    summaries = []
    for member in members:
        summary = engine._summary(member.parts, member.state)
        if member.parts.world.is_main:
            member.parts.run_dir.write_summary(summary)
        summaries.append(summary)
    return summaries


def _train_epoch(active: list[_Member], epoch: int, reporter: Reporter) -> list[dict[str, Any]]:
    """One epoch for the ``active`` students: the same batches, one teacher pass each, one step per student.

    Mirrors :func:`distill.engine._train_epoch` and :func:`distill.engine.train_one_epoch` for each student.
    ``train_seconds`` and ``train_img_s`` are the sweep's: the shared epoch's time, for all its students.
    """
    lead = active[0].parts
    cfg, device, loader = lead.cfg, lead.device, lead.data.train
    engine._seed_epoch(cfg.seed, epoch)
    loader.set_epoch(epoch)
    for member in active:
        member.parts.loss_fn.set_epoch(epoch)
        member.parts.train_model.train()
    epoch_start = time.perf_counter()
    _call(reporter, "start_epoch", epoch + 1, cfg.epochs, len(loader))
    sums: list[dict[str, torch.Tensor]] = [{} for _ in active]
    correct = [torch.zeros((), device=device) for _ in active]
    steps = [m.state.step for m in active]
    seen = 0
    silent = engine._Silent()
    for i, (images, labels) in enumerate(loader):
        targets = labels
        if lead.mixer.enabled:
            images, targets = lead.mixer(images, labels)
        with engine._autocast(device, cfg.amp):
            teacher_out = engine.teacher_forward(lead.teacher, images, [m.parts.loss_fn for m in active])
        last_losses = []
        for k, member in enumerate(active):
            p = member.parts
            set_lr(p.optimizer, p.lr_at_step(steps[k]))
            # The batches are in the first student's format; each student gets them in its own, as in its
            # own run (a no-op when the formats agree).
            mine = images.contiguous(memory_format=p.memory_format)
            parts, logits = engine.student_step(p.train_model, mine, targets, teacher_out, loss_fn=p.loss_fn,
                                                optimizer=p.optimizer, device=device, amp=cfg.amp,
                                                after_backward=p.models.after_backward)
            if p.ema is not None:
                p.ema.update(p.train_model, step=steps[k])
            for key, value in parts.items():
                sums[k][key] = sums[k].get(key, 0.0) + value.detach().float()
            hard = targets if targets.ndim == 1 else targets.argmax(1)
            correct[k] += (logits.detach().argmax(1) == hard).sum()
            steps[k] += 1
            last_losses.append(parts["loss"])
        seen += labels.shape[0]
        if (i + 1) % engine.LOG_EVERY_STEPS == 0 or i + 1 == len(loader):
            elapsed = time.perf_counter() - epoch_start
            for member, loss, step in zip(active, last_losses, steps):  # NaN check, per student
                try:
                    engine._check_and_report(loss, step, silent, {}, i + 1)
                except engine.TrainingDiverged as err:
                    raise engine.TrainingDiverged(f"{member.name}: {err}") from None
            mean_loss = float(torch.stack([x.detach().float() for x in last_losses]).mean())
            _call(reporter, "step", i + 1, {"loss": mean_loss, "lr": lead.lr_at_step(steps[0] - 1),
                                             "img_s": seen * len(active) / max(elapsed, 1e-9),
                                             "acc": 100.0 * float(sum(c.item() for c in correct)) / (seen * len(active))})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - epoch_start
    records = []
    for k, member in enumerate(active):
        stats = engine._epoch_means(sums[k], correct[k], seen, len(loader), device)
        stats.update(train_seconds=seconds, train_img_s=stats.pop("images") / max(seconds, 1e-9),
                     lr=member.parts.lr_at_step(steps[k] - 1))
        member.state.step = steps[k]
        records.append({"epoch": epoch + 1, **stats})
    due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
    for member, record in zip(active, records):
        if due:
            record.update(engine._evaluate_epoch(member.parts))
        record["seconds"] = time.perf_counter() - epoch_start  # the sweep's epoch: training plus evaluations
    # The sweep's own progress line: means over its students (each student's line comes from _Labelled).
    keys = ("train_loss", "train_top1", *(("test_top1",) if due else ()))
    mean = {key: sum(r[key] for r in records) / len(records) for key in keys}
    _call(reporter, "end_epoch", {"epoch": epoch + 1, **mean, "train_img_s": seen * len(active) / max(seconds, 1e-9),
                                  "seconds": time.perf_counter() - epoch_start})
    return records


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
    _write_sweep(root, cfg, names)
    return train_many(cfgs, models, data, folders, reporter=reporter)


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
    if not resume and dist.is_main():
        _write_sweep(root, cfg, students)
    if todo:
        train_many([t[0] for t in todo], [t[1] for t in todo], data, [t[2] for t in todo],
                   resumes=[t[3] for t in todo], reporter=reporter, stop_after=stop_after)
    return [read_summary(path) for path in folders]
