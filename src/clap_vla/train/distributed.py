"""torch.distributed plumbing: `torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK; a plain run is rank 0 of 1.

Backend: nccl when the device is CUDA, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009  (immutable)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", threads: int = 0) -> DistInfo:
    """Initialise the process group when launched by torchrun (idempotent); pick the device; with
    threads > 0 limit PyTorch's intra-op CPU threads of this process to that many."""
    if threads > 0:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def global_count(count: torch.Tensor) -> torch.Tensor:
    """The denominator that makes a masked mean under DDP equal to the single-process mean over the
    whole global batch: (sum of the ranks' counts) / world size. DDP averages gradients over ranks,
    so rank r's loss sum_r / that denominator averages to sum_all / count_all. Returns a float
    tensor; unchanged outside training (no grad: evaluation runs on rank 0 alone) and without a
    process group. Every rank must call it in the same order (it is a collective)."""
    count = count.detach().float()
    if not (dist.is_available() and dist.is_initialized()) or not torch.is_grad_enabled():
        return count
    world = dist.get_world_size()
    if world == 1:
        return count
    total = count.clone()
    dist.all_reduce(total)
    return total / world


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}
