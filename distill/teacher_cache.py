"""Pay for the teacher once: its logits for a run's batches, recorded by the first run and replayed by the rest.

Why: on a CPU the teacher's forward pass is half of a ``resnet50 -> r4_3323`` KD step, and every run against
the same teacher pays it again: seeds of initialisation, losses, temperatures, KD weights, learning rates,
pruning recovery, ablations. But the device loader's batches are a pure function of the data, the stream seed
(``data_seed``, else ``seed``), the epoch and the augmentation and mixing settings
(:class:`~distill.data.DeviceLoader`, :class:`~distill.mixing.BatchMixer`), so the teacher's outputs on them
are too. The first run that feeds a teacher a batch stream records the logits of each step, one file per
epoch; every later run with the same stream and teacher replays them instead of running the teacher. This is
what FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022) does for
ImageNet crops. A cache per sample index (torchdistill's) is wrong under random augmentation and mixing;
this one is keyed by the whole stream.

Exact. The logits are stored as the float32 tensor the loss sees, so a replayed step computes what a live
step computes, bit for bit. The key (:func:`stream_key`) holds everything that changes the images or the
teacher's numbers: the teacher's content (weights, buffers, architecture and the source of its classes), the
training images and their normalisation, the stream seed, batch size, drop-last, crop, flip, cutout, mixing,
world size and rank, the device type, the teacher's memory format and autocast, and the torch version. As a
second line of defence each stored batch carries a random projection of its images, checked against the
batch at hand before its logits are used (on the CPU every batch; on CUDA the first batch of an epoch at once
and the rest when the epoch ends, so the GPU never waits per step): a stream that differs in a way the key
missed is caught, never trained on.

Safe. One file per epoch, written atomically and sealed with a SHA-256 of its contents that is checked on
every read: a damaged or partial file is removed and the teacher runs live for that epoch, recording it
again. Two runs filling one entry write identical files; the last rename wins. A run killed while recording
loses only the epoch in flight (it resumes from its checkpoint and records that epoch again). The cache lives
in ``<data cache>/teacher-outputs`` and is bounded (``$DISTILL_TEACHER_CACHE_GB``, default 20 GB): the least
recently used entries are evicted. Failing to write the cache never stops a run: the teacher runs live.

Feature methods (``at``, ``fitnet``, ``kd+at``, ...) need the teacher's stage maps every step, so their
teacher runs live; the logits it computes are still recorded for later logit-only runs.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import logging
import math
import os
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.checkpoint import content_digest
from students.common.errors import UserError
from students.common.files import WriteError, atomic_write_bytes, atomic_write_text

from .config import TrainConfig
from .data import ImageDataset, default_cache_dir
from .device import FP32Head, autocast, autocast_enabled, keep_head_fp32
from .feature_kd import stage_features
from .launch import launch_rank, launch_world_size
from .mixing import MixConfig
from .plan import duration

__all__ = ["CACHE_DIR", "LIMIT_ENV_VAR", "TeacherCacheMismatch", "TeacherOutputs", "CacheEntry", "CachePlan",
           "cache_root", "limit_bytes", "teacher_fingerprint", "data_fingerprint", "stream_key", "eval_key",
           "plan_cache", "compiles_teacher", "bf16_weights_copy"]

_logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the key or the file layout changes: older entries are then never matched
CACHE_DIR = "teacher-outputs"
EVALS_DIR = "evals"  # the teacher's test top-1 per (teacher, test images): small JSON files
LIMIT_ENV_VAR = "DISTILL_TEACHER_CACHE_GB"
DEFAULT_LIMIT_GB = 20.0
_PROJECTION_SEED = 0x7EAC4E  # the fixed random projection that fingerprints each stored batch
_CHECK_RTOL, _CHECK_ATOL = 1e-4, 1e-2  # a projection moves by O(10) when one crop, flip or box differs

TeacherOutput = tuple["torch.Tensor | None", dict[int, torch.Tensor]]  # logits, and stage maps by level


class TeacherCacheMismatch(UserError):
    """A cache entry did not match the batches it was replayed for (found on CUDA at the epoch's end)."""


# ------------------------------------------------------------------------------------------ the cache key


class _Memo:
    """Digests of live objects, recomputed when any of their tensors changes in place (``_version``).

    Keyed by ``id`` with a weak reference to check the object is still the one hashed: ids are reused once an
    object dies, and a stale digest would replay another teacher's outputs.
    """

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref, tuple[int, ...], str]] = {}

    def get(self, obj: Any, versions: tuple[int, ...]) -> str | None:
        item = self._items.get(id(obj))
        if item is not None and item[0]() is obj and item[1] == versions:
            return item[2]
        return None

    def put(self, obj: Any, versions: tuple[int, ...], digest: str) -> str:
        self._items = {k: v for k, v in self._items.items() if v[0]() is not None}
        self._items[id(obj)] = (weakref.ref(obj), versions, digest)
        return digest


_TEACHERS, _DATA = _Memo(), _Memo()


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 of what decides a teacher's outputs: its weights and buffers, its architecture (``repr``), the
    source of every non-torch module class in it (a custom teacher's forward) and the code of torch.fx graphs."""
    tensors = [*teacher.parameters(), *teacher.buffers()]
    versions = tuple(t._version for t in tensors)
    cached = _TEACHERS.get(teacher, versions)
    if cached is not None:
        return cached
    state = {f"p:{n}": t for n, t in teacher.named_parameters()}
    state.update({f"b:{n}": t for n, t in teacher.named_buffers()})
    code: dict[str, str] = {}
    for name, module in teacher.named_modules():
        cls = type(module)
        if isinstance(module, torch.fx.GraphModule):
            code[f"fx:{name}"] = module.code  # BatchNorm folding (teachers.FrozenTeacher) generates this
        elif not cls.__module__.startswith("torch.") and f"{cls.__module__}.{cls.__qualname__}" not in code:
            try:
                code[f"{cls.__module__}.{cls.__qualname__}"] = inspect.getsource(cls)
            except (OSError, TypeError):  # defined interactively: its name and weights must do
                code[f"{cls.__module__}.{cls.__qualname__}"] = ""
    digest = content_digest({"format": FORMAT, "repr": repr(teacher), "state": state, "code": code})
    return _TEACHERS.put(teacher, versions, digest)


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> str:
    """SHA-256 of a split's images and labels and the normalisation its batches get (about 0.1 s per 150 MB)."""
    versions = (images._version, labels._version, id(labels))
    key = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    cached = _DATA.get(images, versions + tuple(hash(k) for k in key))
    if cached is not None:
        return cached
    digest = content_digest({"images": images, "labels": labels, "mean": list(key[0]), "std": list(key[1])})
    return _DATA.put(images, versions + tuple(hash(k) for k in key), digest)


def _execution(cfg: TrainConfig, device: torch.device, teacher_channels_last: bool) -> dict[str, Any]:
    """How the teacher's numbers are computed: what, beside its weights and inputs, moves their last bits."""
    cast = autocast_enabled(device, cfg.amp)
    return {"device": device.type, "teacher_channels_last": bool(teacher_channels_last), "bf16_autocast": cast,
            **({"fp32_head": True} if cast else {}), "torch": torch.__version__}


def stream_key(cfg: TrainConfig, *, teacher: nn.Module, data: ImageDataset, device: torch.device,
               teacher_channels_last: bool, world_size: int = 1, rank: int = 0,
               compiled_teacher: bool = False) -> dict[str, Any]:
    """Everything that changes the images a run's teacher sees, or the teacher's numbers on them.

    ``compiled_teacher``: the teacher runs through ``torch.compile`` (``--compile``, logit methods), whose
    fused kernels may round otherwise: its logits get an entry of their own.

    What does not change them is left out, so those runs share an entry: the student, its loss, temperature
    and KD weight, the optimiser, lr and schedule, EMA, the number of epochs, label smoothing (it changes the
    targets, not the images), ``seed`` when ``data_seed`` is set, and mixing probabilities when nothing mixes.
    """
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    return {
        "format": FORMAT,
        "teacher": teacher_fingerprint(teacher),
        "data": data_fingerprint(data.train_images, data.train_labels, data.mean, data.std),
        "num_classes": data.num_classes,
        "stream_seed": cfg.stream_seed,
        "batch_size": cfg.batch_size,
        "drop_last": True,  # training batches are always full (distill.batches)
        "crop_padding": cfg.crop_padding,
        "flip": cfg.flip,
        "cutout": cfg.cutout,
        "mixup": cfg.mixup if mixing else 0.0,
        "cutmix": cfg.cutmix if mixing else 0.0,
        "mix_prob": cfg.mix_prob if mixing else None,
        "mix_switch_prob": MixConfig().switch_prob if mixing else None,
        "world_size": world_size,
        "rank": rank,
        **_execution(cfg, device, teacher_channels_last),
        **({"compiled_teacher": True} if compiled_teacher else {}),
    }


def eval_key(cfg: TrainConfig, *, teacher: nn.Module, data: ImageDataset, device: torch.device,
             teacher_channels_last: bool, eval_batch: int) -> dict[str, Any]:
    """What decides the teacher's test top-1: the teacher, the test images, their batches and the numerics."""
    return {
        "format": FORMAT,
        "teacher": teacher_fingerprint(teacher),
        "test": data_fingerprint(data.test_images, data.test_labels, data.mean, data.std),
        "eval_batch": eval_batch,
        **_execution(cfg, device, teacher_channels_last),
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------ the store


def cache_root() -> Path:
    """Where entries live: ``<data cache>/teacher-outputs`` (``$DISTILL_CACHE``, else ``~/.cache/distill``)."""
    return default_cache_dir() / CACHE_DIR


def limit_bytes() -> int:
    """The cache's size limit: ``$DISTILL_TEACHER_CACHE_GB`` gigabytes (default 20); refused in one line if bad."""
    text = os.environ.get(LIMIT_ENV_VAR, "").strip()
    if not text:
        return int(DEFAULT_LIMIT_GB * 2**30)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{LIMIT_ENV_VAR}={text!r} is not a size in GB; set a number such as 20 (0 keeps nothing)")
    return int(value * 2**30)


def _folder_bytes(path: Path) -> int:
    total = 0
    for file in path.rglob("*"):
        try:
            total += file.stat().st_size if file.is_file() else 0
        except OSError:  # removed meanwhile by another run's eviction
            pass
    return total


class CacheEntry:
    """One batch stream's recorded teacher logits: ``<root>/<digest>/epoch-NNNN.pt`` and ``key.json``."""

    def __init__(self, key: dict[str, Any], root: Path | None = None) -> None:
        self.key = key
        self.digest = _digest(key)
        self.root = root if root is not None else cache_root()
        self.path = self.root / self.digest

    def epoch_file(self, epoch: int) -> Path:
        """The file of epoch ``epoch`` (0-based; the name counts from 1, as the metrics do)."""
        return self.path / f"epoch-{epoch + 1:04d}.pt"

    def has_epoch(self, epoch: int) -> bool:
        return self.epoch_file(epoch).is_file()

    def recorded(self, epochs: range) -> list[int]:
        """The epochs of ``epochs`` with a file (checked for damage only when replayed)."""
        return [e for e in epochs if self.has_epoch(e)]

    def touch(self) -> None:
        """Mark the entry as used now (eviction removes the least recently used first)."""
        try:
            os.utime(self.path / "key.json")
        except OSError:
            pass

    def load(self, epoch: int, shape: tuple[int, int, int], device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The logits (steps x batch x classes) and batch checks (steps x batch) of ``epoch``, on ``device``;
        None when the epoch is not stored. A damaged, partial or foreign file is removed (and logged)."""
        path = self.epoch_file(epoch)
        if not path.is_file():
            return None
        why = None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or corrupt: torch raises several types
            obj, why = None, f"unreadable ({type(err).__name__})"
        if why is None:
            why = self._damage(obj, epoch, shape)
        if why is not None:
            _logger.warning("teacher cache file %s is %s: removed; the teacher runs live for epoch %d and it is "
                            "recorded again", path, why, epoch + 1)
            _unlink(path)
            return None
        return obj["logits"].to(device), obj["checks"].to(device)

    def _damage(self, obj: Any, epoch: int, shape: tuple[int, int, int]) -> str | None:
        """Why ``obj`` cannot be replayed for ``epoch`` at ``shape``, or None when it can."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("key") != self.digest:
            return "not an entry of this cache key"
        if obj.get("epoch") != epoch + 1:
            return f"the file of epoch {obj.get('epoch')}, not {epoch + 1}"
        logits, checks = obj.get("logits"), obj.get("checks")
        if not (isinstance(logits, torch.Tensor) and isinstance(checks, torch.Tensor)):
            return "missing its tensors"
        if tuple(logits.shape) != shape or tuple(checks.shape) != shape[:2] or logits.dtype != torch.float32:
            return f"of shape {tuple(logits.shape)}, not {shape}"
        body = {k: v for k, v in obj.items() if k != "sha256"}
        if content_digest(body) != obj.get("sha256"):
            return "damaged (its SHA-256 does not match)"
        return None

    def save(self, epoch: int, logits: torch.Tensor, checks: torch.Tensor) -> None:
        """Write ``epoch``'s file atomically, sealed with its SHA-256 (:class:`WriteError` when it cannot)."""
        body = {"format": FORMAT, "key": self.digest, "epoch": epoch + 1, "logits": logits.float().cpu().contiguous(),
                "checks": checks.float().cpu().contiguous()}
        body["sha256"] = content_digest(body)
        buffer = io.BytesIO()
        torch.save(body, buffer)
        key_file = self.path / "key.json"
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps(self.key, indent=2, sort_keys=True) + "\n")
        atomic_write_bytes(self.epoch_file(epoch), buffer.getbuffer())

    def discard(self) -> None:
        """Remove the whole entry (it did not match the batches it was keyed for)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def size_bytes(self) -> int:
        return _folder_bytes(self.path) if self.path.is_dir() else 0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def evict(root: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries of ``root`` (never ``keep``) until it holds at most ``limit``
    bytes; the removed entries' folders."""
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if path.is_dir() and path.name != EVALS_DIR:
            try:
                used = (path / "key.json").stat().st_mtime if (path / "key.json").exists() else path.stat().st_mtime
            except OSError:
                continue
            entries.append((used, path, _folder_bytes(path)))
    total = sum(size for _, _, size in entries)
    removed = []
    for _, path, size in sorted(entries):
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        shutil.rmtree(path, ignore_errors=True)
        total -= size
        removed.append(path)
    return removed


def epoch_bytes(steps: int, batch: int, classes: int) -> int:
    """About what one epoch's file takes on disk: float32 logits and one check per image, plus headers."""
    return steps * batch * (classes + 1) * 4 + 4096


# ------------------------------------------------------------------------------------------ the loop's source


def _projection(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The fixed random C x H x W weights whose dot product with an image fingerprints it."""
    generator = torch.Generator().manual_seed(_PROJECTION_SEED)
    return torch.randn(tuple(shape), generator=generator).to(device)


def compiles_teacher(cfg: TrainConfig, feature_method: bool) -> bool:
    """Whether a run's frozen teacher runs through ``torch.compile``: with ``--compile``, for logit methods
    (a feature method's stage maps come from hooks on the eager teacher, distill.feature_kd)."""
    return cfg.compile and not feature_method


def bf16_weights_copy(teacher: nn.Module) -> nn.Module:
    """A copy of the frozen ``teacher`` whose convolution and linear weights (not the fp32 classifier head,
    see :func:`~distill.device.keep_head_fp32`) are bf16, for its forward pass under bf16 autocast. Autocast
    casts an fp32 weight to bf16 on every call (it caches casts only of weights that require gradients);
    cast once, the outputs are the same bit for bit and each step skips one kernel per layer. Normalisation
    layers keep fp32 parameters, as autocast runs them. The caller's module is left as it was."""
    runner = copy.deepcopy(teacher)
    for module in runner.modules():
        # Exact types only: a subclass may use its weight otherwise (timm's StdConv2d standardises it first).
        if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear) and not isinstance(module, FP32Head):
            module.to(torch.bfloat16)
    return runner


class TeacherOutputs:
    """The teacher's outputs for every step of an epoch: live from the teacher, or replayed from the cache.

    The training loop calls :meth:`begin_epoch`, then the object once per batch (after mixing: the teacher
    sees what the students see), then :meth:`end_epoch`. Per epoch it is in one of three modes:

    - ``replay``: the epoch is in the cache entry; the teacher does not run;
    - ``record``: the teacher runs and its logits are stored when the epoch ends;
    - ``live``: the teacher runs (no cache, ``teacher_cache`` off, or a feature method's epoch already stored).

    Args:
        teacher: the frozen teacher, placed on ``device``.
        device, amp: where and how it runs (bf16 autocast on CUDA when ``amp``).
        levels: the stage maps feature losses need every step (then it always runs).
        entry: the cache entry of this run's batch stream; None runs it live.
        compile: run the teacher through ``torch.compile`` (logits only; the entry's key must say so).
    """

    def __init__(self, teacher: nn.Module, *, device: torch.device, amp: bool = True, levels: Sequence[int] = (),
                 entry: CacheEntry | None = None, compile: bool = False) -> None:
        self.teacher, self.device, self.amp = teacher, device, amp
        self.levels = sorted(set(levels))
        # Under bf16 autocast the frozen teacher runs from a copy whose convolution and linear weights are
        # bf16 already: autocast would cast the same fp32 weights again on every step, to the same numbers.
        self._runner = bf16_weights_copy(teacher) if autocast_enabled(device, amp) else teacher
        # compile: see compiles_teacher (the caller decides, as the entry's key must say)
        self._logits_of = torch.compile(self._runner) if compile and not self.levels else self._runner
        self.entry = entry
        self.recording = entry is not None  # off once the cache cannot take more (limit, disk)
        self.counts = {"replayed": 0, "recorded": 0, "live": 0}
        self.mode = "live"
        self._epoch, self._steps, self._step = 0, 0, 0
        self._stored: tuple[torch.Tensor, torch.Tensor] | None = None
        self._logits: list[torch.Tensor] = []
        self._checks: list[torch.Tensor] = []
        self._bad: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        if entry is not None:
            entry.touch()

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        """The live teacher on ``images``: logits, and the stage maps of :attr:`levels`."""
        with autocast(self.device, self.amp):
            if not self.levels:
                return self._logits_of(images), {}
            logits, maps = stage_features(self._runner, images, self.levels, role="teacher")
        return logits, dict(zip(self.levels, maps))

    def begin_epoch(self, epoch: int, steps: int) -> str:
        """Decide how epoch ``epoch`` (0-based, ``steps`` batches) gets its outputs; returns the mode."""
        self._epoch, self._steps, self._step = epoch, steps, 0
        self._stored, self._logits, self._checks, self._bad = None, [], [], None
        entry = self.entry
        if entry is None:
            self.mode = "live"
        elif not self.levels and (stored := entry.load(epoch, self._shape(steps), self.device)) is not None:
            self.mode, self._stored = "replay", stored
            self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        else:
            stored_already = self.levels and entry.has_epoch(epoch)
            self.mode = "record" if self.recording and not stored_already else "live"
        return self.mode

    def _shape(self, steps: int) -> tuple[int, int, int]:
        assert self.entry is not None
        return steps, int(self.entry.key["batch_size"]), int(self.entry.key["num_classes"])

    def __call__(self, images: torch.Tensor) -> TeacherOutput:
        step = self._step
        self._step += 1
        if self.mode == "replay":
            replayed = self._replay(step, images)
            if replayed is not None:
                return replayed
        logits, maps = self.forward(images)
        if self.mode == "record":
            self._logits.append(logits.detach().float())
            self._checks.append(self._check(images))
        return logits, maps

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if self._weights is None or self._weights.shape != images.shape[1:]:
            self._weights = _projection(images.shape[1:], images.device)
        return (images.float() * self._weights).sum(dim=(1, 2, 3))

    def _replay(self, step: int, images: torch.Tensor) -> TeacherOutput | None:
        """The stored logits of ``step`` when ``images`` are the batch they were recorded for; None (and the
        rest of the epoch recorded live) when they are not."""
        assert self._stored is not None and self._bad is not None
        logits, checks = self._stored
        if step >= logits.shape[0] or images.shape[0] != logits.shape[1]:
            self._mismatch(step, "more or other batches than recorded")
            return None
        ok = torch.isclose(self._check(images), checks[step], rtol=_CHECK_RTOL, atol=_CHECK_ATOL).all()
        if self.device.type == "cpu" or step == 0:  # a free check on the CPU; once per epoch on CUDA
            if not bool(ok):
                self._mismatch(step, "its images differ")
                return None
        else:
            self._bad |= ~ok
        return logits[step].clone(), {}

    def _mismatch(self, step: int, why: str) -> None:
        """The entry does not describe this stream (a setting its key misses): drop it, record this epoch."""
        assert self.entry is not None and self._stored is not None
        _logger.warning("teacher cache entry %s does not match batch %d of epoch %d (%s); removed, the teacher runs "
                        "live", self.entry.path, step + 1, self._epoch + 1, why)
        logits, checks = self._stored
        self.entry.discard()
        # The steps before this one matched: their stored outputs are this stream's, so the epoch is recorded
        # whole from them and the live teacher.
        self._logits = [logits[i] for i in range(min(step, logits.shape[0]))]
        self._checks = [checks[i] for i in range(min(step, logits.shape[0]))]
        self.mode, self._stored = ("record" if self.recording else "live"), None

    def end_epoch(self) -> str:
        """Finish the epoch: check what was replayed, store what was recorded. Returns ``replayed``,
        ``recorded`` or ``live`` (what the metrics record of the epoch says)."""
        if self.mode == "replay":
            assert self.entry is not None and self._bad is not None
            if bool(self._bad):
                self.entry.discard()
                raise TeacherCacheMismatch(
                    f"teacher cache entry {self.entry.path} did not match this run's batches in epoch "
                    f"{self._epoch + 1}; it was removed and the epoch was not saved: resume the run (the teacher "
                    "then runs live)")
            done = "replayed"
        elif self.mode == "record" and self._step == self._steps and len(self._logits) == self._steps:
            done = "recorded" if self._store() else "live"
        else:
            done = "live"
        self.counts[done] += 1
        self._stored, self._logits, self._checks = None, [], []
        return done

    def _store(self) -> bool:
        """Write the recorded epoch, keeping the cache under its limit; False (and recording off) when it
        cannot be written."""
        entry = self.entry
        assert entry is not None
        logits, checks = torch.stack(self._logits), torch.stack(self._checks)
        try:
            limit = limit_bytes()
            new = epoch_bytes(*logits.shape)
            if entry.size_bytes() + new > limit:
                self.recording = False
                _logger.warning("teacher cache: %s holds %.1f GB, the limit (%s=%s GB) leaves no room for epoch "
                                "%d; later epochs are not recorded", entry.path, entry.size_bytes() / 2**30,
                                LIMIT_ENV_VAR, limit / 2**30, self._epoch + 1)
                return False
            evict(entry.root, max(limit - new, 0), keep=entry.path)
            entry.save(self._epoch, logits, checks)
        except (WriteError, OSError) as err:
            self.recording = False
            _logger.warning("teacher cache: could not store epoch %d in %s (%s); training goes on, the teacher runs "
                            "live", self._epoch + 1, entry.path, err)
            return False
        return True

    def teacher_top1(self, measure: Callable[[], float], key: dict[str, Any] | None) -> float:
        """The teacher's test top-1: recorded under ``key`` by an earlier run, else ``measure()`` (and recorded)."""
        if key is None:
            return measure()
        path = (self.entry.root if self.entry is not None else cache_root()) / EVALS_DIR / f"{_digest(key)}.json"
        try:
            record = json.loads(path.read_text())
            if record.get("key") == key and isinstance(record.get("top1"), float):
                return record["top1"]
        except (OSError, ValueError, AttributeError):
            pass
        top1 = float(measure())
        try:
            atomic_write_text(path, json.dumps({"key": key, "top1": top1, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        except WriteError as err:
            _logger.warning("teacher cache: could not record the teacher's top-1 (%s)", err)
        return top1


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class CachePlan:
    """What the cache will do for a run: which epochs replay, what is recorded, what it saves."""

    state: str  # "replay", "record", "off", "features" (teacher live for its stage maps), "loader" (no key)
    epochs: int  # the run's epochs
    cached_epochs: int  # of those, already in the cache
    epoch_bytes: int  # one epoch's file
    entry: Path | None = None
    saved_s: float | None = None  # teacher forward time the replayed epochs skip (estimate)

    def line(self) -> str:
        """The plan's ``cache`` line."""
        if self.state == "off":
            return "teacher forward live on every step (--teacher-cache off)"
        if self.state == "loader":
            return "teacher forward live on every step (batches from a Python DataLoader have no cache key)"
        size = _mb(self.epoch_bytes)
        if self.state == "features":
            return (f"teacher forward live on every step (the feature method needs its stage maps); its logits are "
                    f"recorded for later logit-only runs ({size} per epoch, in {self.entry})")
        saved = f", saves about {_duration(self.saved_s)}" if self.saved_s else ""
        if self.cached_epochs:
            rest = self.epochs - self.cached_epochs
            recorded = f"; the other {rest} recorded" if rest else ""
            return (f"teacher forward replayed from the cache for {self.cached_epochs} of {self.epochs} epochs "
                    f"({_mb(self.cached_epochs * self.epoch_bytes)} in {self.entry}{saved}){recorded}")
        return (f"teacher forward live, its logits recorded for all {self.epochs} epochs "
                f"({_mb(self.epochs * self.epoch_bytes)} in {self.entry}); later runs with this teacher and these "
                "batches replay them")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


def _duration(seconds: float | None) -> str:
    return duration(seconds or 0.0)


def plan_cache(cfg: TrainConfig, teacher: nn.Module | None, data: ImageDataset, *, device: torch.device,
               teacher_channels_last: bool, feature_method: bool, teacher_forward_s: float = 0.0) -> CachePlan:
    """The cache's part of a run's plan; reads the cache, writes nothing. ``teacher`` None: it is trained
    first (nothing can be cached yet). ``teacher_forward_s``: seconds per image of its forward pass."""
    steps = data.train_labels.numel() // cfg.batch_size
    size = epoch_bytes(steps, cfg.batch_size, data.num_classes)
    if not cfg.teacher_cache:
        return CachePlan("off", cfg.epochs, 0, size)
    limit_bytes()  # a malformed limit is refused in the plan already
    entry = None
    if teacher is not None:  # rank 0's entry (the plan is rank 0's)
        if autocast_enabled(device, cfg.amp):
            keep_head_fp32(teacher)  # as the run will place it (distill.engine): the key sees the same module
        entry = CacheEntry(stream_key(cfg, teacher=teacher, data=data, device=device,
                                      teacher_channels_last=teacher_channels_last,
                                      world_size=launch_world_size(), rank=launch_rank(),
                                      compiled_teacher=compiles_teacher(cfg, feature_method)))
    where = entry.path if entry is not None else cache_root()
    if feature_method:
        return CachePlan("features", cfg.epochs, 0, size, where)
    cached = len(entry.recorded(range(cfg.epochs))) if entry is not None else 0
    saved = cached * steps * cfg.batch_size * teacher_forward_s
    return CachePlan("replay" if cached else "record", cfg.epochs, cached, size, where, saved or None)
