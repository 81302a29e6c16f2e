"""Runs launched by torchrun (or `accelerate launch`, Slurm `srun torchrun`): rank, world size, a barrier.

torch.distributed is the engine (no scheduler of our own): torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; we join the process group with NCCL on GPUs and gloo on CPUs. The gradient
collectives of data-parallel training are `avsr_cli.tasks.training.distributed`.

torch is imported inside the functions: the CLI asks `launched_world()` before it sizes the thread pools,
which torch reads once, when it is imported.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import AvsrError, UsageError

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
    import torch  # lazy: see the module docstring
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)


def barrier(world: World) -> None:
    """Wait for every rank. With gloo, a rank that died or hangs is named (monitored_barrier)."""
    import torch.distributed as dist  # lazy: see the module docstring

    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=BARRIER_TIMEOUT)
    else:
        dist.barrier()


def leave() -> None:
    import torch.distributed as dist  # lazy: see the module docstring

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run() -> Iterator[World | None]:
    """The torchrun world, joined for the block and left after it (None, and nothing done, outside
    torchrun). A collective that fails (a rank died, or a timeout) becomes one clear error."""
    world = launched_world()
    if world is None:
        yield None
        return
    import torch.distributed as dist  # lazy: see the module docstring

    join(world)
    try:
        yield world
    except dist.DistError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AvsrError(
            f"rank {world.rank} of {world.size}: lost contact with the other ranks ({reason}); a rank died "
            f"or one waited longer than {BARRIER_TIMEOUT} (AVSR_DIST_TIMEOUT_HOURS). Rerun the same command "
            "to resume."
        ) from exc
    finally:
        leave()


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m avsr_cli ARGV` in `nproc` processes on this machine, as `torchrun --standalone
    --nproc-per-node N` does (torch's elastic launcher, no restarts). Returns 0, or the exit status of a rank
    that failed on its own (it printed its error); a rank killed by a signal is an AvsrError naming it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # lazy: module docstring
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its report is ours below
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "avsr_cli", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode
        raise AvsrError(
            f"rank {rank} of {nproc} (pid {failure.pid}) was killed ({failure.signal_name()}), so the run "
            "stopped; rerun the same command to resume from the last saved state"
        ) from None
    return 0
