"""How a run executes, apart from what it computes: numeric precision and per-step seeding."""

from __future__ import annotations

import platform
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch


# The instruction sets that decide which matmul kernels oneDNN runs on an x86 CPU: AMX tiles, AVX-512
# with bf16 dot products, plain AVX-512, AVX2.
KERNEL_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The kernel-deciding flags this CPU has (of KERNEL_FLAGS), from /proc/cpuinfo; empty elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split()) & frozenset(KERNEL_FLAGS)
    return frozenset()


# bf16 matmuls run natively on these (AVX-512-BF16 dot products, AMX tiles); elsewhere oneDNN emulates
# them, slower than fp32.
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device, flags: frozenset[str] | None = None) -> torch.dtype | None:
    """The autocast dtype for `auto|bf16|fp16|fp32`, or None for fp32.

    auto: on a GPU, bf16 where supported, else fp16 (with a grad scaler); on a CPU, bf16 where the CPU
    has native bf16 matmuls (FAST_BF16_FLAGS in `flags`, this machine's cpu_flags() by default), else fp32.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if FAST_BF16_FLAGS & (cpu_flags() if flags is None else flags) else None
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
