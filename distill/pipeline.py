"""From a :class:`TrainConfig` to a finished run: data, the model to train, the teacher, the run directory.

The CLIs' layer above the engine: the engine (:mod:`distill.engine`) trains whatever modules and data it is
given; this module decides them from names in the config (student spec, teacher name and store, data
source) and then calls the same :func:`distill.engine.train` that :func:`distill.fit` calls.

The teacher of ``distill run`` comes from ``--teacher-ckpt`` (a checkpoint or a run directory), else from
the teacher store (one finished ``distill teacher`` run per model, data and mode), else it is trained
first with the same engine, announced with its estimated cost, and put in the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import students
import teachers
from students.common.errors import UserError

from . import dist
from .config import TrainConfig
from .data import ImageDataset, default_cache_dir, load_dataset
from .device import resolve_device
from .batches import EVAL_BATCH
from .engine import Models, Reporter, evaluate, train
from .recipes import teacher_config
from .rundir import BEST_CKPT, CONFIG_FILE, LAST_CKPT, RunDir, Summary, find_checkpoint, is_complete

__all__ = [
    "load_data",
    "build_trainee",
    "resolve_teacher",
    "run_training",
    "teacher_store_dir",
    "find_checkpoint",
    "estimate_train_seconds",
]

_logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def load_data(cfg: TrainConfig, progress: ProgressFn | None = None) -> ImageDataset:
    """The run's data: decoded (or cached), optionally subset, optionally with a validation split."""
    data = load_dataset(cfg.data, download=True, progress=progress)
    if cfg.train_subset or cfg.test_subset:
        data = data.subset(train=cfg.train_subset, test=cfg.test_subset, seed=cfg.seed)
    if cfg.val_split:
        if cfg.val_split >= data.train_labels.numel():
            raise UserError(
                f"--val-split {cfg.val_split} leaves no training images (only {data.train_labels.numel()})"
            )
        data = data.split_validation(cfg.val_split, seed=cfg.seed)
    if cfg.num_classes is not None and cfg.num_classes != data.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes} but the data has {data.num_classes} classes")
    return data


def build_trainee(cfg: TrainConfig, data: ImageDataset) -> tuple[nn.Module, dict[str, Any], nn.Module | None]:
    """The model a run trains (a student, or the teacher for ``distill teacher``), its architecture, and
    the input adapter an upsample-mode teacher trains behind (None otherwise)."""
    if cfg.kind == "teacher":
        name = cfg.teacher
        if _is_student_name(name):
            model = students.create(name, num_classes=data.num_classes)
            return model, students.student_arch(model), None
        mode = cfg.teacher_mode or teachers.default_mode(name)
        model = teachers.create_teacher(
            name, data.num_classes, mode=mode, pretrained=cfg.teacher_pretrained, weights=cfg.teacher_weights,
            input_size=data.image_size,
        )
        arch = teachers.teacher_arch(name, data.num_classes, mode, data.image_size)
        adapter = teachers.InputAdapter(resize_to=arch["resize_to"]) if arch.get("resize_to") else None
        return model, arch, adapter
    if cfg.init_ckpt:
        model, _ = students.load_checkpoint(cfg.init_ckpt)
        if model.num_classes != data.num_classes:
            raise UserError(f"{cfg.init_ckpt} has {model.num_classes} classes but the data has {data.num_classes}")
    else:
        model = students.create(cfg.student, num_classes=data.num_classes, max_params=cfg.max_params)
    return model, students.student_arch(model), None


def check_names(cfg: TrainConfig) -> None:
    """Fail fast, before any data is decoded, on a malformed student or an unknown teacher name."""
    if cfg.kind == "run":
        students.resolve(cfg.student)
    if cfg.teacher:
        teachers.default_mode(cfg.teacher)  # raises TeacherError with close matches for unknown names


def _is_student_name(name: str) -> bool:
    try:
        students.resolve(name)
        return True
    except students.SpecError:
        return False


def _data_key(cfg: TrainConfig, data: ImageDataset) -> str:
    ident = {
        "data": os.path.abspath(cfg.data) if os.path.exists(cfg.data) else cfg.data,
        "train_subset": cfg.train_subset,
        "test_subset": cfg.test_subset,
        "val_split": cfg.val_split,
        "classes": list(data.classes),
        "size": data.image_size,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]


def teacher_store_dir(cfg: TrainConfig, data: ImageDataset, root: str | Path | None = None) -> Path:
    """Where the stored teacher for (teacher model, data, mode) lives."""
    root = Path(root) if root is not None else Path(os.environ.get("DISTILL_TEACHERS", default_cache_dir() / "teachers"))
    mode = cfg.teacher_mode or ("cifar" if _is_student_name(cfg.teacher) else teachers.default_mode(cfg.teacher))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.teacher)
    return root / f"{safe}__{mode}__{_data_key(cfg, data)}"


def estimate_train_seconds(model: nn.Module, cfg: TrainConfig, data: ImageDataset, steps: int = 3) -> float:
    """Seconds to train ``model`` for ``cfg.epochs`` epochs, extrapolated from a few timed steps."""
    device = resolve_device(cfg.device)
    model = model.to(device).train()
    batch = min(cfg.batch_size, data.train_labels.numel())
    x = torch.randn(batch, 3, data.image_size, data.image_size, device=device)
    y = torch.randint(0, data.num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: timing only, the weights do not move
    state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step pays one-off costs
            times.append(time.perf_counter() - start)
    model.load_state_dict(state)  # BN running statistics moved during timing
    per_image = sorted(times)[len(times) // 2] / batch
    return per_image * data.train_labels.numel() * cfg.epochs


def _frozen(model: nn.Module, arch: dict[str, Any], ckpt: dict[str, Any], data: ImageDataset) -> nn.Module:
    """Wrap a loaded teacher: inputs re-normalised from the student's statistics to those it was trained
    with (recorded in its checkpoint), and resized on the device in ``upsample`` mode."""
    meta = ckpt.get("meta", {})
    resize_to = None
    if arch.get("family") == "timm" and arch.get("mode") == "upsample":
        resize_to = int(arch.get("resize_to") or 224)
    return teachers.FrozenTeacher(
        model, student_mean=data.mean, student_std=data.std,
        teacher_mean=tuple(meta.get("data_mean", data.mean)), teacher_std=tuple(meta.get("data_std", data.std)),
        resize_to=resize_to, fold_bn=True,
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
    return _frozen(model, arch, ckpt, data)


def resolve_teacher(
    cfg: TrainConfig, data: ImageDataset, reporter: Reporter, *, store_root: str | Path | None = None,
    make_reporter: Callable[[str], Reporter] | None = None,
) -> tuple[nn.Module, str]:
    """The frozen teacher for a ``distill run`` and a line saying where it came from."""
    if cfg.teacher_ckpt:
        return load_teacher_checkpoint(cfg, data, cfg.teacher_ckpt), f"checkpoint {cfg.teacher_ckpt}"
    store = teacher_store_dir(cfg, data, store_root)
    if (store / BEST_CKPT).exists() and is_complete(store):
        return load_teacher_checkpoint(cfg, data, store), f"stored teacher {store}"
    teacher_cfg = teacher_config(cfg)
    model, _, adapter = build_trainee(teacher_cfg, data)
    reporter.message(f"timing a few training steps of {cfg.teacher} to estimate what training a teacher costs")
    seconds = estimate_train_seconds(model if adapter is None else nn.Sequential(adapter, model), teacher_cfg, data)
    reporter.message(
        f"no stored teacher for {cfg.teacher} on this data: training one first ({teacher_cfg.epochs} epochs, "
        f"{students.count_params(model):,} params, estimated {_duration(seconds)} on "
        f"{resolve_device(cfg.device).type}); it will be stored in {store}"
    )
    dist.barrier()  # every rank has looked at the store before rank 0 starts writing it
    resume = (store / LAST_CKPT).exists()
    run_training(teacher_cfg, store, resume=resume, reporter=make_reporter("teacher") if make_reporter else reporter)
    return load_teacher_checkpoint(cfg, data, store), f"trained and stored teacher {store}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
    after_backward: Callable[[nn.Module], None] | None = None,
) -> Summary:
    """Run (or resume) ``distill run`` / ``distill teacher`` into ``run_dir``; return the summary."""
    folder = RunDir(run_dir)
    checkpoint = None
    if resume:
        cfg, checkpoint = _resume_config(folder, epochs_override)
    check_names(cfg)
    dist.setup(resolve_device(cfg.device).type)
    if not resume:
        folder.check_new()
    dist.barrier()  # every rank has checked --out before rank 0 creates it
    data = load_data(cfg, progress)
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed decides
    model, arch, adapter = build_trainee(cfg, data)
    models = Models(model=model, arch=arch, input_adapter=adapter, after_backward=after_backward,
                    extra_summary={"classes": list(data.classes)})
    pruned = folder.prune_record()
    if pruned is not None:  # a pruned student's fine-tuning run: keep what pruning did
        models.extra_summary["pruned"] = pruned
    if cfg.uses_teacher:
        models.teacher, source = resolve_teacher(cfg, data, reporter, make_reporter=make_reporter)
        reporter.message(f"teacher: {source}")
        models.extra_summary["teacher_source"] = source
        if checkpoint is not None:
            models.teacher_top1 = checkpoint["meta"].get("teacher_top1")
    if not resume and dist.is_main():
        folder.create(cfg)
    dist.barrier()
    return train(cfg, models, data, folder, resume=checkpoint, reporter=reporter, stop_after=stop_after)


def _resume_config(folder: RunDir, epochs_override: int | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The saved settings and ``last.pt`` of a run to resume; ``--epochs`` may extend it (saved back)."""
    cfg, checkpoint = folder.load_resume()
    if epochs_override is not None and epochs_override != cfg.epochs:
        cfg = cfg.replace(epochs=epochs_override)
        cfg.save(folder / CONFIG_FILE)
    return cfg, checkpoint


def quick_top1(model: nn.Module, data: ImageDataset, device: str = "auto") -> float:
    """Test top-1 (percent) of ``model`` on ``data`` with the device loader."""
    from .data import DeviceLoader

    dev = resolve_device(device)
    loader = DeviceLoader(data.test_images, data.test_labels, batch_size=EVAL_BATCH, mean=data.mean, std=data.std,
                          train=False, device=dev)
    return evaluate(model.to(dev), loader, device=dev)["top1"]
