"""Runs launched by torchrun (or `accelerate launch`, Slurm `srun torchrun`): rank, world size, a barrier.

torch.distributed is the engine (no scheduler of our own): torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; we join the process group with NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from ..errors import UsageError

# A rank that finishes early waits this long at a barrier for the others (evaluation shards can be uneven).
BARRIER_TIMEOUT = datetime.timedelta(hours=int(os.environ.get("AVSR_DIST_TIMEOUT_HOURS", "6")))


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_world() -> World | None:
    """The world torchrun describes in the environment, or None for a plain single process."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if size <= 1:
        return None
    if not 0 <= rank < size:
        raise UsageError(f"RANK {rank} is outside WORLD_SIZE {size}")
    return World(rank, size, local)


def join(world: World) -> None:
    """Join the process group (once): NCCL when CUDA is there, else gloo."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)


def barrier(world: World) -> None:
    """Wait for every rank. With gloo, a rank that died or hangs is named (monitored_barrier)."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=BARRIER_TIMEOUT)
    else:
        dist.barrier()


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
