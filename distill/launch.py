"""Where this process stands under ``torchrun``, read from the environment torchrun sets.

Kept apart from :mod:`distill.dist` (which needs torch) so that the CLIs can ask before anything heavy is
imported: ``--help`` and the first printed line must not wait for torch.
"""

from __future__ import annotations

import os

__all__ = ["launch_rank", "launch_world_size"]


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before ``dist.setup`` joins the
    group: the CLIs use it to print from rank 0 only from their first line on."""
    return int(os.environ.get("RANK", "0"))


def launch_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun), readable before ``dist.setup``."""
    return int(os.environ.get("WORLD_SIZE", "1"))
