"""Which memory format a (pruned) model may train in: channels-last only where every width is safe.

On CPU, oneDNN's channels-last convolutions corrupt memory or crash for some channel counts that are not
multiples of 8 (torch 2.14.1: a 1x1 stride-2 convolution from 6 to 13 or 6 to 16 channels aborts with
"double free or corruption"; 8 to 13, 10 to 16 and 12 to 20 run), which is exactly what unrounded pruning
produces. Widths that are all multiples of 8 are safe and fast; anything else trains in the default
(contiguous) format on CPU. CUDA is unaffected.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SAFE_MULTIPLE", "channels_last_safe"]

SAFE_MULTIPLE = 8


def channels_last_safe(model: nn.Module, device: torch.device | str) -> bool:
    """Whether ``model`` may run in channels-last on ``device``: always on CUDA; on CPU only when every
    convolution's channel counts are multiples of 8 (the first layer's image channels excepted)."""
    if torch.device(device).type != "cpu":
        return True
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return all(m.out_channels % SAFE_MULTIPLE == 0 and (i == 0 or m.in_channels % SAFE_MULTIPLE == 0)
               for i, m in enumerate(convs))
