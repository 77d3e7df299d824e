"""torch.distributed for the jobs that run under torchrun (record, train): one process group per job.

    dist = distributed.init("gloo")      # from torchrun's environment; a plain run is rank 0 of 1
    try:
        device = dist.device(device)     # cuda -> this rank's GPU
        torch.manual_seed(dist.seed(cfg.seed))
        ...
        dist.barrier()
    finally:
        dist.close()                     # destroys the group if init made it
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def env_rank() -> int:
    """This process's rank as torchrun sets it (0 without torchrun), before any process group exists."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # this job made the process group (and destroys it in `close`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """A per-rank seed: ranks draw different random numbers from one run seed."""
        return seed + self.rank

    def device(self, device: str | torch.device) -> torch.device:
        """`cuda` without an index is this rank's GPU (LOCAL_RANK) when there are several ranks."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and self.world > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (one small all-reduce)."""
        if self.world == 1:
            return bool(flag)
        dist = torch.distributed
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([int(bool(flag))], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init(backend: str | None = None) -> Dist:
    """Rank and world size: from an initialized process group, else from torchrun's environment
    (WORLD_SIZE > 1 creates the group). `backend` None: nccl on a CUDA machine (MIGMCUT_BACKEND=gloo
    forces gloo), else gloo."""
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MIGMCUT_BACKEND") != "gloo" else "gloo"
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, created=True)
