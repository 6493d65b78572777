"""Small collective helpers for ``torchrun`` runs (identity in a single process).

NCCL only reduces CUDA tensors, gloo CPU ones: every helper moves its tensor to the process
group's device and back, so callers need not care which backend runs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> tuple[int, int, int]:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1): NCCL when CUDA is
    available, gloo otherwise. Returns (rank, world size, local rank); (0, 1, 0) in a single
    process, where nothing is initialised."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, on ``x``'s device."""
    if not is_distributed():
        return x
    y = x.detach().to(_comm_device()).clone()
    dist.all_reduce(y)
    return y.to(x.device)


def world_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (for logging)."""
    return all_sum(x) / dist.get_world_size() if is_distributed() else x


def world_gather(x: Tensor) -> Tensor:
    """1-D ``x`` (same length on every rank) concatenated over ranks, on the CPU."""
    x = x.detach()
    if not is_distributed():
        return x.cpu()
    y = x.to(_comm_device())
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y)
    return torch.cat(parts).cpu()


def all_finite(total: Tensor) -> bool:
    """Whether the loss is finite on every rank (all ranks skip a bad step together)."""
    ok = torch.isfinite(total.detach()).float().reshape(1)
    if is_distributed():
        ok = ok.to(_comm_device())
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)
