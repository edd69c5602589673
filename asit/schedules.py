"""Per-step schedules derived from the planned number of steps, so a short run has the shape of a long one."""

from __future__ import annotations

import numpy as np


def cosine(start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from `warmup_start` to `start`, then a half cosine from `start` to `end`."""
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    t = np.arange(total_steps - warmup_steps) / max(1, total_steps - warmup_steps - 1)
    decay = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))
    return np.concatenate([warmup, decay])[:total_steps]


def linear_then_constant(start: float, end: float, total_steps: int, ramp_steps: int) -> np.ndarray:
    """Linear from `start` to `end` over `ramp_steps`, then `end` (the teacher temperature)."""
    ramp = np.linspace(start, end, ramp_steps, endpoint=False)
    return np.concatenate([ramp, np.full(max(0, total_steps - ramp_steps), end)])[:total_steps]


def momentum_for_half_life(half_life_steps: float) -> float:
    """The EMA momentum m whose half-life, ln 0.5 / ln m steps, is `half_life_steps`."""
    if half_life_steps <= 0:
        raise ValueError(f"a half-life must be positive, got {half_life_steps}")
    return 0.5 ** (1.0 / half_life_steps)
