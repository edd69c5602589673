"""1. The pretraining step: `Pretrainer.train_step` timed on an in-memory batch, where its time goes,
and its FLOPs."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from .flops import step_flops
from .measure import cpu_share, current_rss_mib, peak_rss_mib, summarise, synchronize

ROOT = Path(__file__).resolve().parents[1]


class PhaseClock:
    """Where a step's time goes, from hooks on the teacher, student, loss and optimizer (the training
    code is left as it is). Phases: before the teacher (batch to device, corruption), teacher forward,
    student forward, losses, after the losses until the optimizer (zero_grad, backward, clipping),
    optimizer, after it (EMA)."""

    PHASES = ("corrupt", "teacher_forward", "student_forward", "losses", "backward_clip", "optimizer", "ema")

    def __init__(self, trainer, device: torch.device):
        self.device = device
        self.marks: dict[str, float] = {}
        for name, module in (("teacher", trainer.teacher), ("student", trainer.student), ("losses", trainer.criterion)):
            module.register_forward_pre_hook(self._mark(f"{name}_start"))
            module.register_forward_hook(self._mark(f"{name}_end"))
        trainer.optimizer.register_step_pre_hook(self._mark("optimizer_start"))
        trainer.optimizer.register_step_post_hook(self._mark("optimizer_end"))

    def _mark(self, name: str):
        def hook(*_):
            synchronize(self.device)
            self.marks[name] = time.perf_counter()
        return hook

    def start(self) -> None:
        self.marks = {"start": time.perf_counter()}

    def phases(self, end: float) -> dict[str, float]:
        m = self.marks
        bounds = [m["start"], m["teacher_start"], m["teacher_end"], m["student_start"], m["student_end"],
                  m["losses_start"], m["losses_end"], m["optimizer_start"], m["optimizer_end"], end]
        pairs = [(0, 1), (1, 2), (3, 4), (5, 6), (6, 7), (7, 8), (8, 9)]
        return {name: bounds[b] - bounds[a] for name, (a, b) in zip(self.PHASES, pairs)}


def build_pretrainer(folder: Path, overrides: list[str] = (), config: str | None = None):
    """A Pretrainer of `config` (None: the defaults) and `overrides` over a tiny synthetic set (the
    benchmark makes its batches in memory)."""
    from asit.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.train import Pretrainer

    cfg = load_config(PretrainConfig, config and str(ROOT / config), [
        "data.num_workers=0", f"data.cache_dir={folder / 'cache'}", f"output_dir={folder / 'run'}",
        "monitor.every_steps=0", *overrides])  # the step alone: no online evaluation
    cfg.data.synthetic_clips = 2 * cfg.train.batch_size  # two steps an epoch: the step of epoch 2 exists
    return Pretrainer(cfg)


def synthetic_batch(trainer, clips: int) -> dict:
    f, t = trainer.cfg.frontend.num_mel_bins, trainer.num_frames
    g = torch.Generator().manual_seed(0)
    # Normalised log-mels lie mostly within [-1, 1]; the values do not change the cost.
    return {"views": 0.5 * torch.randn(clips, 2, 1, f, t, generator=g), "index": torch.arange(clips),
            "failed": torch.zeros(clips, dtype=torch.long)}


def worker_step(spec: dict) -> dict:
    """Time `train_step` at one (arch, precision): median over `steps` steps after `warmup`."""
    rss_start = current_rss_mib()
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        trainer = build_pretrainer(Path(tmp), spec["overrides"], spec.get("config"))
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clock = PhaseClock(trainer, device)
        clips = trainer.cfg.train.batch_size
        batch = synthetic_batch(trainer, clips)
        rss_built = current_rss_mib()
        # Steps of the second epoch: the prototypes are trained there (frozen in the first), as in a long run.
        # The corruption is seeded by the step, so every run sees the same numbers of corrupted tokens
        # (the local head's cost follows them) and runs compare like for like.
        step = trainer.steps_per_epoch
        times, phases, local_tokens, cpu = [], [], [], 0.0
        for i in range(spec["warmup"] + spec["steps"]):
            cpu_tic = time.process_time()
            clock.start()
            tic = clock.marks["start"]
            _, outputs = trainer.train_step(batch, step + i)
            synchronize(device)
            toc = time.perf_counter()
            if i >= spec["warmup"]:
                cpu += time.process_time() - cpu_tic
                times.append(toc - tic)
                phases.append(clock.phases(toc))
                local_tokens.append(outputs["student"]["local"].shape[0] if "local" in outputs["student"] else 0)
        peak_rss = peak_rss_mib()  # before the profiler adds its own records
        profile = profile_step(trainer, batch, step + len(times) + spec["warmup"]) if spec.get("profile") else None
        grid = tuple(trainer.student.backbone.patch_embed.grid_size)
        result = {
            "name": spec["name"], "arch": trainer.cfg.model.arch, "precision": trainer.cfg.train.precision,
            "device": str(device), "config": spec.get("config"), "overrides": spec["overrides"],
            "amp": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype],
            "threads": torch.get_num_threads(), "cpu_share": cpu_share(cpu, sum(times), torch.get_num_threads()),
            "clips": clips, "views_shape": list(batch["views"].shape),
            "grid": list(grid), "tokens": grid[0] * grid[1] + 1,
            "seconds_per_step": summarise(times), "steps": times,
            "phases_median": {k: statistics.median(p[k] for p in phases) for k in PhaseClock.PHASES},
            "local_tokens_mean": statistics.mean(local_tokens),
            "flops": step_flops(trainer.cfg.model, grid, clips, statistics.mean(local_tokens)),
            "rss_start_mib": rss_start, "rss_after_build_mib": rss_built, "peak_rss_mib": peak_rss,
            "profile": profile,
        }
        if device.type == "cuda":
            result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# The aten ops that run the matmul kernels (torch.matmul and linear dispatch to these).
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"})


def profile_step(trainer, batch: dict, step: int, top: int = 20) -> dict:
    """The ops of one step that take the most time of their own (children excluded), from torch.profiler,
    and the (profiled, so slightly slower) step's duration."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        tic = time.perf_counter()
        trainer.train_step(batch, step)
        synchronize(trainer.device)
        seconds = time.perf_counter() - tic
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    # On a CPU an op's self time is its kernel's: the matmuls' sum bounds what the step can reach.
    matmul_ms = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e3
    return {"seconds": seconds, "matmul_ms": matmul_ms if trainer.device.type == "cpu" else None,
            "ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                     "cpu_total_ms": e.cpu_time_total / 1e3} for e in events[:top]]}
