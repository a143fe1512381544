"""The machine and code a run executes on: device choice, and the names recorded in every summary."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.common.errors import UserError

__all__ = ["resolve_device", "device_name", "git_commit", "channels_last_safe", "memory_format_for", "autocast",
           "autocast_enabled", "configure_kernels", "on_cpu", "keep_head_fp32", "classifier_of", "FP32Head",
           "CPU_AUTOCAST", "SAFE_MULTIPLE"]

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
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


# bf16 autocast runs on CUDA only: on a CPU it is slower than fp32 for these convolutions. The tests switch it on
# for the CPU too, so the CUDA path (teacher forward, student step, every loss, the cache) runs in the suite.
CPU_AUTOCAST = False


def autocast_enabled(device: torch.device, amp: bool) -> bool:
    """Whether a run with ``amp`` computes in bf16 autocast on ``device``."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and CPU_AUTOCAST))


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast where :func:`autocast_enabled` says so; a no-op context elsewhere."""
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=autocast_enabled(device, enabled))


class FP32Head:
    """Marks a classifier head whose forward runs in float32 under autocast (see :func:`keep_head_fp32`)."""


@functools.lru_cache(maxsize=None)
def _fp32_class(cls: type) -> type:
    def forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        kind = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(kind, enabled=False):
            return cls.forward(self, x.float(), *args, **kwargs)

    return type(f"FP32{cls.__name__}", (cls, FP32Head), {"forward": forward, "__module__": cls.__module__})


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The layer that produces the logits: timm's ``get_classifier()``, else the model's last ``nn.Linear``
    (also after BatchNorm folding, whose torch.fx graph keeps the submodules)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def keep_head_fp32(model: nn.Module) -> bool:
    """Run ``model``'s classifier in float32 under bf16 autocast, so the logits the losses see (student and
    teacher alike) are not rounded to bf16's 8 bits of mantissa first. The head's class becomes a subclass
    whose forward switches autocast off: its weights, state_dict and checkpoints are unchanged, and copies
    (EMA) keep it. False when no classifier was found."""
    head = classifier_of(model)
    if head is None:
        return False
    if not isinstance(head, FP32Head):
        head.__class__ = _fp32_class(type(head))
    return True


def configure_kernels(device: torch.device, *, deterministic: bool = False) -> None:
    """How CUDA picks its kernels. By default cuDNN benchmarks the convolution algorithms for each shape once
    and keeps the fastest (the shapes of a run repeat every step); ``deterministic`` asks for reproducible
    kernels instead, slower, so that two runs with the same seed agree bit for bit on the GPU as they do
    on a CPU at a fixed thread count. Nothing changes on a CPU."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's reproducible workspace
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def on_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts, lists and tuples of tensors, as an optimizer's state_dict) with every tensor copied
    to the CPU: a checkpoint then loads anywhere with a plain ``torch.load``; loading it into an optimizer
    moves each state back to its parameter's device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


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
