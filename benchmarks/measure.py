"""How the benchmark measures: timing statistics, memory, the CPU time a process got, the matmul
peak, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from asit.runtime import cpu_flags, cpu_name


def summarise(samples: list[float]) -> dict:
    """Median (the figure we report: robust to one slow step), min, max and count of timings."""
    if not samples:
        raise ValueError("no samples to summarise")
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def peak_rss_mib() -> float:
    """High-water resident memory of this process so far, in MiB (what the OS saw, torch's allocator
    included; tracemalloc sees only Python objects)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def current_rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def cpu_share(cpu_seconds: float, wall_seconds: float, threads: int) -> float:
    """CPU time a process got over wall time x its threads. Well under 1: other processes took the
    cores (or the threads idled), so the timing is pessimistic."""
    return cpu_seconds / (wall_seconds * threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, reps: int = 10) -> float:
    """FLOP/s of the fastest of `reps` square matmuls: what this device reaches at best, the denominator
    of the steps' utilisation."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):  # warm-up: thread pool, oneDNN kernel selection, CUDA context
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        synchronize(device)
        tic = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return 2 * size**3 / min(times)


def worker_peak(spec: dict) -> dict:
    device = torch.device(spec["device"])
    return {name: matmul_peak(dtype, device, spec["size"], spec["reps"])
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def machine() -> dict:
    info = {"cpu": cpu_name(), "cpu_flags": sorted(cpu_flags()), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_1min": load_average()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> float | None:
    """The 1-minute load average: other processes running on the same cores slow every figure here."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
