"""One process or many: the rank, world size and device of this process, and the few collectives the loop needs.

`torchrun --nproc-per-node N -m irtool train ...` (or multi-node torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables; `setup` reads them and joins the process group (NCCL on CUDA, gloo on CPU). Without them it is
a single process and every collective is a no-op.

Imports torch only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Dist:
    """This process's place in the run; joins the process group when launched by torchrun with WORLD_SIZE > 1."""
    from .policy import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", local)  # one GPU per process, picked by torchrun's local rank
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def teardown(ctx: Dist) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place (returns it)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_objects(ctx: Dist, obj: Any) -> list[Any]:
    """`obj` of every process, in rank order (on every process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
