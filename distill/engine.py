"""The training engine shared by ``distill run``, ``distill teacher`` and ``prune``'s fine-tuning.

Three plain functions do the work: :func:`train_one_epoch`, :func:`evaluate` and :func:`fit`. A run
directory holds ``config.json``, ``metrics.jsonl`` (one record per epoch), ``last.pt`` and ``best.pt``
(written atomically) and ``summary.json``. Each epoch's randomness (shuffle, crops, flips, mixing,
dropout) is reseeded from (seed, epoch), so a run resumed from ``last.pt`` continues exactly as if it had
never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import students
from students.checkpoint import atomic_save, load_file, save_checkpoint
from students.errors import UserError

from . import dist
from .config import TrainConfig
from .data import DeviceLoader, ImageDataset
from .losses import build_loss
from .mixing import BatchMixer, MixConfig
from .optim import build_optimizer, lr_at, set_lr

__all__ = [
    "RunError",
    "TrainingDiverged",
    "Reporter",
    "Run",
    "resolve_device",
    "predict",
    "evaluate",
    "train_one_epoch",
    "fit",
    "git_commit",
    "read_metrics",
]

_logger = logging.getLogger(__name__)

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
LAST_CKPT, BEST_CKPT = "last.pt", "best.pt"
PRUNE_RECORD = "prune.json"  # written by `prune` beside a pruned student's fine-tuning run
LOG_EVERY_STEPS = 10  # host synchronisations for progress and NaN checks happen only this often


class RunError(UserError):
    """A run directory that cannot be created, resumed or read."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Reporter(Protocol):
    """What the engine tells its caller (the CLI draws progress bars from it). All methods optional."""

    def message(self, text: str) -> None: ...
    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int, metrics: dict[str, float]) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def message(self, text: str) -> None:
        _logger.info(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def end_epoch(self, record: dict[str, Any]) -> None:
        pass


class _Null(_Silent):
    """Ranks other than 0 report nothing."""

    def message(self, text: str) -> None:
        pass


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool):
    # bf16 autocast on CUDA only: on CPU it is slower than fp32 for these convolutions.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed every generator the epoch draws from, as a pure function of (seed, epoch)."""
    value = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(value)
    np.random.seed(value)  # timm's Mixup draws lambda and boxes from numpy's global generator
    random.seed(value)


def git_commit() -> str:
    """Short commit of the code that ran, with ``+dirty`` when the tree has changes; ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@torch.no_grad()
def predict(model: nn.Module, loader: DeviceLoader, *, device: torch.device, amp: bool = True,
            tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every image of ``loader``; ``tta`` averages with the flipped image."""
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        for images, targets in loader:
            with _autocast(device, amp):
                logits = model(images).float()
                if tta:
                    logits = 0.5 * (logits + model(images.flip(3)).float())
            outputs.append(logits)
            labels.append(targets)
    finally:
        model.train(was_training)
    return torch.cat(outputs).cpu(), torch.cat(labels).cpu()


def evaluate(model: nn.Module, loader: DeviceLoader, *, device: torch.device, amp: bool = True,
             tta: bool = False) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    Under torchrun each rank evaluates its shard of ``loader`` and the sums are all-reduced, so every rank
    gets the figures for the whole set (every rank must call this).
    """
    logits, labels = predict(model, loader, device=device, amp=amp, tta=tta)
    sums = torch.tensor([
        (logits.argmax(1) == labels).sum().item(),
        nn.functional.cross_entropy(logits, labels, reduction="sum").item() if labels.numel() else 0.0,
        labels.numel(),
    ], dtype=torch.float64, device=device if dist.info().backend == "nccl" else "cpu")
    correct, loss_sum, count = dist.all_reduce_sum(sums).tolist()
    return {"top1": 100.0 * correct / max(count, 1), "loss": loss_sum / max(count, 1)}


def train_one_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    *,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_fn: Callable[[int], float],
    first_step: int,
    device: torch.device,
    teacher: nn.Module | None = None,
    mixer: BatchMixer | None = None,
    ema: Any | None = None,
    amp: bool = True,
    reporter: Reporter | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: mix once per batch, the same images to teacher and student, one step each.

    Losses are accumulated on the device; the host reads them only every ``LOG_EVERY_STEPS`` steps and at
    the end (to report progress and catch a NaN), so CUDA never waits on Python per step.
    """
    model.train()
    reporter = reporter or _Silent()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    seen = 0
    step = first_step
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        lr = lr_fn(step)
        set_lr(optimizer, lr)
        if mixer is not None and mixer.enabled:
            images, targets = mixer(images, labels)
        else:
            targets = labels
        with _autocast(device, amp):
            teacher_logits = teacher(images) if teacher is not None else None
            logits = model(images)
            parts = loss_fn(logits.float(), None if teacher_logits is None else teacher_logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if after_backward is not None:  # e.g. a sparsity regulariser adding to the gradients before the step
            after_backward(model)
        optimizer.step()
        if ema is not None:
            ema.update(model, step=step)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        hard = targets if targets.ndim == 1 else targets.argmax(1)
        correct += (logits.detach().argmax(1) == hard).sum()
        seen += labels.shape[0]
        step += 1
        if (i + 1) % LOG_EVERY_STEPS == 0 or i + 1 == len(loader):
            loss_now = dist.all_reduce_sum(parts["loss"].detach().float().clone()).item() / dist.info().world_size
            if not math.isfinite(loss_now):
                raise TrainingDiverged(
                    f"loss became {loss_now} at step {step}; lower --lr or check the data. "
                    "The last good checkpoint (last.pt) was kept."
                )
            elapsed = time.perf_counter() - start
            reporter.step(i + 1, {"loss": loss_now, "lr": lr, "img_s": seen / max(elapsed, 1e-9),
                                  "acc": 100.0 * correct.item() / seen})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    # Means over all ranks: per-rank sums of per-batch means, correct predictions and images, all-reduced.
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys] + [correct.float(), torch.tensor(float(seen), device=device)])
    totals = dist.all_reduce_sum(totals.double().cpu() if dist.info().backend == "gloo" else totals.double())
    world = dist.info().world_size
    n = len(loader) * world
    stats = {f"train_{k}": totals[j].item() / n for j, k in enumerate(keys)}
    correct_all, seen_all = totals[-2].item(), totals[-1].item()
    stats.update(train_top1=100.0 * correct_all / max(seen_all, 1), train_seconds=seconds,
                 train_img_s=seen_all / max(seconds, 1e-9), lr=lr_fn(step - 1), steps=step)
    return stats


@dataclass
class Run:
    """Everything :func:`fit` needs besides the config: the model to train and, for KD, the teacher."""

    model: nn.Module
    arch: dict[str, Any]
    teacher: nn.Module | None = None
    teacher_top1: float | None = None
    extra_summary: dict[str, Any] = field(default_factory=dict)
    input_adapter: nn.Module | None = None  # e.g. resizing for an upsample-mode teacher; has no weights
    after_backward: Callable[[nn.Module], None] | None = None  # called between backward and the step


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    tmp = run_dir / f".{METRICS_FILE}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, run_dir / METRICS_FILE)


def prepare_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    """Create a fresh run directory; refuse one that already holds a run (nothing is overwritten)."""
    if (run_dir / CONFIG_FILE).exists() or (run_dir / LAST_CKPT).exists():
        raise RunError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create run directory {run_dir}: {err.strerror}") from None
    cfg.save(run_dir / CONFIG_FILE)


def load_resume_state(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and last checkpoint of an interrupted run; :class:`RunError` when there is none."""
    if not run_dir.is_dir():
        raise RunError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"--resume {run_dir}: not a run directory (no {CONFIG_FILE})")
    if not (run_dir / LAST_CKPT).exists():
        raise RunError(f"--resume {run_dir}: the run has no checkpoint yet ({LAST_CKPT}); start it again instead")
    cfg = TrainConfig.load(run_dir / CONFIG_FILE)
    return cfg, load_file(run_dir / LAST_CKPT)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def fit(
    cfg: TrainConfig,
    run: Run,
    data: ImageDataset,
    run_dir: str | Path,
    *,
    resume: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``run.model`` per ``cfg`` on ``data``, writing the run directory; return the summary.

    ``resume`` is the ``last.pt`` checkpoint of the same run (see :func:`load_resume_state`).
    ``stop_after`` ends this invocation after that many epochs, resumable later (for time-limited jobs).
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    world = dist.setup(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    reporter = (reporter or _Silent()) if world.is_main else _Null()
    # Channels-last: faster convolutions with cuDNN and with oneDNN on CPUs (measured 1.28x for a student's
    # training step and 1.18x for teacher inference on the 2-core CI machine; docs/RESULTS.md).
    use_cl = cfg.channels_last
    model = run.model.to(device)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    train_loader = DeviceLoader(
        data.train_images, data.train_labels, batch_size=cfg.batch_size, mean=data.mean, std=data.std, train=True,
        device=device, crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout, seed=cfg.seed,
        channels_last=use_cl, rank=world.rank, world_size=world.world_size,
    )
    if len(train_loader) == 0:
        where = f" x {world.world_size} ranks" if world.distributed else ""
        raise UserError(
            f"--batch-size {cfg.batch_size}{where} is larger than the {data.train_labels.numel()} training images, "
            "so an epoch has no full batch; lower --batch-size or use fewer processes"
        )
    test_loader = DeviceLoader(
        data.test_images, data.test_labels, batch_size=max(cfg.batch_size, 500), mean=data.mean, std=data.std,
        train=False, device=device, channels_last=use_cl, rank=world.rank, world_size=world.world_size,
    )
    steps_per_epoch = len(train_loader)
    optimizer = build_optimizer(model, cfg)
    loss_fn = build_loss(  # without a teacher: (label-smoothed) cross-entropy
        cfg.kd_loss if run.teacher is not None else "ce",
        temperature=cfg.temperature, kd_weight=cfg.alpha, label_smoothing=cfg.label_smoothing,
    )
    mixer = BatchMixer(
        MixConfig(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                  label_smoothing=cfg.label_smoothing),
        num_classes=data.num_classes,
    )
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        # Warm-up lets the average follow the weights early on, so short runs still get a useful EMA.
        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    teacher = run.teacher.to(device) if run.teacher is not None else None
    if teacher is not None and use_cl:
        teacher = teacher.to(memory_format=torch.channels_last)
    adapter = run.input_adapter.to(device) if run.input_adapter is not None else None

    def with_adapter(net: nn.Module) -> nn.Module:
        return net if adapter is None else nn.Sequential(adapter, net)

    forward_model = with_adapter(model)
    train_model = forward_model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # The teacher is replicated on every rank, frozen and never wrapped: it has no gradients to average.
        train_model = DistributedDataParallel(forward_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    start_epoch, step, elapsed_before = 0, 0, 0.0
    best_top1, teacher_top1 = -1.0, run.teacher_top1
    records: list[dict[str, Any]] = []
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None and resume.get("ema_state_dict") is not None:
            ema.module.load_state_dict(resume["ema_state_dict"])
        meta = resume["meta"]
        # The step is recomputed from the epoch, so a checkpoint from N ranks resumes on M ranks (where an
        # epoch has a different number of steps) on the same point of the schedule.
        start_epoch = int(meta["epoch"])
        step = start_epoch * steps_per_epoch
        elapsed_before, best_top1 = float(meta["elapsed_s"]), float(meta["best_top1"])
        teacher_top1 = meta.get("teacher_top1", teacher_top1)
        rng = resume.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        # Drop records of epochs that ran after the checkpoint (a kill between the two writes).
        records = [r for r in read_metrics(run_dir) if r["epoch"] <= start_epoch]
        if world.is_main:
            _write_metrics(run_dir, records)
        reporter.message(f"resuming {run_dir} after epoch {start_epoch}/{cfg.epochs} (step {step})")
    elif teacher is not None and teacher_top1 is None:
        teacher_top1 = evaluate(teacher, test_loader, device=device, amp=cfg.amp)["top1"]
    if teacher is not None:
        reporter.message(f"teacher {cfg.teacher}: top-1 {teacher_top1:.2f}% on the {eval_label(cfg, data)}")

    lr_fn = lambda s: lr_at(cfg, s, steps_per_epoch)  # noqa: E731
    session_start = time.perf_counter()
    epochs_this_session = 0
    last_eval: dict[str, float] = {}
    saved_epoch = start_epoch
    try:
            for epoch in range(start_epoch, cfg.epochs):
                if stop_after is not None and epochs_this_session >= stop_after:
                    reporter.message(f"stopping after {stop_after} epoch(s) as asked; continue with --resume {run_dir}")
                    break
                _seed_epoch(cfg.seed, epoch)
                train_loader.set_epoch(epoch)
                loss_fn.set_epoch(epoch)  # DKD's warm-up of the distillation term
                epoch_start = time.perf_counter()
                reporter.start_epoch(epoch + 1, cfg.epochs, steps_per_epoch)
                stats = train_one_epoch(
                    train_model, train_loader, loss_fn=loss_fn, optimizer=optimizer, lr_fn=lr_fn, first_step=step,
                    device=device, teacher=teacher, mixer=mixer, ema=ema, amp=cfg.amp, reporter=reporter,
                    after_backward=run.after_backward,
                )
                step = int(stats.pop("steps"))
                record: dict[str, Any] = {"epoch": epoch + 1, **stats}
                is_last = epoch + 1 == cfg.epochs
                if (epoch + 1) % cfg.eval_every == 0 or is_last:
                    last_eval = evaluate(forward_model, test_loader, device=device, amp=cfg.amp)
                    record.update(test_top1=last_eval["top1"], test_loss=last_eval["loss"])
                    if ema is not None:
                        ema_eval = evaluate(with_adapter(ema.module), test_loader, device=device, amp=cfg.amp)
                        record["ema_top1"] = ema_eval["top1"]
                record["seconds"] = time.perf_counter() - epoch_start  # training plus evaluation
                improved = "test_top1" in record and record["test_top1"] > best_top1
                if improved:
                    best_top1 = record["test_top1"]
                records.append(record)
                if world.is_main:
                    _write_metrics(run_dir, records)
                elapsed = elapsed_before + time.perf_counter() - session_start
                meta = {"epoch": epoch + 1, "step": step, "elapsed_s": elapsed, "best_top1": best_top1,
                        "teacher_top1": teacher_top1, "config": cfg.to_dict(),
                        # The normalisation the weights were trained with: a teacher re-normalises its inputs by it.
                        "data_mean": list(data.mean), "data_std": list(data.std), "classes": list(data.classes)}
                if improved and world.is_main:
                    save_checkpoint(run_dir / BEST_CKPT, model, arch=run.arch, meta={**meta, "top1": best_top1})
                if world.is_main:
                    ema_state = None if ema is None else {
                        k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
                    save_checkpoint(
                        run_dir / LAST_CKPT, model, arch=run.arch, meta={**meta, "world_size": world.world_size},
                        optimizer=optimizer.state_dict(), rng=_rng_state(device), ema_state_dict=ema_state,
                    )
                saved_epoch = epoch + 1  # rank 0 has written it (the others learn of a failure at the next collective)
                reporter.end_epoch(record)
                epochs_this_session += 1
    except Exception as err:
        if not (world.distributed and dist.is_peer_failure(err)):
            raise
        dist.stop_listening()
        raise dist.RunStopped(_stopped_message(err, run_dir, world, saved_epoch)) from None

    done = bool(records) and records[-1]["epoch"] == cfg.epochs
    summary = _summary(cfg, run, forward_model, ema, test_loader, records, device, teacher_top1, best_top1,
                       elapsed_before + time.perf_counter() - session_start, done, data, loss_fn)
    summary["world_size"] = world.world_size
    if world.is_main:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    dist.barrier()  # nobody reads the run directory before rank 0 has written it
    return summary


def _stopped_message(err: BaseException, run_dir: Path, world: dist.DistInfo, saved_epoch: int) -> str:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0][:120]  # gloo prefixes its source location
    if saved_epoch:
        where = f"{run_dir / LAST_CKPT} holds epoch {saved_epoch}: continue with --resume {run_dir}"
    else:
        where = "no epoch had finished, so nothing was saved: run the same command again"
    return (f"rank {world.rank} of {world.world_size}: training stopped because another rank failed or torchrun "
            f"stopped the run ({reason}); the failing rank's error is above. {where}")


def eval_label(cfg: TrainConfig, data: ImageDataset) -> str:
    """What the reported top-1 is measured on, e.g. ``test set (10,000 images)``."""
    which = "validation split" if cfg.val_split else "test set"
    return f"{which} ({data.test_labels.numel():,} images)"


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _summary(cfg, run, model, ema, test_loader, records, device, teacher_top1, best_top1, wall_s, done, data,
             loss_fn):
    cost = students.cost_report(_unwrap(model))
    last = records[-1] if records else {}
    tta_top1 = None
    if done and cfg.tta:
        tta_top1 = evaluate(model, test_loader, device=device, amp=cfg.amp, tta=True)["top1"]
    train_rates = [r["train_img_s"] for r in records]
    summary = {
        "kind": cfg.kind,
        "complete": done,
        "epochs_done": last.get("epoch", 0),
        "epochs": cfg.epochs,
        "model": cfg.model_name,
        "arch": run.arch,
        "student": cfg.student if cfg.kind == "run" else None,
        "num_params": cost.num_params,
        "macs": cost.macs,
        "flops": cost.flops,
        "top1_last": last.get("test_top1"),
        "top1_best": best_top1 if best_top1 >= 0 else None,
        "top1_ema": last.get("ema_top1"),
        "top1_tta": tta_top1,
        "top1_unit": "percent",
        "eval_set": eval_label(cfg, data),
        "teacher": cfg.teacher if cfg.uses_teacher else None,
        "teacher_top1": teacher_top1 if cfg.uses_teacher else None,
        "kd": {"loss": cfg.kd_loss, "temperature": loss_fn.temperature, "alpha": loss_fn.kd_weight,
               "ce_weight": loss_fn.ce_weight} if cfg.uses_teacher else None,
        "mixing": {"mixup": cfg.mixup, "cutmix": cfg.cutmix, "prob": cfg.mix_prob},
        "train_img_s": float(np.median(train_rates)) if train_rates else None,
        "wall_s": wall_s,
        "device": device_name(device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "data": data.source,
        "train_images": int(data.train_labels.numel()),
        "test_images": int(data.test_labels.numel()),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **run.extra_summary,
    }
    return summary


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)
