"""torch.distributed for training: set up from torchrun's environment, rank helpers, tear down.

:func:`imagegpt.training.train` calls :func:`init_distributed` itself, so the same command trains on one process
or many. torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address); without them training
runs as a single process. The backend is NCCL on CUDA and gloo on CPU. Each rank reads its own part of every global
batch, gradients are averaged by DistributedDataParallel, and only rank 0 logs, shows progress and writes files.

One machine, 8 GPUs (an update sees ``batch_size * grad_accum * 8`` images)::

    torchrun --standalone --nproc_per_node 8 -m imagegpt train --config train.toml

Two machines with 8 GPUs each (run on both; ``--node_rank`` 0 on the one at ``HOST``)::

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m imagegpt train --config train.toml

CPU processes (gloo), e.g. to test on a laptop: ``torchrun --standalone --nproc_per_node 2 -m imagegpt
train --config train.toml --set device=cpu``. Resuming needs the same number of processes (the batch order
depends on it). With ``imagegpt`` installed, ``-m imagegpt train`` works in place of ``-m imagegpt
train``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "teardown", "env_rank", "env_world_size", "is_main_process",
           "all_gather_objects"]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size``, its local rank on the machine, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", 0))


def env_world_size() -> int:
    """The number of processes as torchrun set it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that prints and writes."""
    return (dist.get_rank() if dist.is_available() and dist.is_initialized() else env_rank()) == 0


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; raises ValueError for cuda without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here; use device = \"cpu\"")
    return torch.device(device)


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    Single process (no ``WORLD_SIZE`` > 1): no process group, the device from ``device``. Under torchrun on CUDA,
    each rank takes ``cuda:LOCAL_RANK`` and NCCL; on CPU, gloo. Reuses a process group that is already up.
    """
    world_size, rank, local_rank = env_world_size(), env_rank(), int(os.environ.get("LOCAL_RANK", 0))
    base = resolve_device(device)
    if world_size <= 1:
        return DistInfo(0, 0, 1, base, None)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if base.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                             "lower --nproc_per_node")  # fmt: skip
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)  # NCCL and all_gather_object use the current device
    backend = "nccl" if base.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, base)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), base, dist.get_backend())


def teardown() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
