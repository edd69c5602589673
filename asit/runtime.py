"""How a run executes, apart from what it computes: numeric precision and per-step seeding."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `auto|bf16|fp16|fp32`, or None for fp32.

    auto: bf16 on CPU and on GPUs that support it; fp16 (with a grad scaler) on older GPUs.
    """
    if precision == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(module)`, with every part that fails to compile (no C++ compiler, an unsupported
    op) run eagerly with a warning instead of stopping the run."""
    torch._dynamo.config.suppress_errors = True
    return torch.compile(module)


def step_seed(*parts: int) -> int:
    """A seed for the global RNG from (seed, step, rank, ...): stochastic depth and dropout draw from
    it, and seeding it per step makes a resumed run draw what an uninterrupted one would have."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
