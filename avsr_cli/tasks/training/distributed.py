"""Data-parallel training across torchrun ranks, as DDP does it: every rank starts from rank 0's
parameters, the gradients of an optimizer step are summed in one all_reduce, and validation transcripts are
gathered. The world itself (joining, barriers, launching) is `avsr_cli.tasks.distributed`."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import torch.distributed as dist


def _device() -> torch.device | str:
    """Where collective tensors live: NCCL moves only CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def broadcast_parameters(params: Sequence) -> None:
    """Give every rank rank 0's values of `params` (what DDP does when it wraps a model)."""
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
