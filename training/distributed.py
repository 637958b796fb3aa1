"""This process's place in a ``torchrun`` job (RANK and WORLD_SIZE set by torchrun, SLURM or Kubernetes
launchers): the process group (gloo on CPU, nccl on CUDA) and one device per rank (cuda:LOCAL_RANK).
Without those variables: rank 0 of a world of 1, no process group."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from folk_ros.core.clip import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank, world size and device (world 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device: str) -> DistInfo:
    """Join torchrun's process group when RANK and WORLD_SIZE are set (gloo on CPU, nccl on CUDA)."""
    dev = resolve_device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # one rank may spend minutes on its own work (feature files, a big scene) while the others wait
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    return DistInfo(rank, world, dev, True)


@contextlib.contextmanager
def distributed(device: str) -> Iterator[DistInfo]:
    """:func:`setup_distributed` for the block; the process group (if any) is destroyed when it ends.

    A block that ends normally first waits at a barrier: no rank tears its connections down while a
    peer may still be finishing the last collective (a gloo rank was seen to abort at exit without
    it). A block left by an exception skips the barrier, whose peers may never come."""
    env = setup_distributed(device)
    try:
        yield env
        env.barrier()
    finally:
        if env.enabled and dist.is_initialized():
            dist.destroy_process_group()
