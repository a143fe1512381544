"""From a :class:`TrainConfig` to a finished run: data, the model to train, the teacher, the run directory.

The CLIs' layer above the engine: the engine (:mod:`distill.engine`) trains whatever modules and data it is
given; this module decides them from names in the config (student spec, teacher name and store, data
source) and then calls the same :func:`distill.engine.train` that :func:`distill.fit` calls.

The teacher of ``distill run`` comes from ``--teacher-ckpt`` (a checkpoint or a run directory), else from
the teacher store (one finished ``distill teacher`` run per model, data, mode and teacher recipe), else it
is trained first with the same engine and its recipe (:mod:`distill.recipes`), and put in the store.
:func:`plan_run` says which, and what each phase will cost, before anything is trained or written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import students
import teachers
from students.common.errors import UserError

from . import dist
from .config import FEATURE_KD_NAMES, LEGACY_WEIGHT_INIT, TrainConfig
from .data import ImageDataset, default_cache_dir, load_dataset
from .device import channels_last_safe, device_name, resolve_device
from .batches import EVAL_BATCH, check_classes
from .engine import Models, Reporter, evaluate, train
from .plan import (TIMING_BATCH, TIMING_STEPS, Phase, RunPlan, TeacherPlan, TimingProgress, duration, eval_passes,
                   seconds_per_image)
from .recipes import TEACHER_RECIPES, teacher_config, teacher_recipe_record
from .rundir import (BEST_CKPT, CONFIG_FILE, LAST_CKPT, FolderBusy, RunDir, RunError, Summary, find_checkpoint,
                     is_complete, read_summary)
from .teacher_cache import plan_cache

__all__ = [
    "load_data",
    "build_trainee",
    "resolve_teacher",
    "run_training",
    "teacher_store_dir",
    "find_checkpoint",
    "estimate_train_seconds",
    "plan_run",
    "check_run",
    "check_classes",
    "test_selection",
]

_logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def load_data(cfg: TrainConfig, progress: ProgressFn | None = None, *, write_cache: bool = True) -> ImageDataset:
    """The run's data: decoded (or cached), optionally subset, optionally with a validation split.
    ``write_cache`` False (``--dry-run``) writes nothing: no decode cache, no download."""
    data = load_dataset(cfg.data, image_size=cfg.image_size, download=True, progress=progress,
                        write_cache=write_cache)
    if cfg.train_subset or cfg.test_subset:
        data = data.subset(train=cfg.train_subset, test=cfg.test_subset, seed=cfg.stream_seed)
    if cfg.val_split:
        if cfg.val_split >= data.train_labels.numel():
            raise UserError(
                f"--val-split {cfg.val_split} leaves no training images (only {data.train_labels.numel()})"
            )
        data = data.split_validation(cfg.val_split, seed=cfg.stream_seed)
    if cfg.num_classes is not None and cfg.num_classes != data.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes} but the data has {data.num_classes} classes")
    return data


def test_selection(cfg: TrainConfig) -> dict[str, Any]:
    """How a run's test images (what its top-1 is measured on) were chosen from its data, as recorded in
    its summary; :func:`load_data` of the same config picks the same images again."""
    if cfg.val_split:
        how = (f"{cfg.val_split:,} validation images held out of the training split of {cfg.data} "
               f"(random, seed {cfg.stream_seed})")
    elif cfg.test_subset:
        how = (f"{cfg.test_subset:,} test images of {cfg.data}, class-balanced (ImageDataset.subset, "
               f"seed {cfg.stream_seed})")
    else:
        how = f"the whole test split of {cfg.data}"
    if cfg.val_split and (cfg.train_subset or cfg.test_subset):
        how += (f", after a class-balanced subset of train {cfg.train_subset} / test {cfg.test_subset} "
                f"(seed {cfg.stream_seed})")
    return {"how": how, "data": cfg.data, "train_subset": cfg.train_subset, "test_subset": cfg.test_subset,
            "val_split": cfg.val_split, "seed": cfg.stream_seed}


def build_trainee(cfg: TrainConfig, data: ImageDataset) -> tuple[nn.Module, dict[str, Any], nn.Module | None]:
    """The model a run trains (a student, or the teacher for ``distill teacher``), its architecture, and
    the input adapter an upsample-mode teacher trains behind (None otherwise)."""
    if cfg.kind == "teacher":
        name = cfg.teacher
        if _is_student_name(name):
            model = students.create(name, num_classes=data.num_classes, weight_init=cfg.weight_init,
                                    zero_init_last=cfg.zero_init_last)
            return model, students.student_arch(model), None
        mode = cfg.teacher_mode or teachers.default_mode(name)
        model = teachers.create_teacher(
            name, data.num_classes, mode=mode, pretrained=cfg.teacher_pretrained, weights=cfg.teacher_weights,
            input_size=data.image_size,
        )
        arch = teachers.teacher_arch(name, data.num_classes, mode, data.image_size)
        return model, arch, teachers.arch_adapter(arch)
    if cfg.init_ckpt:
        return _load_init(cfg, data)
    model = students.create(cfg.student, num_classes=data.num_classes, max_params=cfg.max_params,
                            weight_init=cfg.weight_init, zero_init_last=cfg.zero_init_last)
    return model, students.student_arch(model), None


def _load_init(cfg: TrainConfig, data: ImageDataset) -> tuple[nn.Module, dict[str, Any], nn.Module | None]:
    """A run's starting model from ``init_ckpt``: a (pruned) student, or a (pruned) timm model with the input
    adapter its mode needs, and the architecture its checkpoints record. It must be the run's ``student``:
    a run recorded as one student must never train another."""
    path = cfg.init_ckpt
    model, ckpt = teachers.load_model(path)  # safe and strict: weights_only, content hash, recorded widths
    arch = ckpt["arch"]
    recorded = arch.get("spec") or arch.get("name")
    wanted = cfg.student
    if arch.get("family") == "student" and _is_student_name(wanted):
        wanted = students.format_spec(students.resolve(wanted))
    if recorded != wanted:
        raise UserError(f"init_ckpt {path} holds a {recorded}, but the run's student is {cfg.student}; set the "
                        f"student to {recorded}, or drop init_ckpt to train {cfg.student} from scratch")
    check_classes(ckpt, data.classes, f"init_ckpt {path}")
    num_classes = int(arch.get("num_classes", -1))
    if num_classes != data.num_classes:
        raise UserError(f"{path} has {num_classes} classes but the data has {data.num_classes}")
    if arch.get("family") == "student":
        return model, students.student_arch(model), None
    return model, dict(arch), teachers.arch_adapter(arch)


def check_names(cfg: TrainConfig) -> None:
    """Fail fast, before any data is decoded, on a malformed student or an unknown teacher name."""
    if cfg.kind == "run" and not (cfg.init_ckpt and not teachers.is_student_name(cfg.student)):
        students.resolve(cfg.student)
    elif cfg.kind == "run":  # a timm model fine-tuned from its (pruned) checkpoint, e.g. by prune
        teachers.default_mode(cfg.student)
    if cfg.teacher:
        teachers.default_mode(cfg.teacher)  # raises TeacherError with close matches for unknown names


def check_run(cfg: TrainConfig, run_dir: str | Path) -> None:
    """Fail fast, before data is decoded or anything timed: bad names, or ``run_dir`` already holding a run."""
    check_names(cfg)
    RunDir(run_dir).check_new()


def _is_student_name(name: str) -> bool:
    try:
        students.resolve(name)
        return True
    except students.SpecError:
        return False


def _data_key(cfg: TrainConfig, data: ImageDataset) -> str:
    ident = {
        "data": cfg.data,  # a name, or an absolute path (TrainConfig resolves it)
        "train_subset": cfg.train_subset,
        "test_subset": cfg.test_subset,
        "val_split": cfg.val_split,
        "classes": list(data.classes),
        "size": data.image_size,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]


# Settings that do not change what a teacher learns (or, for the seed, not which teacher is good enough:
# seeds of a student share one teacher); every other teacher setting is part of the store key.
_NOT_IN_TEACHER_KEY = ("device", "amp", "seed", "data_seed", "teacher_cache", "deterministic", "channels_last",
                       "compile", "tensorboard", "save_every", "ema", "ema_decay", "tta", "teacher", "teacher_mode",
                       "data", "train_subset", "test_subset", "val_split")


def _teacher_key(teacher_cfg: TrainConfig) -> str:
    """A short hash of the teacher's training settings. Only values that differ from TrainConfig's defaults
    count, so a new setting (added with a default) does not orphan the teachers already stored."""
    # weight_init counts against the init every stored teacher had before the setting existed (so a change of
    # its default makes new teachers, and keeps the old ones under their keys); a timm teacher ignores it.
    defaults = TrainConfig(kind="teacher", teacher=teacher_cfg.teacher, weight_init=LEGACY_WEIGHT_INIT).to_dict()
    ignored = _NOT_IN_TEACHER_KEY + (() if _is_student_name(teacher_cfg.teacher) else ("weight_init", "zero_init_last"))
    settings = {k: v for k, v in teacher_cfg.to_dict().items() if k not in ignored and v != defaults[k]}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _store_root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("DISTILL_TEACHERS", default_cache_dir() / "teachers"))


def _store_prefix(cfg: TrainConfig, data: ImageDataset) -> str:
    mode = cfg.teacher_mode or ("cifar" if _is_student_name(cfg.teacher) else teachers.default_mode(cfg.teacher))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.teacher)
    return f"{safe}__{mode}__{_data_key(cfg, data)}__"


def teacher_store_dir(cfg: TrainConfig, data: ImageDataset, root: str | Path | None = None) -> Path:
    """Where the stored teacher for (teacher model, data, mode, teacher training settings) lives."""
    return _store_root(root) / f"{_store_prefix(cfg, data)}{_teacher_key(teacher_config(cfg))}"


def estimate_train_seconds(model: nn.Module, cfg: TrainConfig, data: ImageDataset,
                           progress: TimingProgress | None = None) -> float:
    """Seconds to train ``model`` for ``cfg.epochs`` epochs (evaluations included), extrapolated from a few
    timed steps at a small batch (:func:`distill.plan.seconds_per_image`). ``model`` is left as it was."""
    device = resolve_device(cfg.device)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN statistics move while timing
    cl = cfg.channels_last and channels_last_safe(model, device)
    timing = dict(image_size=data.image_size, num_classes=data.num_classes, device=device, channels_last=cl,
                  amp=cfg.amp, batch=min(TIMING_BATCH, data.train_labels.numel()), progress=progress)
    train_s = seconds_per_image(model, train=True, what="training step", **timing)
    forward_s = seconds_per_image(model, train=False, warm_up=False, what="forward pass", **timing)
    model.load_state_dict(state)
    passes = eval_passes(cfg.epochs, cfg.eval_every, cfg.ema, cfg.tta)
    return cfg.epochs * data.train_labels.numel() * train_s + passes * data.test_labels.numel() * forward_s


def _frozen(model: nn.Module, arch: dict[str, Any], ckpt: dict[str, Any], data: ImageDataset, *,
            fold_bn: bool = True) -> nn.Module:
    """Wrap a loaded teacher: inputs re-normalised from the student's statistics to those it was trained
    with (recorded in its checkpoint), and resized on the device in ``upsample`` mode."""
    meta = ckpt.get("meta", {})
    resize_to = None
    if arch.get("family") == "timm" and arch.get("mode") == "upsample":
        resize_to = int(arch.get("resize_to") or 224)
    return teachers.FrozenTeacher(
        model, student_mean=data.mean, student_std=data.std,
        teacher_mean=tuple(meta.get("data_mean", data.mean)), teacher_std=tuple(meta.get("data_std", data.std)),
        resize_to=resize_to, fold_bn=fold_bn,
    )


def load_teacher_checkpoint(cfg: TrainConfig, data: ImageDataset, path: str | Path) -> nn.Module:
    """A frozen teacher from a checkpoint or run directory, checked against ``--teacher`` and the data."""
    ckpt_path = find_checkpoint(path)
    model, ckpt = teachers.load_model(ckpt_path)
    arch = ckpt["arch"]
    recorded = arch.get("name") or arch.get("spec")
    wanted = cfg.teacher
    if _is_student_name(wanted):
        wanted = students.format_spec(students.resolve(wanted))
    if recorded != wanted:
        raise UserError(f"--teacher-ckpt {ckpt_path} holds a {recorded}, not a {cfg.teacher}; fix --teacher or the path")
    if int(arch.get("num_classes", -1)) != data.num_classes:
        raise UserError(
            f"teacher checkpoint {ckpt_path} has {arch.get('num_classes')} classes but the data has "
            f"{data.num_classes}; train a teacher on this data with `distill teacher`"
        )
    check_classes(ckpt, data.classes, f"teacher checkpoint {ckpt_path}")
    # BatchNorm folding (torch.fx) loses the modules feature methods hook; their teacher stays unfolded.
    return _frozen(model, arch, ckpt, data, fold_bn=cfg.kd_loss not in FEATURE_KD_NAMES)


def resolve_teacher(
    cfg: TrainConfig, data: ImageDataset, reporter: Reporter, *, store_root: str | Path | None = None,
    make_reporter: Callable[[str], Reporter] | None = None, estimate_s: float | None = None,
    may_train: bool = True,
) -> tuple[nn.Module, str]:
    """The frozen teacher for a ``distill run`` and a line saying where it came from.

    A teacher that must be trained first is announced with its cost: ``estimate_s`` (seconds, e.g. from
    the run's :class:`~distill.plan.RunPlan`), else a quick estimate from a few small timed steps. With
    ``may_train`` False (``prune``), a missing teacher is an error instead: the store is never written."""
    if cfg.teacher_ckpt:
        return load_teacher_checkpoint(cfg, data, cfg.teacher_ckpt), f"checkpoint {cfg.teacher_ckpt}"
    store = teacher_store_dir(cfg, data, store_root)
    while True:  # another run training this very teacher: wait for it, then use what it stored
        _wait_for_store(store, reporter)
        if (store / BEST_CKPT).exists() and is_complete(store):
            return load_teacher_checkpoint(cfg, data, store), f"stored teacher {store}"
        try:
            return _train_teacher(cfg, data, store, reporter, make_reporter=make_reporter, estimate_s=estimate_s,
                                  may_train=may_train)
        except FolderBusy:
            continue  # it started between our look and our lock
        except RunError:  # it wrote its first checkpoint between our look and ours
            if RunDir(store).holder() is None and not is_complete(store):
                raise


TEACHER_WAIT_S = 5.0  # seconds between looks at a teacher another process is training


def _wait_for_store(store: Path, reporter: Reporter) -> None:
    """Return once no other process is writing the teacher store folder ``store`` (at once when none is)."""
    said = False
    while (holder := RunDir(store).holder()) is not None:
        if not said:
            reporter.message(f"another process (pid {holder}) is training this teacher into {store}; waiting for it "
                             "to finish, then using it")
            said = True
        time.sleep(TEACHER_WAIT_S)


def _train_teacher(cfg: TrainConfig, data: ImageDataset, store: Path, reporter: Reporter, *,
                   make_reporter: Callable[[str], Reporter] | None, estimate_s: float | None,
                   may_train: bool) -> tuple[nn.Module, str]:
    """Train the run's teacher into the store (or go on with one a killed run left there), then load it."""
    if not may_train:
        raise UserError(f"no stored {cfg.teacher} teacher for this data and recipe (looked in {store}); pass "
                        "--teacher-ckpt with a trained teacher")
    teacher_cfg = teacher_config(cfg)
    model, _, adapter = build_trainee(_offline(teacher_cfg), data)
    if estimate_s is None:
        estimate_s = estimate_train_seconds(model if adapter is None else nn.Sequential(adapter, model), teacher_cfg,
                                            data)
    reporter.message(
        f"no stored teacher for {cfg.teacher} on this data: training one first ({teacher_cfg.epochs} epochs, "
        f"recipe {teacher_cfg.recipe}, {students.count_params(model):,} params, estimated {duration(estimate_s)} on "
        f"{resolve_device(cfg.device).type}); it will be stored in {store}"
    )
    del model, adapter
    dist.barrier()  # every rank has looked at the store before rank 0 starts writing it
    resume = (store / LAST_CKPT).exists()
    run_training(teacher_cfg, store, resume=resume, reporter=make_reporter("teacher") if make_reporter else reporter)
    return load_teacher_checkpoint(cfg, data, store), f"trained and stored teacher {store}"


def _teacher_plan(cfg: TrainConfig, data: ImageDataset, store_root: str | Path | None) -> tuple[TeacherPlan, nn.Module]:
    """Where ``cfg``'s teacher will come from, and a network to time: the frozen teacher itself when it
    exists (loading it checks it against ``--teacher`` and the data), else a fresh one. Writes nothing."""
    if cfg.teacher_ckpt:
        path = find_checkpoint(cfg.teacher_ckpt)
        net = load_teacher_checkpoint(cfg, data, path)
        return TeacherPlan(cfg.teacher, "checkpoint", path, _recorded_params(path) or students.count_params(net),
                           recipe=_recorded_recipe(path)), net
    store = teacher_store_dir(cfg, data, store_root)
    if (store / BEST_CKPT).exists() and is_complete(store):
        summary = read_summary(store)
        net = load_teacher_checkpoint(cfg, data, store)
        return TeacherPlan(cfg.teacher, "stored", store, summary.num_params, recipe=_recorded_recipe(store),
                           top1=summary.top1_best), net
    model, _, adapter = build_trainee(_offline(teacher_config(cfg)), data)
    others = []
    for other in sorted(store.parent.glob(_store_prefix(cfg, data) + "*")):
        recipe = _recorded_recipe(other) if other != store and is_complete(other) else None
        if recipe is not None:
            top1 = read_summary(other).top1_best
            others.append(f"{recipe['epochs']} epochs, lr {recipe['lr']}, top-1 {top1:.2f}%: --teacher-ckpt {other}")
    plan = TeacherPlan(cfg.teacher, "train", store, students.count_params(model),
                       recipe=teacher_recipe_record(teacher_config(cfg)), others=tuple(others))
    return plan, (model if adapter is None else nn.Sequential(adapter, model))


def _recorded_params(path: Path) -> int | None:
    try:
        return read_summary(path.parent).num_params
    except UserError:
        return None


def _data_line(cfg: TrainConfig) -> str:
    how = []
    if cfg.train_subset or cfg.test_subset:
        how.append(f"class-balanced subset, seed {cfg.stream_seed}")
    if cfg.val_split:
        how.append(f"{cfg.val_split:,} training images held out for validation")
    return cfg.data + (f" ({'; '.join(how)})" if how else "")


def _plan_notes(cfg: TrainConfig, teacher: TeacherPlan | None) -> tuple[str, ...]:
    given = [flag for flag, value in (("--teacher-epochs", cfg.teacher_epochs), ("--teacher-lr", cfg.teacher_lr))
             if value is not None]
    if given and teacher is not None and teacher.source == "checkpoint":
        return (f"{' and '.join(given)} only shape a teacher trained here; the --teacher-ckpt one is used as it is",)
    if given and teacher is None:
        return (f"{' and '.join(given)} only shape a teacher trained here; this run has no teacher",)
    return ()


def _student_macs(model: nn.Module, image_size: int) -> int | None:
    if not isinstance(model, students.CifarResNet):
        return None  # fvcore traces of large timm models cost seconds: the plan shows their params only
    try:
        return students.cost_report(model, (3, image_size, image_size)).macs
    except Exception as err:  # a plan without MACs is still a plan
        _logger.debug("could not count MACs: %s", err)
        return None


def plan_run(cfg: TrainConfig, data: ImageDataset, *, store_root: str | Path | None = None,
             progress: TimingProgress | None = None,
             described: Callable[[RunPlan], None] | None = None) -> RunPlan:
    """What ``cfg`` will do on ``data`` and what each phase costs, before anything is trained or written.

    ``described`` is called with the plan before the phases are timed (device, data, teacher source,
    sizes), so a caller can show it at once; ``progress(what, done, total)`` follows the timed steps.
    """
    device = resolve_device(cfg.device)
    model, _, adapter = build_trainee(_offline(cfg), data)
    trainee = model if adapter is None else nn.Sequential(adapter, model)
    teacher_net, teacher = None, None
    if cfg.uses_teacher:
        teacher, teacher_net = _teacher_plan(cfg, data, store_root)
        if cfg.kd_loss in FEATURE_KD_NAMES:  # a teacher without stage maps is refused now, not after its training
            from .engine import build_train_loss

            build_train_loss(cfg, copy.deepcopy(model), teacher_net)  # probes both in eval mode, one image
    plan = RunPlan(
        kind=cfg.kind, device=device_name(device), device_type=device.type, data=_data_line(cfg),
        train_images=data.train_labels.numel(), test_images=data.test_labels.numel(), num_classes=data.num_classes,
        image_size=data.image_size, model=cfg.model_name, num_params=students.count_params(model),
        macs=_student_macs(model, data.image_size), epochs=cfg.epochs, teacher=teacher,
        notes=_plan_notes(cfg, teacher),
    )
    if described is not None:
        described(plan)
    # A CPU is timed at a small batch (seconds even for a ResNet-50); a GPU at the run's own batch, always after
    # a warm-up step: small or cold steps there are launch- and autotuning-bound, several times too slow.
    cuda = device.type == "cuda"
    batch = min(cfg.batch_size if cuda else TIMING_BATCH, plan.train_images)

    def per_image(net: nn.Module, train: bool, what: str, warm_up: bool = True) -> float:
        return seconds_per_image(net, train=train, image_size=data.image_size, num_classes=data.num_classes,
                                 device=device, channels_last=cfg.channels_last and channels_last_safe(net, device),
                                 amp=cfg.amp, batch=batch, warm_up=warm_up or cuda, what=what, progress=progress)

    n_train, n_test = plan.train_images, plan.test_images
    phases = []
    student_train = per_image(trainee, True, f"{cfg.model_name}: training step")
    student_fwd = per_image(trainee, False, f"{cfg.model_name}: forward pass", warm_up=False)  # shapes just ran
    teacher_fwd, cache = 0.0, None
    if teacher is not None:
        if teacher.source == "train":
            t_cfg = teacher_config(cfg)
            t_train = per_image(teacher_net, True, f"{cfg.teacher}: training step")
            # Distillation runs the teacher frozen, BatchNorm folded (as load_teacher_checkpoint builds it).
            frozen = teachers.FrozenTeacher(teacher_net, fold_bn=cfg.kd_loss not in FEATURE_KD_NAMES)
            t_fwd_train = per_image(frozen, False, f"{cfg.teacher}: forward pass")
            t_total = (t_cfg.epochs * n_train * t_train
                       + eval_passes(t_cfg.epochs, t_cfg.eval_every, t_cfg.ema, t_cfg.tta) * n_test * t_fwd_train)
            phases.append(Phase("teacher training", t_total, f"{t_cfg.epochs} epochs x {n_train:,} images",
                                t_total / t_cfg.epochs))
            teacher_fwd = t_fwd_train
        else:
            teacher_fwd = per_image(teacher_net, False, f"{cfg.teacher}: forward pass")
        cache = plan_cache(cfg, teacher_net if teacher.source != "train" else None, data, device=device,
                           teacher_channels_last=cfg.channels_last and channels_last_safe(teacher_net, device),
                           feature_method=cfg.kd_loss in FEATURE_KD_NAMES, teacher_forward_s=teacher_fwd)
        phases.append(Phase("teacher evaluation", n_test * teacher_fwd, f"{n_test:,} test images, once"))
    live_epochs = cfg.epochs - (cache.cached_epochs if cache is not None else 0)
    total = (cfg.epochs * n_train * student_train + live_epochs * n_train * teacher_fwd
             + eval_passes(cfg.epochs, cfg.eval_every, cfg.ema, cfg.tta) * n_test * student_fwd)
    what = "evaluations included"
    if teacher is not None:
        what = ("teacher forward included" if live_epochs == cfg.epochs else
                f"teacher forward in {live_epochs} epochs, replayed in {cfg.epochs - live_epochs}")
    phases.append(Phase("distillation" if teacher is not None else "training", total,
                        f"{cfg.epochs} epochs x {n_train:,} images, {what}", total / cfg.epochs))
    timing = (f"extrapolated from 1-{TIMING_STEPS} timed steps of {batch} images per model on {device.type} "
              f"(the run uses batch {cfg.batch_size}; the machine's load moves these)")
    return plan.with_phases(tuple(phases), timing, cache=cache.line() if cache is not None else None)


def _offline(cfg: TrainConfig) -> TrainConfig:
    """The same architecture without pretrained weights: to count and time it, nothing is downloaded."""
    return cfg.replace(teacher_pretrained=False, teacher_weights=None)


def _recorded_recipe(path: str | Path) -> dict[str, Any] | None:
    """How the teacher in ``path`` (a run folder or a checkpoint in one) was trained, from its config.json."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        cfg = TrainConfig.load(folder / CONFIG_FILE)
    except (UserError, OSError):
        return None
    if cfg.recipe in TEACHER_RECIPES:
        return teacher_recipe_record(cfg)
    return {"name": cfg.recipe, "optimizer": cfg.optimizer, "label_smoothing": cfg.label_smoothing,
            "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size}


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    reporter: Reporter,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    make_reporter: Callable[[str], Reporter] | None = None,
    epochs_override: int | None = None,
    extend: bool = False,
    after_backward: Callable[[nn.Module], None] | None = None,
    data: ImageDataset | None = None,
    plan: RunPlan | None = None,
    may_train_teacher: bool = True,
) -> Summary:
    """Run (or resume) ``distill run`` / ``distill teacher`` into ``run_dir``; return the summary.

    ``data`` is the run's data when already loaded (:func:`load_data` of the same config); ``plan`` is its
    :func:`plan_run`, whose teacher-training estimate is reused instead of timing again. With
    ``may_train_teacher`` False a teacher missing from the store is an error, never trained here."""
    folder = RunDir(run_dir)
    checkpoint = None
    if resume:
        cfg, checkpoint = _resume_config(folder, epochs_override, extend)
    check_names(cfg)
    dist.setup(resolve_device(cfg.device).type)
    if not resume:
        folder.check_new()
    dist.barrier()  # every rank has checked --out before rank 0 creates it
    data = data if data is not None else load_data(cfg, progress)
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed decides
    model, arch, adapter = build_trainee(cfg, data)
    models = Models(model=model, arch=arch, input_adapter=adapter, after_backward=after_backward,
                    extra_summary={"classes": list(data.classes), "test_selection": test_selection(cfg)})
    pruned = folder.prune_record()
    if pruned is not None:  # a pruned student's fine-tuning run: keep what pruning did
        models.extra_summary["pruned"] = pruned
    if cfg.uses_teacher:
        estimate = next((p.seconds for p in plan.phases if p.name == "teacher training"), None) if plan else None
        models.teacher, source = resolve_teacher(cfg, data, reporter, make_reporter=make_reporter,
                                                 estimate_s=estimate, may_train=may_train_teacher)
        reporter.message(f"teacher: {source}")
        models.extra_summary["teacher_source"] = source
        teacher_path = find_checkpoint(cfg.teacher_ckpt or teacher_store_dir(cfg, data))
        models.extra_summary["teacher_ckpt"] = str(teacher_path.resolve())  # e.g. for prune to distil from it again
        recipe = _recorded_recipe(teacher_path)
        if recipe is not None:  # how the teacher was trained: the recipe's name and values
            models.extra_summary["teacher_recipe"] = recipe
        if cfg.kd_loss in FEATURE_KD_NAMES:  # a teacher without stage features fails before the folder is written
            from .feature_kd import probe_levels

            probe_levels(models.teacher, (3, data.image_size, data.image_size), role="teacher")
        if checkpoint is not None:
            models.teacher_top1 = checkpoint["meta"].get("teacher_top1")
    # The engine writes config.json (rank 0, holding the folder's lock) once it has checked every setting
    # against the data and the models; a run resumed without a checkpoint (resume=None) starts again.
    return train(cfg, models, data, folder, resume=checkpoint, reporter=reporter, stop_after=stop_after)


def _resume_config(folder: RunDir, epochs_override: int | None, extend: bool = False
                   ) -> tuple[TrainConfig, dict[str, Any]]:
    """The saved settings and ``last.pt`` of a run to resume; ``--epochs`` may change its length (saved back).

    A finished run is reopened for more epochs only with ``extend``: its schedule is recomputed for the new
    length (the lr rises again under one-cycle or cosine) and its recorded result is replaced."""
    cfg, checkpoint = folder.load_resume()
    done = int(checkpoint["meta"].get("epoch", 0)) if checkpoint is not None else 0
    if epochs_override is not None and epochs_override != cfg.epochs:
        if epochs_override < done:
            raise UserError(f"--epochs {epochs_override} is below the {done} epochs {folder.path} has done; a run "
                            "cannot be shortened")
        if done >= cfg.epochs and not extend:
            raise UserError(f"{folder.path} finished its {cfg.epochs} epochs; --epochs {epochs_override} would reopen "
                            f"it on a schedule recomputed for {epochs_override} epochs (the lr rises again) and "
                            "replace its result. Add --extend to do that, or start a new run (e.g. --config "
                            f"{folder / CONFIG_FILE} --epochs {epochs_override} --out NEW)")
        cfg = cfg.replace(epochs=TrainConfig(epochs=epochs_override).epochs)  # checked like any setting
        cfg.save(folder / CONFIG_FILE)
    return cfg, checkpoint


def quick_top1(model: nn.Module, data: ImageDataset, device: str = "auto") -> float:
    """Test top-1 (percent) of ``model`` on ``data`` with the device loader."""
    from .data import DeviceLoader

    dev = resolve_device(device)
    loader = DeviceLoader(data.test_images, data.test_labels, batch_size=EVAL_BATCH, mean=data.mean, std=data.std,
                          train=False, device=dev)
    return evaluate(model.to(dev), loader, device=dev)["top1"]
