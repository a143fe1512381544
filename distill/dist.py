"""Data-parallel training with PyTorch's own engine: ``torchrun`` plus DistributedDataParallel.

``torchrun --nproc_per_node=N -m distill run ...`` starts N processes; each finds its rank in the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins one process group (``nccl`` on
GPUs, ``gloo`` on CPUs, chosen automatically), trains on its own shard of every epoch and averages
gradients. ``--batch-size`` is per rank: the global batch is ``batch_size x world_size``, and ``--lr`` is
the learning rate for that global batch (scale it yourself when you change the number of GPUs).
Only rank 0 writes files and prints.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from students.common.errors import UserError

from .launch import launch_world_size

__all__ = ["DistInfo", "RankStopped", "RunStopped", "setup", "info", "is_main", "barrier", "all_reduce_sum",
           "is_peer_failure", "stop_listening"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


class RankStopped(Exception):
    """torchrun sent this rank SIGTERM: it stops the other workers when one of them fails."""


class RunStopped(UserError):
    """A data-parallel run ended early because a rank failed; the run directory is intact and resumable."""

    exit_code = 1


def _on_sigterm(signum, frame) -> None:
    stop_listening()  # one is enough: the rank is on its way out
    raise RankStopped("stopped by torchrun (SIGTERM)")


def _handle_sigterm(handler) -> None:
    if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
        signal.signal(signal.SIGTERM, handler)


def stop_listening() -> None:
    """Ignore torchrun's SIGTERM from now on: this rank has decided to stop and is saying why."""
    _handle_sigterm(signal.SIG_IGN)


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` says another rank went away (rather than a fault of this rank's own)."""
    if isinstance(err, (RankStopped, dist.DistError)):  # DistError covers NCCL's DistBackendError
        return True
    # gloo reports a dead peer as a plain RuntimeError from its transport.
    return isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for a single process)."""
    global _INFO
    if launch_world_size() <= 1:
        return _INFO
    if dist.is_initialized():
        return _INFO
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    # A rank that dies leaves the others waiting in a collective; the timeout turns that hang into an error.
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=int(os.environ.get("DISTILL_DIST_TIMEOUT_MIN", "10"))))
    _INFO = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    # torchrun stops the surviving workers with SIGTERM when one fails: turn that into an exception, so
    # checkpoint writes roll back (atomic_save) and the rank says where the run stands.
    _handle_sigterm(_on_sigterm)
    _logger.debug("rank %d of %d joined (%s)", _INFO.rank, _INFO.world_size, backend)
    return _INFO


def info() -> DistInfo:
    return _INFO


def is_main() -> bool:
    return _INFO.is_main


def barrier() -> None:
    if _INFO.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (and return it); identity for one process."""
    if _INFO.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    global _INFO
    if dist.is_initialized():
        dist.destroy_process_group()
    if _INFO.distributed:
        _handle_sigterm(signal.SIG_DFL)
    _INFO = DistInfo()
