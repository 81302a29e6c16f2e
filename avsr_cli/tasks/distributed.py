"""Runs launched by torchrun (or `accelerate launch`, Slurm `srun torchrun`): rank, world size, a barrier.

torch.distributed is the engine (no scheduler of our own): torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; we join the process group with NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
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


def _device():
    """Where collective tensors live: NCCL moves only CUDA tensors, gloo CPU ones."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def broadcast_parameters(params: Sequence) -> None:
    """Give every rank rank 0's values of `params` (what DDP does when it wraps a model)."""
    import torch
    import torch.distributed as dist

    if not params:
        return
    flat = torch.cat([p.detach().reshape(-1).float() for p in params]).to(_device())
    dist.broadcast(flat, src=0)
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype))
            offset += p.numel()


def sum_gradients(params: Sequence, numbers: Sequence[float]) -> list[float]:
    """Sum the gradients of `params` over all ranks in one all_reduce (as DDP's reducer does once per
    optimizer step under no_sync), and `numbers` (losses to log) in another; returns the summed numbers.
    A parameter no rank gave a gradient keeps none, as in one process (AdamW then skips it: no decay, no
    moment update); one only some ranks used gets the others' zeros."""
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]).to(_device())
    dist.all_reduce(flat)
    used = [float(p.grad is not None) for p in params]
    summed = torch.tensor([*numbers, *used], dtype=torch.float64, device=_device())
    dist.all_reduce(summed)
    offset = 0
    for p, anyone in zip(params, summed[len(numbers) :].tolist(), strict=True):
        grad = flat[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype)
        p.grad = grad if anyone else None
        offset += p.numel()
    return summed[: len(numbers)].tolist()


def gather_texts(texts: list[str]) -> list[list[str]]:
    """Every rank's `texts`, in rank order (JSON over a byte tensor: no pickle between processes)."""
    import torch
    import torch.distributed as dist

    data = torch.tensor(list(json.dumps(texts).encode()), dtype=torch.uint8, device=_device())
    size = torch.tensor([data.numel()], device=_device())
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=_device())
    padded[: data.numel()] = data
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    texts_of = [bytes(part[: int(n.item())].tolist()).decode() for part, n in zip(parts, sizes, strict=True)]
    return [json.loads(t) for t in texts_of]


@contextlib.contextmanager
def distributed_run() -> Iterator[World | None]:
    """The torchrun world, joined for the block and left after it (None, and nothing done, outside
    torchrun). A collective that fails (a rank died, or a timeout) becomes one clear error."""
    world = launched_world()
    if world is None:
        yield None
        return
    import torch.distributed as dist

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
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
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
