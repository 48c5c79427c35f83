"""Multi-process training through torch.distributed, as launched by `torchrun`.

`torchrun --nproc_per_node=N -m nmt train RECIPE` starts N copies of `nmt train` with RANK,
LOCAL_RANK and WORLD_SIZE set (and MASTER_ADDR/PORT, or a rendezvous for several nodes); this
module turns that environment into a process group. Without it, training runs in one process
and every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Validation runs on rank 0 while the others wait in a collective: allow it to be long.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(device_type: str) -> World:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return world


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (one small collective)."""
    if not world.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(flag: bool, world: World, device: torch.device) -> bool:
    """Rank 0's decision, for every rank."""
    if not world.active:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_number(value: float, world: World, device: torch.device) -> float:
    """Rank 0's value, for every rank."""
    if not world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
