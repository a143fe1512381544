"""Checkpoints: an architecture description, a ``state_dict`` and metadata, safe to load.

Files are written atomically (temporary file in the same folder, fsync, ``os.replace``), so a crash never
leaves a half-written checkpoint behind, and read with ``torch.load(..., weights_only=True)``, so a file a
user hands us can never execute code. A student is rebuilt from its spec plus the recorded width of every
convolution, which is how a pruned student comes back.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .model import CifarResNet
from .spec import SpecError, parse_spec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_save",
    "load_file",
    "student_arch",
    "save_checkpoint",
    "load_checkpoint",
    "build_student",
]

CHECKPOINT_FORMAT = "distill-checkpoint/1"


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, truncated or not of the expected kind."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one of our checkpoint files with ``weights_only=True``; :class:`CheckpointError` if unusable."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated, corrupt or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a safe weights-only file ({first[:160]})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a distill checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "pass a file written by `distill run`, `distill teacher` or `prune`"
        )
    return obj


def student_arch(model: CifarResNet) -> dict[str, Any]:
    """The architecture description of a student: spec, classes and every convolution's width."""
    return {
        "family": "student",
        "spec": model.spec_name,
        "num_classes": model.num_classes,
        "drop_rate": model.drop_rate,
        "widths": model.widths,
    }


def build_student(arch: Mapping[str, Any]) -> CifarResNet:
    """Rebuild an (untrained) student from :func:`student_arch`'s description."""
    if arch.get("family") != "student":
        raise CheckpointError(f"not a student architecture: family {arch.get('family')!r}")
    try:
        return CifarResNet(
            parse_spec(arch["spec"]),
            num_classes=int(arch["num_classes"]),
            drop_rate=arch.get("drop_rate"),
            widths=arch.get("widths"),
        )
    except (KeyError, TypeError, SpecError) as err:
        raise CheckpointError(f"student architecture in checkpoint is invalid: {err}") from None


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    arch: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``model``'s weights with its architecture (``student_arch`` for students) and metadata.

    ``extra`` holds further weights-only-safe state (optimizer, schedule, EMA, RNG) for resuming.
    """
    if arch is None:
        if not isinstance(model, CifarResNet):
            raise TypeError("pass arch= for models that are not students")
        arch = student_arch(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"format": CHECKPOINT_FORMAT, "arch": dict(arch), "state_dict": state, "meta": dict(meta or {}), **extra}
    return atomic_save(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CifarResNet, dict[str, Any]]:
    """Load a student checkpoint: returns the rebuilt model (eval mode) and the whole checkpoint dict."""
    ckpt = load_file(path, map_location)
    model = build_student(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"weights in {path} do not fit its recorded architecture: {str(err)[:200]}") from None
    model.eval()
    return model, ckpt
