"""Data-parallel training across processes (PyTorch DDP), launched by ``torchrun``.

``torchrun --nproc-per-node N -m mmfuse train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and the rendezvous address; :func:`start` joins the process group (gloo on CPU, nccl on CUDA, each
rank on GPU ``LOCAL_RANK``). Without those variables everything here is the single-process case.

Every rank reads its share of each *global* batch (``batch_size`` samples in the order one process
would read them, :class:`ShardedBatches`), and losses are normalised by the global count of what
they average (tokens, or samples), so N processes compute the same updates as one process at the
same global batch size, up to floating-point rounding (given the same batch statistics and dropout
masks: batch norm is per process on CPU, and each rank draws its own masks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mmfuse.errors import MmfuseError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes the run."""
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (themselves when not distributed)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def share(self, obj, src: int = 0):
        """``obj`` as rank ``src`` has it, on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def world_from_env() -> World:
    """The world ``torchrun`` describes in the environment (one process when it does not)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise MmfuseError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (if distributed) and return this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatches(Sampler[list[int]]):
    """Batches of the indices ``order`` yields, ``batch_size`` at a time (the last may be smaller):
    rank r of W takes positions r, r + W, r + 2W, ... of each batch. A last batch with fewer samples
    than ranks is left out (some rank would have none). ``start`` skips that many whole batches
    (resuming mid-epoch); the order is still drawn in full, so its generator moves as in an
    uninterrupted epoch.
    """

    def __init__(self, order: Sampler[int], batch_size: int, world: World):
        self.order, self.batch_size, self.world = order, batch_size, world
        self.start = 0

    def __len__(self) -> int:
        return self.batches() - self.start

    def batches(self) -> int:
        """Batches in a whole epoch."""
        full, rest = divmod(len(self.order), self.batch_size)  # type: ignore[arg-type]
        return full + (rest >= self.world.size)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.order)
        for b in range(self.start, self.batches()):
            yield indices[b * self.batch_size:(b + 1) * self.batch_size][self.world.rank::self.world.size]
