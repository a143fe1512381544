"""The machine and code a run executes on: device choice, and the names recorded in every summary."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch
from torch import nn

from students.common.errors import UserError

__all__ = ["resolve_device", "device_name", "git_commit", "channels_last_safe", "SAFE_MULTIPLE"]

SAFE_MULTIPLE = 8  # channel counts that oneDNN's channels-last convolutions handle on every torch we use


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


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


def channels_last_safe(model: nn.Module, device: torch.device | str) -> bool:
    """Whether ``model`` may run in channels-last on ``device``: always on CUDA; on CPU only when every
    convolution's channel counts are multiples of 8 (the first layer's image channels excepted).

    On CPU, oneDNN's channels-last convolutions crash for some widths that are not multiples of 8 (torch
    2.14.1: a 1x1 stride-2 convolution from 6 to 13 channels aborts with "double free or corruption"),
    which is what unrounded pruning produces; such models train in the default format instead.
    """
    if torch.device(device).type != "cpu":
        return True
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return all(m.out_channels % SAFE_MULTIPLE == 0 and (i == 0 or m.in_channels % SAFE_MULTIPLE == 0)
               for i, m in enumerate(convs))
