"""torch.distributed helpers: one code path for CPU, one GPU, and torchrun (DDP; nccl on CUDA, gloo on CPU)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ctxssl_cli.devices import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_pref: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    device = resolve_device(device_pref)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def gather_with_grad(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate `t` from every rank along dim 0 (equal sizes), keeping the autograd graph.

    torch.distributed.nn.functional.all_gather is an all_gather whose backward reduce-scatters (sums) the
    gradients: rank r receives the sum over all ranks of the gradient w.r.t. its own slice, i.e. the gradient
    of the sum of all ranks' losses w.r.t. its local rows. With each rank's loss a mean over its own rows and
    DDP averaging parameter gradients over ranks, the result equals the single-process gradient of the
    global-batch loss (no 1/world_size error; checked by tests/test_train.py with 2 gloo processes).
    """
    if not info.distributed:
        return t
    import torch.distributed.nn.functional as dist_nn  # here: torch builds without distributed lack it

    with warnings.catch_warnings():
        # Recent torch (2.14 here) marks it deprecated in favour of torch.distributed._functional_collectives, a
        # private module; this public, documented function is kept (same gradients; gloo and nccl alike).
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_gather is deprecated")
        parts = dist_nn.all_gather(t)  # world_size tensors shaped like t
    return torch.cat(parts, dim=0)  # (world * n, ...)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is True on any rank (e.g. a Ctrl-C seen by one process)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
