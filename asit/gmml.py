"""GMML (group masked model learning) corruption of spectrogram views, as in ASiT.

Groups of connected pixels are corrupted, not single tokens, so that the student must recover the missing
content from its context rather than by interpolating from neighbouring pixels of the same patch. Each sample
of each view gets one kind of corruption: zeros (0 in normalised space, about the dataset mean) or alien
content (the same-position pixels of another sample's clean view).

Blocks are random rectangles added one after the other until the corrupted fraction reaches a target drawn per
view: the mask is the union of the first k candidate blocks, for the smallest k that reaches the target. The
fraction is therefore >= target and overshoots it by less than the area of the last block, i.e. by less than
max_block_frac**2 (sides are at least one pixel, or one patch when aligned, so the bound fails only on an axis
where max_block_frac is under that unit). If all `max_blocks` candidates together fall short, all are used.

The random numbers of a sample depend only on (seed, step, sample_id, view): they are drawn on the CPU from
`numpy.random.default_rng([seed, step, sample_id, view])`, so a sample gets the same blocks whatever its position
in the batch and whichever process holds it. Only the alien donor depends on the local batch (it must be in it).
The masks themselves are built batched on the views' device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import pair

# Candidate blocks are processed in chunks of this many bits of an int64 bitset, block j of a chunk as bit
# _BITS-1-j. Integers below 2**53 convert to float64 exactly, so the float's exponent field (1023 + highest set
# bit) exactly identifies the first block covering a pixel: _EXP_FIRST - j for block j, 0 for none.
_BITS = 53
_EXP_FIRST = 1023 + _BITS - 1


@dataclass
class GMMLConfig:
    enabled: bool = True  # False: views pass through uncorrupted, masks all zero (the "no corruption" ablation)
    p_alien: float = 0.5  # probability that a sample's view gets alien content rather than zeros
    zeros_ratio: tuple[float, float] = (0.5, 0.7)  # target corrupted fraction ~ U(lo, hi) for the zeros kind
    alien_ratio: tuple[float, float] = (0.3, 0.3)  # same for the alien kind
    min_block_frac: float = 0.1  # block side, as a fraction of its axis
    max_block_frac: float = 0.3
    # Candidate blocks per view. With the defaults (mean block ~4% of the view) the 0.7 target takes ~27 blocks
    # (99th percentile ~45, on 128x592), and 128 blocks cover >80% of any view.
    max_blocks: int = 128
    align_to_patches: bool = False  # ablation: block sides and corners on the patch grid
    token_mask_threshold: float = 0.5  # a token is corrupted when at least this fraction of its pixels is
    # Differently corrupted copies of each clean view, all trained against one teacher pass (EAT and
    # data2vec 2.0 amortise the teacher, the data loading and the fbank over 8-16 copies); 1 is ASiT's.
    copies: int = 1

    def __post_init__(self):
        for name in ("zeros_ratio", "alien_ratio"):
            value = getattr(self, name)
            if len(value) != 2 or not 0.0 <= value[0] <= value[1] <= 1.0:
                raise ValueError(f"GMMLConfig.{name} must be [lo, hi] with 0 <= lo <= hi <= 1, got {value!r}")
            setattr(self, name, (float(value[0]), float(value[1])))  # YAML gives lists
        for name in ("min_block_frac", "max_block_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"GMMLConfig.{name} must be in (0, 1], got {getattr(self, name)!r}")
        if self.min_block_frac > self.max_block_frac:
            raise ValueError(
                f"GMMLConfig.min_block_frac ({self.min_block_frac}) must be <= max_block_frac ({self.max_block_frac})"
            )
        if not 0.0 <= self.p_alien <= 1.0:
            raise ValueError(f"GMMLConfig.p_alien must be in [0, 1], got {self.p_alien!r}")
        if self.copies < 1:
            raise ValueError(f"GMMLConfig.copies must be >= 1, got {self.copies!r}")
        if self.max_blocks < 1:
            raise ValueError(f"GMMLConfig.max_blocks must be >= 1, got {self.max_blocks!r}")
        # 0 would mark every token, corrupted or not.
        if not 0.0 < self.token_mask_threshold <= 1.0:
            raise ValueError(f"GMMLConfig.token_mask_threshold must be in (0, 1], got {self.token_mask_threshold!r}")


@dataclass
class Corruption:
    views: torch.Tensor  # [B, 1, F, T] corrupted
    pixel_mask: torch.Tensor  # [B, 1, F, T] bool, True = corrupted
    token_mask: torch.Tensor  # [B, N] bool, N = (F/p)*(T/p), frequency rows outer, time inner (PatchEmbed order)
    alien: torch.Tensor  # [B] bool, which samples got alien content


@dataclass
class _Plan:
    """Per-sample random choices, numpy arrays; blocks in drawing order and in pixels."""

    alien: np.ndarray  # [B] bool
    target: np.ndarray  # [B] float64, corrupted fraction to reach
    donor: np.ndarray  # [B] int64, local batch index of the alien donor (never the sample itself)
    top: np.ndarray  # [B, K] int64
    height: np.ndarray  # [B, K] int64
    left: np.ndarray  # [B, K] int64
    width: np.ndarray  # [B, K] int64


def _sides(u_size: np.ndarray, u_start: np.ndarray, length: int, unit: int, cfg: GMMLConfig):
    """Block sides uniform on [min, max]_block_frac of the axis and starts uniform over valid positions, in units."""
    n = length // unit
    # Floor the largest side so that a block never exceeds max_block_frac (this bounds the overshoot); the
    # epsilons keep e.g. 0.1 * 130 = 13.000000000000002 from rounding up.
    hi = max(1, math.floor(cfg.max_block_frac * n + 1e-9))
    lo = min(hi, max(1, math.ceil(cfg.min_block_frac * n - 1e-9)))
    size = lo + np.floor(u_size * (hi - lo + 1)).astype(np.int64)
    start = np.floor(u_start * (n - size + 1)).astype(np.int64)
    return start * unit, size * unit


def _plan(cfg: GMMLConfig, F: int, T: int, patch: tuple[int, int], seed: int, step: int, ids: Sequence[int],
          view: int):
    B, K = len(ids), cfg.max_blocks
    # Block k uses u[3 + 4k : 7 + 4k], so the first blocks do not change with max_blocks.
    u = np.stack([np.random.default_rng([seed, step, i, view]).random(3 + 4 * K) for i in ids])  # [B, 3 + 4K]
    # Without another sample in the batch there is no donor: fall back to zeros.
    alien = (u[:, 0] < cfg.p_alien) & (B > 1)
    lo = np.where(alien, cfg.alien_ratio[0], cfg.zeros_ratio[0])
    hi = np.where(alien, cfg.alien_ratio[1], cfg.zeros_ratio[1])
    target = lo + u[:, 1] * (hi - lo)
    # An offset in 1..B-1 never points at the sample itself.
    donor = (np.arange(B) + 1 + np.floor(u[:, 2] * (B - 1)).astype(np.int64)) % max(B, 1)
    blocks = u[:, 3:].reshape(B, K, 4)
    unit = patch if cfg.align_to_patches else (1, 1)
    top, height = _sides(blocks[..., 0], blocks[..., 2], F, unit[0], cfg)
    left, width = _sides(blocks[..., 1], blocks[..., 3], T, unit[1], cfg)
    return _Plan(alien, target, donor, top, height, left, width)


def _bitset(start: torch.Tensor, size: torch.Tensor, length: int) -> torch.Tensor:
    """[b, n] block spans -> [b, length] int64 with bit _BITS-1-j set where block j covers the position."""
    b, n = start.shape
    # The first block gets the highest bit, so the first block covering a pixel is its highest set bit.
    bits = (2 ** torch.arange(_BITS - 1, _BITS - 1 - n, -1, device=start.device)).expand(b, n)  # [b, n]
    # Difference array: +bit where a block starts, -bit just past its end; the running sum is the bitset (the
    # bits are distinct, so sums are ors). O(b * (n + length)) rather than an [b, n, length] comparison.
    delta = torch.zeros(b, length + 1, dtype=torch.long, device=start.device)
    delta.scatter_add_(1, start, bits).scatter_add_(1, start + size, -bits)
    return delta.cumsum(1)[:, :length]


def _group_mask(plan: _Plan, F: int, T: int, device: torch.device) -> torch.Tensor:
    """Union of the first k blocks of each sample, k the smallest reaching its target: [B, F, T] bool.

    Per chunk of blocks, each pixel gets a bitset of the blocks covering it (row bitset & column bitset), whose
    highest bit is the first covering block; a per-sample histogram of first blocks gives the coverage after each
    prefix of blocks. This takes a few passes over [B, F, T] instead of [B, max_blocks, F, T] booleans. Samples
    whose target is reached stop; the others go on to the next chunk.
    """
    top, height, left, width = (torch.from_numpy(a).to(device) for a in (plan.top, plan.height, plan.left, plan.width))
    B, K = top.shape
    target = torch.from_numpy(plan.target * (F * T)).to(device)  # [B] pixels
    mask = torch.zeros(B, F, T, dtype=torch.bool, device=device)
    covered = torch.zeros(B, dtype=torch.long, device=device)  # pixels covered by the blocks of earlier chunks
    todo = torch.nonzero(target > 0).flatten()  # samples that still need blocks
    for k0 in range(0, K, _BITS):
        if todo.numel() == 0:
            break
        n, k1 = todo.numel(), min(K, k0 + _BITS)
        rows = _bitset(top[todo, k0:k1], height[todo, k0:k1], F)  # [n, F]
        cols = _bitset(left[todo, k0:k1], width[todo, k0:k1], T)  # [n, T]
        hits = rows[:, :, None] & cols[:, None, :]  # [n, F, T]
        if k0 > 0:  # pixels of earlier chunks are counted already (todo samples took all their blocks)
            hits.masked_fill_(mask[todo], 0)
        first = hits.double().view(torch.int64).bitwise_right_shift_(52)  # [n, F, T] exponent fields
        ones = torch.ones((), dtype=torch.long, device=device).expand(n, F * T)
        counts = torch.zeros(n, _EXP_FIRST + 1, dtype=torch.long, device=device)
        counts.scatter_add_(1, first.view(n, -1), ones)  # [n, _EXP_FIRST + 1] pixels per exponent field
        gained = counts.flip(1)[:, : k1 - k0]  # [n, k1 - k0] pixels first covered by block j of the chunk
        coverage = covered[todo, None] + gained.cumsum(1)  # [n, k1 - k0] after blocks 0..j
        reached = coverage >= target[todo, None]
        done = reached.any(1)
        taken = torch.where(done, reached.int().argmax(1) + 1, k1 - k0)  # [n] blocks of this chunk used
        mask[todo] |= first > (_EXP_FIRST - taken)[:, None, None]
        covered[todo] = coverage[:, -1]
        todo = todo[~done]
    return mask


def corrupt(
    views: torch.Tensor,
    cfg: GMMLConfig,
    patch_size: int | tuple[int, int],
    seed: int,
    step: int,
    sample_ids: torch.Tensor | Sequence[int],
    view: int,
) -> Corruption:
    """Corrupt clean views of one view index (call once per view index, since `view` enters the seed).

    views: [B, 1, F, T]; sample_ids: [B] global dataset indices, the same on every process; patch_size:
    one number, or (frequency, time).
    """
    if views.ndim != 4:
        raise ValueError(f"views must be [B, 1, F, T], got shape {tuple(views.shape)}")
    B, _, F, T = views.shape
    pf, pt = pair(patch_size)
    if F % pf or T % pt:
        raise ValueError(f"spectrogram size F={F}, T={T} must be a multiple of patch_size={patch_size}")
    ids = [int(i) for i in (sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else sample_ids)]
    if len(ids) != B:
        raise ValueError(f"got {len(ids)} sample_ids for a batch of {B}")
    if min([seed, step, view, *ids]) < 0:
        raise ValueError("seed, step, view and sample_ids must be non-negative (they seed numpy's rng)")
    nF, nT = F // pf, T // pt
    if not cfg.enabled:
        return Corruption(
            views=views,
            pixel_mask=torch.zeros(B, 1, F, T, dtype=torch.bool, device=views.device),
            token_mask=torch.zeros(B, nF * nT, dtype=torch.bool, device=views.device),
            alien=torch.zeros(B, dtype=torch.bool, device=views.device),
        )

    # no_grad rather than inference_mode: the corrupted views feed the student's forward pass with autograd on,
    # which refuses inference tensors.
    with torch.no_grad():
        plan = _plan(cfg, F, T, (pf, pt), seed, step, ids, view)
        pixel_mask = _group_mask(plan, F, T, views.device)[:, None]  # [B, 1, F, T]
        alien = torch.from_numpy(plan.alien).to(views.device)  # [B]
        donor = torch.from_numpy(plan.donor).to(views.device)  # [B]
        fill = torch.where(alien[:, None, None, None], views[donor], 0.0)
        corrupted = torch.where(pixel_mask, fill, views)  # x: [B, 1, F, T]
        # Corrupted pixels per patch, compared as counts so that thresholds like 1.0 are exact.
        counts = pixel_mask.view(B, nF, pf, nT, pt).sum((2, 4), dtype=torch.int32)  # [B, nF, nT]
        token_mask = (counts >= cfg.token_mask_threshold * pf * pt).flatten(1)  # [B, nF * nT]
    return Corruption(views=corrupted, pixel_mask=pixel_mask, token_mask=token_mask, alien=alien)
