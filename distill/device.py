"""The machine and code a run executes on: device choice, and the names recorded in every summary."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch
from torch import nn

from students.common.errors import UserError

__all__ = ["resolve_device", "device_name", "git_commit", "channels_last_safe", "memory_format_for", "autocast",
           "SAFE_MULTIPLE"]

SAFE_MULTIPLE = 8  # channel counts that oneDNN's channels-last convolutions handle on every torch we use
MIN_STRIDED_1X1_INPUT = 16  # fewer input channels into a 1x1 stride-2 convolution crash oneDNN on some CPUs


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


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA only: on CPU it is slower than fp32 for these convolutions."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def memory_format_for(channels_last: bool) -> torch.memory_format:
    """The memory format a model and its batches take: channels-last, or torch's default."""
    return torch.channels_last if channels_last else torch.contiguous_format


def channels_last_safe(model: nn.Module, device: torch.device | str) -> bool:
    """Whether ``model`` may run in channels-last on ``device``: always on CUDA; on CPU only when every
    convolution's channel counts are multiples of 8 (the first layer's image channels excepted) and no
    strided 1x1 convolution (a downsampling shortcut) reads fewer than 16 channels.

    On CPU, oneDNN's channels-last convolutions crash for some shapes, and which ones depends on the CPU
    (torch 2.14.1, measured by running each convolution's backward in a subprocess). One AMD EPYC machine
    aborted on a 1x1 stride-2 convolution from 6 to 13 channels ("double free or corruption"), the widths
    unrounded pruning produces; another (AVX-512) segfaults on every 1x1 stride-2 convolution from 8
    channels (to 8, 16 or 32) whenever the batch is odd, and on none from 16, 24, ..., 56 channels. Such
    models train in the default format instead, about 1.3x slower on CPU (docs/RESULTS.md).
    """
    if torch.device(device).type != "cpu":
        return True
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    widths = all(m.out_channels % SAFE_MULTIPLE == 0 and (i == 0 or m.in_channels % SAFE_MULTIPLE == 0)
                 for i, m in enumerate(convs))
    shortcuts = all(m.in_channels >= MIN_STRIDED_1X1_INPUT for m in convs
                    if all(k == 1 for k in m.kernel_size) and any(s > 1 for s in m.stride))
    return widths and shortcuts
