"""One process or many (torchrun): the same code, gloo on CPU and nccl on GPUs.

Losses that average over a variable number of elements (corrupted pixels, corrupted tokens) divide by
the *global* count, so that N processes compute exactly what one process computes on the same global
batch; DDP then averages gradients, hence the factor `world_size` in `global_mean`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=cpu")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"train.device: expected auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def init(device: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


@contextmanager
def process_group(device: str = "auto"):
    """`init` for the length of a run. After a clean run every process waits for the others before
    leaving the group: one process destroying it while another is still at work (rank 0 writing the
    last checkpoint) can hang gloo (pytorch/pytorch#75097). After an error nobody waits: the other
    processes may never arrive, and torchrun stops them."""
    env = init(device)
    try:
        yield env
    except BaseException:
        shutdown()
        raise
    if dist.is_initialized():
        dist.barrier(device_ids=[env.device.index] if env.device.type == "cuda" else None)
    shutdown()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_gather_object(obj) -> list:
    """Every process's `obj`, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


def global_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over all processes' elements (weighted by a 0/1 mask if given), differentiable locally.

    Scaled by the world size because DDP averages the gradients of the processes.
    """
    if weights is None:
        local_sum, count = values.sum(), torch.tensor(float(values.numel()), device=values.device)
    else:
        local_sum, count = (values * weights).sum(), weights.sum().float()
    count = all_reduce_sum(count.detach()).clamp_min(1.0)
    return local_sum * world_size() / count
