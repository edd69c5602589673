"""Speed of asit where it matters: the pretraining step, the data pipeline and fine-tuned inference.

    python benchmarks/bench.py [--quick] [--out results/bench.json] [--archs small,base]

Measures, at the ASiT reference code's default shape (two 6 s views per clip, 128 x 592 each, 16x16
patches without overlap: 8 x 37 = 296 patches + the class token; 2 clips per step; the paper's heads):

1. seconds per full pretraining step (`Pretrainer.train_step`: corruption, teacher forward, student
   forward, losses, backward, clipping, AdamW, EMA) per architecture and precision, on an in-memory
   batch; clips/s; peak memory; analytic FLOPs per step and the fraction of a measured matmul peak;
   where the time goes (forward hooks, no change to the training code) and, in a full run, the top
   ops of one ViT-S step from torch.profiler;
2. the data pipeline of one loader worker (decode, resample, fbank, two crops) plus the corruption,
   in clips/s, and its ratio to what a ViT-S step consumes;
3. inference clips/s of the fine-tuning model (`asit.ast_model.ASTModel`) against transformers'
   `ASTForAudioClassification` holding the same weights, on the same input.

Every measurement runs in a fresh subprocess (`--worker`), so that peak memory belongs to one
configuration and nothing one measurement allocates or warms up leaks into the next. Timings are
medians after warm-up; nothing here downloads anything (random weights time as well as trained ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: asit need not be installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from asit.model import ModelConfig  # noqa: E402
from asit.vit import ARCHS  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"

# The reference code's default shape and the figures of its training step on this machine kind
# (2 cores, fp32); the targets are what issue 5 asks of ours.
CLIPS_PER_STEP = 2
CROP_SECONDS = 6.0
REFERENCE_SECONDS_PER_STEP = {"small": 2.29, "base": 7.23}
TARGET_SECONDS_PER_STEP = {"small": 0.76}
PIPELINE_TARGET_RATIO = 10.0


# ---- statistics -------------------------------------------------------------------------------
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


# ---- analytic FLOPs ---------------------------------------------------------------------------
# One multiply-add counts as 2 FLOPs. Only matmuls and convolutions are counted: norms, softmax,
# GELU, the losses, clipping, AdamW and the EMA are O(parameters) or O(activations) elementwise work,
# under 1% of the matmuls here (and the FLOPs torch.utils.flop_counter counts are the same).

def vit_forward_flops(views: int, grid: tuple[int, int], width: int, depth: int = 12, prefix_tokens: int = 1,
                      patch_pixels: int = 256, mlp_ratio: float = 4.0) -> dict[str, int]:
    """Matmul FLOPs of a ViT forward over `views` inputs of `grid` patches, split by kind.

    With n views, P = grid patches, N = P + prefix tokens, D = width, H = mlp_ratio * D, L = depth:
        patch_embed  2 n P (patch_pixels) D            the patch projection (a strided convolution)
        attn_linear  L * 2 n N D (3D + D)              qkv and the output projection
        attn_scores  L * 2 * 2 n N^2 D                 Q K^T and the weighted sum A V (all heads together)
        mlp          L * 2 * 2 n N D H                 fc1 and fc2
    """
    patches = grid[0] * grid[1]
    tokens = patches + prefix_tokens
    hidden = int(width * mlp_ratio)  # as timm's Block
    return {
        "patch_embed": 2 * views * patches * patch_pixels * width,
        "attn_linear": depth * 2 * views * tokens * width * 4 * width,
        "attn_scores": depth * 2 * 2 * views * tokens * tokens * width,
        "mlp": depth * 2 * 2 * views * tokens * width * hidden,
    }


def mlp_head_flops(rows: int, in_dim: int, hidden: int, bottleneck: int) -> int:
    """The heads' 3-layer MLP (in -> hidden -> hidden -> bottleneck) on `rows` vectors."""
    return 2 * rows * (in_dim * hidden + hidden * hidden + hidden * bottleneck)


def dino_head_flops(rows: int, in_dim: int, hidden: int, bottleneck: int, prototypes: int) -> int:
    """MLP, then the (weight-normalised) bias-free layer to K prototypes."""
    return mlp_head_flops(rows, in_dim, hidden, bottleneck) + 2 * rows * bottleneck * prototypes


def rec_head_flops(rows: int, in_dim: int, hidden: int, bottleneck: int, patch: int) -> int:
    """MLP, then the transposed convolution (kernel = stride = patch): bottleneck -> patch^2 pixels per token."""
    return mlp_head_flops(rows, in_dim, hidden, bottleneck) + 2 * rows * bottleneck * patch * patch


def step_flops(model: ModelConfig, grid: tuple[int, int], clips: int, local_tokens: float) -> dict[str, float]:
    """Matmul FLOPs of one ASiT pretraining step of `clips` clips (2 views each), every loss on.

        teacher  = ViT(2B views) + global head(2B class tokens) + local head(M tokens)       forward only
        student  = ViT(2B views) + global head(2B) + local head(M) + reconstruction head(2B P tokens)
        step     = teacher + 3 * student - patch_embed

    M (`local_tokens`) is the number of tokens the local loss reads in the whole step (both views; the
    corrupted ones by default, so it varies per step: pass the measured mean). The student costs 3x its
    forward (backward = grads of the inputs + grads of the weights, each as much as the forward), except
    the patch embedding, whose input is data and needs no gradient: 2x. The teacher has no reconstruction
    head. This is exactly what torch.utils.flop_counter counts on the same step (tests/test_bench.py).
    """
    width = ARCHS[model.arch][0]
    views = 2 * clips
    rows = views * grid[0] * grid[1]
    dims = (width, model.head_hidden_dim, model.head_bottleneck_dim)
    backbone = vit_forward_flops(views, grid, width, patch_pixels=model.patch_size**2)
    heads = dino_head_flops(views, *dims, model.global_out_dim) + dino_head_flops(local_tokens, *dims, model.local_out_dim)
    rec = rec_head_flops(rows, *dims, model.patch_size)
    parts = {
        "teacher_forward": sum(backbone.values()) + heads,
        "student_forward": sum(backbone.values()) + heads + rec,
        "student_backward": 2 * (sum(backbone.values()) + heads + rec) - backbone["patch_embed"],
    }
    return {**parts, "total": sum(parts.values())}


# ---- matmul peak ------------------------------------------------------------------------------
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


# ---- 1. the pretraining step ------------------------------------------------------------------
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


def build_pretrainer(arch: str, precision: str, device: str, folder: Path, crop_seconds: float,
                     overrides: list[str] = ()):
    """A Pretrainer at the benchmark shape over a tiny synthetic set (the batches are made in memory)."""
    from asit.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.train import Pretrainer

    cfg = load_config(PretrainConfig, None, [
        f"model.arch={arch}", f"train.precision={precision}", f"train.device={device}",
        f"train.batch_size={CLIPS_PER_STEP}", "data.num_workers=0", f"frontend.crop_seconds={crop_seconds}",
        "data.synthetic_clips=8", f"data.cache_dir={folder / 'cache'}", f"output_dir={folder / 'run'}",
        *overrides,
    ])
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
        trainer = build_pretrainer(spec["arch"], spec["precision"], spec["device"], Path(tmp),
                                   spec["crop_seconds"], spec.get("overrides", []))
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clock = PhaseClock(trainer, device)
        batch = synthetic_batch(trainer, CLIPS_PER_STEP)
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
            "arch": spec["arch"], "precision": spec["precision"], "device": str(device),
            "threads": torch.get_num_threads(), "cpu_share": cpu_share(cpu, sum(times), torch.get_num_threads()),
            "clips": CLIPS_PER_STEP, "views_shape": list(batch["views"].shape),
            "grid": list(grid), "tokens": grid[0] * grid[1] + 1,
            "seconds_per_step": summarise(times), "steps": times,
            "phases_median": {k: statistics.median(p[k] for p in phases) for k in PhaseClock.PHASES},
            "local_tokens_mean": statistics.mean(local_tokens),
            "flops": step_flops(trainer.cfg.model, grid, CLIPS_PER_STEP, statistics.mean(local_tokens)),
            "rss_start_mib": rss_start, "rss_after_build_mib": rss_built, "peak_rss_mib": peak_rss,
            "profile": profile,
        }
        if device.type == "cuda":
            result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


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
    return {"seconds": seconds, "ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                                         "cpu_total_ms": e.cpu_time_total / 1e3} for e in events[:top]]}


# ---- 2. the data pipeline ---------------------------------------------------------------------
def pipeline_audio(folder: Path) -> tuple[str, list]:
    """Real audio if the shared data is there (FSDD is 8 kHz, so resampling is exercised), else the
    embedded synthetic set."""
    from asit.sources import list_audio
    from asit.synthetic import ensure_synthetic_dataset

    for name in ("fsdd/recordings", "speech_commands_sample"):
        if (SHARED_DATA / name).is_dir():
            return name, list_audio(SHARED_DATA / name)
    return "synthetic", list_audio(ensure_synthetic_dataset(folder, num_clips=64))


def worker_pipeline(spec: dict) -> dict:
    """Clips/s of one loader worker (single-threaded, as DataLoader makes its workers) making the two
    views of a clip, then of the corruption of those views, batched as the step does it."""
    import soundfile as sf

    from asit import gmml
    from asit.features import FrontEndConfig
    from asit.views import PretrainViews

    torch.set_num_threads(1)
    frontend = FrontEndConfig(crop_seconds=spec["crop_seconds"])
    num_frames = frontend.num_frames(multiple=16)
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        source, items = pipeline_audio(Path(tmp))
        items = items[:: max(1, len(items) // spec["clips"])][: spec["clips"]]  # spread over speakers/words
        seconds = statistics.mean(sf.info(str(item.path)).duration for item in items)
        dataset = PretrainViews(items, frontend, num_frames, seed=0)
        dataset[0, 0]  # warm-up: resampler kernels, fbank's mel matrix
        cpu, tic = time.process_time(), time.perf_counter()
        samples = [dataset[i, 0] for i in range(len(items))]
        load_seconds = (time.perf_counter() - tic) / len(items)
        share = cpu_share(time.process_time() - cpu, load_seconds * len(items), 1)

    cfg = gmml.GMMLConfig()
    batches = [torch.stack([s["views"] for s in samples[i:i + CLIPS_PER_STEP]])
               for i in range(0, len(samples) - CLIPS_PER_STEP + 1, CLIPS_PER_STEP)]
    tic = time.perf_counter()
    for step, views in enumerate(batches):
        ids = torch.arange(step * CLIPS_PER_STEP, (step + 1) * CLIPS_PER_STEP)
        for v in (0, 1):  # as Pretrainer.corrupt: one call per view index
            gmml.corrupt(views[:, v], cfg, 16, 0, step, ids, view=v)
    corrupt_seconds = (time.perf_counter() - tic) / (len(batches) * CLIPS_PER_STEP)
    return {"source": source, "clips": len(items), "mean_clip_seconds": seconds, "threads": torch.get_num_threads(),
            "cpu_share": share, "views_clips_per_s": 1 / load_seconds, "corrupt_clips_per_s": 1 / corrupt_seconds,
            "clips_per_s": 1 / (load_seconds + corrupt_seconds)}


# ---- 3. inference of the fine-tuning model ----------------------------------------------------
def hf_twin(model, cfg, folder: Path):
    """transformers' ASTForAudioClassification of the same size, holding `model`'s weights when asit's
    exporter is there (then both compute the same function, which we check), else its own random ones.

    The weights go through a saved directory and `from_pretrained`, as a user's export would: recent
    transformers rename AST's modules in memory and map the on-disk names on load.
    """
    import transformers

    transformers.utils.logging.disable_progress_bar()  # keep the benchmark's stderr readable
    width, heads = ARCHS[cfg.arch]
    hf_cfg = transformers.ASTConfig(
        hidden_size=width, num_hidden_layers=12, num_attention_heads=heads, intermediate_size=4 * width,
        hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, patch_size=cfg.patch_size,
        frequency_stride=cfg.patch_stride, time_stride=cfg.patch_stride, max_length=cfg.num_frames,
        num_mel_bins=cfg.num_mel_bins, num_labels=cfg.num_classes,
    )
    try:
        from asit.hf import to_hf
    except ImportError:
        return transformers.ASTForAudioClassification(hf_cfg).eval(), False
    from safetensors.torch import save_file

    hf_cfg.save_pretrained(folder)
    save_file(to_hf(model.state_dict()), folder / "model.safetensors", metadata={"format": "pt"})
    return transformers.ASTForAudioClassification.from_pretrained(folder).eval(), True


def worker_inference(spec: dict) -> dict:
    """Clips/s of asit's ASTModel and of HF's AST on the same batch, timed alternately (so that any
    drift of the machine hits both alike), fp32, inference_mode."""
    from asit.ast_model import ASTConfig, ASTModel

    torch.manual_seed(0)
    device = torch.device(spec.get("device", "cpu"))
    cfg = ASTConfig(spec["arch"], num_classes=527, num_frames=spec["frames"])  # AudioSet's 527 classes
    ours = ASTModel(cfg).eval()
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        theirs, same_weights = hf_twin(ours, cfg, Path(tmp))
    ours, theirs = ours.to(device), theirs.to(device)
    x = 0.5 * torch.randn(spec["batch"], 1, cfg.num_mel_bins, cfg.num_frames, device=device)
    hf_input = x[:, 0].transpose(1, 2)  # HF takes [B, T, F] and transposes it back itself
    runs = {"asit": lambda: ours(x), "transformers": lambda: theirs(input_values=hf_input).logits}
    times = {name: [] for name in runs}
    with torch.inference_mode():
        outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs to compare
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(spec["reps"]):
            for name, run in runs.items():
                synchronize(device)
                tic = time.perf_counter()
                run()
                synchronize(device)
                times[name].append(time.perf_counter() - tic)
        share = cpu_share(time.process_time() - cpu, time.perf_counter() - wall, torch.get_num_threads())
    grid = tuple(ours.backbone.patch_embed.grid_size)
    flops = sum(vit_forward_flops(spec["batch"], grid, ARCHS[cfg.arch][0], prefix_tokens=2).values())
    result = {"arch": spec["arch"], "device": str(device), "frames": cfg.num_frames, "stride": cfg.patch_stride, "batch": spec["batch"],
              "grid": list(grid), "tokens": grid[0] * grid[1] + 2, "threads": torch.get_num_threads(), "cpu_share": share,
              "flops_per_batch": flops, "same_weights": same_weights,
              "hf_attention": getattr(theirs.config, "_attn_implementation", None)}
    for name, samples in times.items():
        result[name] = {"seconds_per_batch": summarise(samples),
                        "clips_per_s": spec["batch"] / statistics.median(samples)}
    if same_weights:
        result["max_abs_logit_diff"] = float((outputs["asit"] - outputs["transformers"]).abs().max())
    return result


WORKERS = {"peak": worker_peak, "step": worker_step, "pipeline": worker_pipeline, "inference": worker_inference}


# ---- orchestration ----------------------------------------------------------------------------
def run_worker(kind: str, **spec) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} {spec} failed (exit {proc.returncode}); see its stderr above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
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


def plan(args) -> dict:
    """What to run: the full benchmark, or a CI smoke test of every part in under two minutes."""
    quick = args.quick
    return {
        "archs": args.archs.split(",") if args.archs else (["small"] if quick else ["small", "base"]),
        "precisions": args.precisions.split(","),
        # The first few steps are up to ~1.5x slower (allocator and kernel caches warming up). ViT-B
        # steps take seconds each on 2 cores: few repetitions, medians are stable enough.
        "warmup": {"small": 3, "base": 2, "tiny": 3},
        "steps": {"small": 3 if quick else 8, "base": 2 if quick else 4, "tiny": 3 if quick else 8},
        "pipeline_clips": 16 if quick else 64,
        "inference_frames": 512 if quick else 1024,  # 10 s at 10 ms, AST's AudioSet input
        "inference_batch": 2 if quick else 4,
        "inference_reps": 2 if quick else 3,
        "profile": not quick and not args.no_profile,
    }


def run(args) -> dict:
    p = plan(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {"command": shlex.join(["python", *sys.argv]), "machine": machine(), "quick": args.quick,
               "overrides": args.set,
               "shape": {"clips_per_step": CLIPS_PER_STEP, "views_per_clip": 2, "crop_seconds": CROP_SECONDS,
                         "patch": 16, "heads": {k: v for k, v in vars(ModelConfig()).items() if k.startswith(("head_", "global_", "local_"))}},
               "reference_seconds_per_step": REFERENCE_SECONDS_PER_STEP}
    say("matmul peak")
    results["matmul_peak_flops"] = run_worker("peak", device=device, size=2048, reps=5 if args.quick else 10)
    results["steps"] = []
    fastest_precision = "bf16" if "bf16" in p["precisions"] else p["precisions"][0]
    for arch in p["archs"]:
        for precision in p["precisions"]:
            say(f"pretraining step: {arch} {precision}")
            profile = p["profile"] and arch == p["archs"][0] and precision == fastest_precision
            r = run_worker("step", arch=arch, precision=precision, device=device, crop_seconds=CROP_SECONDS,
                           warmup=p["warmup"][arch], steps=p["steps"][arch], profile=profile,
                           overrides=args.set)
            sps = r["seconds_per_step"]["median"]
            r["clips_per_s"] = CLIPS_PER_STEP / sps
            r["flops_per_s"] = r["flops"]["total"] / sps
            peak = results["matmul_peak_flops"][precision if precision in ("fp32", "bf16") else "fp32"]
            r["fraction_of_matmul_peak"] = r["flops_per_s"] / peak
            if arch in REFERENCE_SECONDS_PER_STEP:
                r["speedup_vs_reference"] = REFERENCE_SECONDS_PER_STEP[arch] / sps
            results["steps"].append(r)
    say("data pipeline")
    pipe = run_worker("pipeline", crop_seconds=CROP_SECONDS, clips=p["pipeline_clips"])
    first_arch = [s for s in results["steps"] if s["arch"] == p["archs"][0]]
    if first_arch:
        # The most demanding consumer: the fastest step of the first architecture (ViT-S by default).
        consumer = max(first_arch, key=lambda s: s["clips_per_s"])
        pipe["consumer"] = f"{consumer['arch']} {consumer['precision']}"
        pipe["ratio_to_step"] = pipe["clips_per_s"] / consumer["clips_per_s"]
    results["pipeline"] = pipe
    results["inference"] = []
    if not args.no_inference:
        for arch in p["archs"]:
            say(f"inference: {arch}")
            results["inference"].append(run_worker("inference", arch=arch, device=device, frames=p["inference_frames"],
                                                   batch=p["inference_batch"], reps=p["inference_reps"]))
    return results


def say(msg: str) -> None:
    print(f"[bench] {msg} ...", file=sys.stderr, flush=True)


# ---- the report -------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def busy_warning(results: dict) -> list[str]:
    """A loud line when other work shared the CPUs: the figures are then lower bounds of the speed.

    Judged by the CPU time each measurement got, not by the load average, which lags by a minute and
    counts the benchmark's own previous workers."""
    shares = [r["cpu_share"] for r in [*results["steps"], results["pipeline"], *results["inference"]]]
    if min(shares, default=1) < 0.85:
        return [f"WARNING: the machine was busy (a measurement got only {min(shares):.0%} of its threads' CPU "
                f"time): timings are pessimistic; rerun on an idle machine"]
    return []


def report(results: dict) -> str:
    m = results["machine"]
    peak = results["matmul_peak_flops"]
    out = [
        f"asit benchmark{' (--quick)' if results['quick'] else ''}: {results['command']}",
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} "
        f"threads ({m['cpu_capability']})" + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        *busy_warning(results),
        f"matmul peak (2048^3): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s",
        "",
        f"1. pretraining step: {CLIPS_PER_STEP} clips x 2 views of 128 x 592 (16x16 patches, 297 tokens), "
        f"paper heads; median after warm-up",
    ]
    rows = []
    for s in results["steps"]:
        ref = s.get("speedup_vs_reference")
        mem = s.get("peak_cuda_mib", s["peak_rss_mib"])
        rows.append([s["arch"], s["precision"], f"{s['seconds_per_step']['median']:.3f}",
                     f"{ref:.2f}x" if ref else "-", f"{s['clips_per_s']:.2f}", f"{s['flops']['total'] / 1e9:.0f}",
                     f"{s['flops_per_s'] / 1e9:.0f}", f"{100 * s['fraction_of_matmul_peak']:.0f}%", f"{mem:.0f}",
                     f"{s['cpu_share']:.0%}"])
    out.append(table(["arch", "prec", "s/step", "vs ref", "clips/s", "GFLOP/step", "GFLOP/s", "of peak",
                      "peak MiB", "CPU got"], rows))
    out.append("   reference (its code, fp32): " + ", ".join(f"{a} {t} s" for a, t in REFERENCE_SECONDS_PER_STEP.items())
               + f"; target ViT-S <= {TARGET_SECONDS_PER_STEP['small']} s")
    out += ["", "   where the time goes (median seconds per phase):"]
    out.append(table(["arch", "prec", *PhaseClock.PHASES],
                     [[s["arch"], s["precision"], *(f"{s['phases_median'][k]:.3f}" for k in PhaseClock.PHASES)]
                      for s in results["steps"]]))
    for s in results["steps"]:
        if s.get("profile"):
            prof = s["profile"]
            out += ["", f"   top ops of one {s['arch']} {s['precision']} step (torch.profiler, self time; "
                        f"the profiled step took {prof['seconds']:.3f} s):"]
            out.append(table(["op", "calls", "self ms", "of step"],
                             [[e["op"][:60], e["calls"], f"{e['self_cpu_ms']:.1f}",
                               f"{e['self_cpu_ms'] / 1e3 / prof['seconds']:.0%}"] for e in prof["ops"][:12]]))
    p = results["pipeline"]
    out += ["", f"2. data pipeline, one worker ({p['threads']} thread, {p['clips']} clips of {p['source']}, "
                f"{p['mean_clip_seconds']:.1f} s on average):",
            f"   views (decode, resample, fbank, 2 crops) {p['views_clips_per_s']:.1f} clips/s; "
            f"corruption {p['corrupt_clips_per_s']:.1f} clips/s; together {p['clips_per_s']:.1f} clips/s "
            f"(CPU got {p['cpu_share']:.0%})"]
    if "ratio_to_step" in p:
        out.append(f"   = {p['ratio_to_step']:.1f}x what a {p['consumer']} step consumes (target >= {PIPELINE_TARGET_RATIO:.0f}x)")
    if results["inference"]:
        out += ["", "3. inference, fp32, inference_mode (asit ASTModel vs transformers ASTForAudioClassification):"]
        rows = []
        for r in results["inference"]:
            ours, theirs = r["asit"]["clips_per_s"], r["transformers"]["clips_per_s"]
            diff = f"{r['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in r else "-"
            rows.append([r["arch"], f"{r['batch']} x 128 x {r['frames']}", r["tokens"], f"{ours:.2f}", f"{theirs:.2f}",
                         f"{ours / theirs:.2f}x", f"{r['flops_per_batch'] / r['batch'] / 1e9:.0f}", diff,
                         f"{r['cpu_share']:.0%}"])
        out.append(table(["arch", "input", "tokens", "asit clips/s", "HF clips/s", "asit/HF", "GFLOP/clip",
                          "max |dlogit|", "CPU got"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test of every part in under ~2 minutes")
    parser.add_argument("--out", default="results/bench.json", help="where to write the JSON results")
    parser.add_argument("--archs", help="comma-separated: tiny, small, base (default small,base; small with --quick)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated train.precision values")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table of one step")
    parser.add_argument("--no-inference", action="store_true", help="skip the inference comparison")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a pretraining config override for the step, e.g. model.attention=fused (repeatable)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))), flush=True)
        return
    results = run(args)
    print(report(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
