"""Speed of asit where it matters: the pretraining step, the data pipeline and fine-tuned inference.

    python benchmarks/bench.py [--quick] [--out results/bench.json] [--archs small,base]

Measures, on this machine and in this run only:

0. the machine: CPU, the instruction sets that decide the kernels (AVX-512, AVX-512-BF16, AMX), and
   the fp32 and bf16 matmul peak, the denominator of every utilisation figure;
1. seconds per full pretraining step, at the ASiT reference code's default shape (two 6 s views per
   clip, 128 x 592 each, 16x16 patches without overlap: 8 x 37 = 296 patches + the class token; 2 clips
   per step; the paper's heads) and at the laptop recipe's (`configs/pretrain/tiny.yaml` as `make
   pretrain` runs it: ViT-tiny, 32 clips of two 1 s views); the pretraining step (`Pretrainer.train_step`: corruption, teacher forward, student
   forward, losses, backward, clipping, AdamW, EMA) per architecture and precision, on an in-memory
   batch; clips/s; peak memory; analytic FLOPs per step and the fraction of a measured matmul peak;
   where the time goes (forward hooks, no change to the training code) and, in a full run, the top
   ops of one step per architecture from torch.profiler, with the FLOP/s of its matmuls alone (the
   ceiling of the step's fraction of the peak); the laptop step also with each run-time choice (asit.runtime)
   made the other way, beside the default;
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
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: asit need not be installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from asit.model import ModelConfig  # noqa: E402
from asit.runtime import FAST_BF16_FLAGS, resolve_precision  # noqa: E402
from benchmarks.inference import worker_inference  # noqa: E402
from benchmarks.measure import machine, worker_peak  # noqa: E402
from benchmarks.pipeline import worker_pipeline  # noqa: E402
from benchmarks.step import MATMUL_OPS, PhaseClock, worker_step  # noqa: E402

# The reference code's default shape.
CLIPS_PER_STEP = 2
CROP_SECONDS = 6.0
LAPTOP_CONFIG = "configs/pretrain/tiny.yaml"
# Not measured here, for orientation only: the ASiT reference code's ViT-S step at this shape (fp32, the
# only precision it runs on a CPU), measured once on each machine kind this project has run on.
REFERENCE_NOTE = ("the ASiT reference code's ViT-S step at this shape (fp32), not measured in this run: "
                  "2.29 s on a 2-core AMD EPYC (AVX-512, no AMX), 1.35 s on a 2-core Intel Xeon with AMX-BF16")
TARGET_FRACTION_OF_PEAK = 0.5  # ViT-S and ViT-B bf16 steps
PIPELINE_TARGET_RATIO = 10.0
# The laptop step as `make pretrain` runs it (every choice left to asit.runtime at run time), then with
# each run-time choice made the other way.
LAPTOP_VARIANTS = {
    "laptop": [],
    "laptop, other precision": None,  # fp32 where auto chose bf16, and the reverse
    "laptop, fused attention": ["model.attention=fused"],
    "laptop, compiled": ["train.compile=true"],
}

WORKERS = {"peak": worker_peak, "step": worker_step, "pipeline": worker_pipeline, "inference": worker_inference}


# ---- orchestration ----------------------------------------------------------------------------
def run_worker(kind: str, **spec) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kind} {spec} failed (exit {proc.returncode}); see its stderr above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(args) -> dict:
    """What to run: the full benchmark, or a CI smoke test of every part in under two minutes."""
    quick = args.quick
    return {
        "archs": args.archs.split(",") if args.archs else (["small"] if quick else ["small", "base"]),
        "precisions": args.precisions.split(","),
        "laptop": not args.no_laptop,
        "quick": quick,
        # The first few steps are up to ~1.5x slower (allocator and kernel caches warming up; a compiled
        # step compiles in its first). ViT-B steps take seconds each on 2 cores: few repetitions.
        "warmup": {"small": 3, "base": 2, "tiny": 3},
        "steps": {"small": 3 if quick else 8, "base": 2 if quick else 4, "tiny": 3 if quick else 8},
        "pipeline_clips": 16 if quick else 64,
        "manifest_entries": 100_000 if quick else 2_000_000,  # AudioSet-2M's size
        "inference_frames": 512 if quick else 1024,  # 10 s at 10 ms, AST's AudioSet input
        "inference_batch": 2 if quick else 4,
        "inference_reps": 2 if quick else 3,
        "profile": not quick and not args.no_profile,
    }


def step_specs(p: dict, device: str, extra: list[str]) -> list[dict]:
    """The steps to time: the reference shape per (arch, precision), then the laptop recipe as `make
    pretrain` runs it and its plain variant."""
    specs = []
    fastest = "bf16" if "bf16" in p["precisions"] else p["precisions"][0]
    for arch in p["archs"]:
        for precision in p["precisions"]:
            specs.append({"name": f"{arch} {precision}", "config": None, "warmup": p["warmup"][arch],
                          "steps": p["steps"][arch], "profile": p["profile"] and precision == fastest,
                          "overrides": [f"model.arch={arch}", f"train.precision={precision}", f"train.device={device}",
                                        f"train.batch_size={CLIPS_PER_STEP}", f"views.crop_seconds={CROP_SECONDS}", *extra]})
    if p["laptop"]:
        auto = resolve_precision("auto", torch.device(device))
        for name, overrides in LAPTOP_VARIANTS.items():
            if overrides is None:
                overrides = [f"train.precision={'fp32' if auto else 'bf16'}"]
            if p["quick"] and overrides:
                continue
            specs.append({"name": name, "config": LAPTOP_CONFIG, "warmup": p["warmup"]["tiny"], "steps": p["steps"]["tiny"],
                          "profile": p["profile"] and name == "laptop",
                          "overrides": [f"train.device={device}", *overrides, *extra]})
    return specs


def run(args) -> dict:
    p = plan(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {"command": shlex.join(["python", *sys.argv]), "machine": machine(), "quick": args.quick,
               "overrides": args.set,
               "shape": {"clips_per_step": CLIPS_PER_STEP, "views_per_clip": 2, "crop_seconds": CROP_SECONDS,
                         "patch": 16, "heads": {k: v for k, v in vars(ModelConfig()).items() if k.startswith(("head_", "global_", "local_"))}}}
    say("matmul peak")
    # A GPU reaches its peak only on large matmuls; 2048^3 already saturates a CPU.
    results["matmul_peak_size"] = 8192 if device == "cuda" else 2048
    results["matmul_peak_flops"] = run_worker("peak", device=device, size=results["matmul_peak_size"],
                                              reps=5 if args.quick else 10)
    results["steps"] = []
    for spec in step_specs(p, device, args.set):
        say(f"pretraining step: {spec['name']}")
        r = run_worker("step", **spec)
        sps = r["seconds_per_step"]["median"]
        r["clips_per_s"] = r["clips"] / sps
        r["flops_per_s"] = r["flops"]["total"] / sps
        r["fraction_of_matmul_peak"] = r["flops_per_s"] / peak_of(results, r)
        results["steps"].append(r)
    say("data pipeline")
    pipe = run_worker("pipeline", crop_seconds=CROP_SECONDS, batch=CLIPS_PER_STEP, clips=p["pipeline_clips"],
                      manifest_entries=p["manifest_entries"], device_threads=torch.get_num_threads())
    first_arch = [s for s in results["steps"] if s["config"] is None and s["arch"] == p["archs"][0]]
    if first_arch:
        # The most demanding consumer: the fastest step of the first architecture (ViT-S by default).
        consumer = max(first_arch, key=lambda s: s["clips_per_s"])
        pipe["consumer"] = consumer["name"]
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


def precision_choice(m: dict) -> str:
    fast = sorted(FAST_BF16_FLAGS & set(m["cpu_flags"]))
    if "gpu" in m:
        return "bf16 or fp16 (GPU)"
    return f"bf16 (native: {', '.join(fast)})" if fast else "fp32 (no native bf16 matmuls)"


def peak_of(results: dict, step: dict) -> float:
    """The measured matmul peak a step's FLOP/s are divided by: bf16's for a bf16 step, else fp32's."""
    return results["matmul_peak_flops"]["bf16" if step["amp"] == "bf16" else "fp32"]


def has_peak_target(step: dict) -> bool:
    return step["config"] is None and step["arch"] in ("small", "base") and step["amp"] == "bf16"


def matmul_bound(results: dict, step: dict) -> str:
    """What the profiled step's matmuls alone allow: their FLOP/s is the step's ceiling (everything else
    at zero cost); for a step with the peak target, the time that target leaves everything else."""
    prof, peak = step["profile"], peak_of(results, step)
    matmul_s, flops = prof["matmul_ms"] / 1e3, step["flops"]["total"]
    line = (f"   the matmuls ({', '.join(sorted(op[6:] for op in MATMUL_OPS))}) took {1e3 * matmul_s:.0f} ms of it, "
            f"at {flops / matmul_s / peak:.0%} of the peak: the step's ceiling with everything else free")
    if has_peak_target(step):
        budget = flops / (TARGET_FRACTION_OF_PEAK * peak) - matmul_s
        line += (f"; {TARGET_FRACTION_OF_PEAK:.0%} of the peak leaves everything else {1e3 * budget:.0f} ms "
                 f"(it took {1e3 * (prof['seconds'] - matmul_s):.0f} ms here)")
    return line


def targets(results: dict) -> list[str]:
    """The speed targets against what this run measured, and each run-time choice against its alternative."""
    lines = []
    for s in results["steps"]:
        if has_peak_target(s):
            ok = s["fraction_of_matmul_peak"] >= TARGET_FRACTION_OF_PEAK
            lines.append(f"   target {s['name']}: >= {TARGET_FRACTION_OF_PEAK:.0%} of the bf16 peak: "
                         f"{s['fraction_of_matmul_peak']:.0%}, {'met' if ok else 'NOT met'}")
    laptop = {s["name"]: s["seconds_per_step"]["median"] for s in results["steps"] if s["config"]}
    for name, seconds in laptop.items():
        if name != "laptop" and "laptop" in laptop:
            lines.append(f"   {name}: {seconds / laptop['laptop']:.2f}x the laptop step's time")
    return lines


def report(results: dict) -> str:
    m = results["machine"]
    peak = results["matmul_peak_flops"]
    out = [
        f"asit benchmark{' (--quick)' if results['quick'] else ''}: {results['command']}",
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} "
        f"threads ({m['cpu_capability']}; {' '.join(m['cpu_flags']) or 'no x86 kernel flags'})"
        + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        *busy_warning(results),
        f"matmul peak ({results.get('matmul_peak_size', 2048)}^3): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s",
        "",
        f"1. pretraining step, median after warm-up: the reference shape ({CLIPS_PER_STEP} clips x 2 views of "
        f"128 x 592, 16x16 patches, 297 tokens, paper heads) and the laptop recipe ({LAPTOP_CONFIG}), "
        f"in-memory batches. Run-time choices here: precision auto -> {precision_choice(m)}, attention as "
        f"separate ops under bf16 on a CPU (model.attention=auto)",
    ]
    rows = []
    for s in results["steps"]:
        mem = s.get("peak_cuda_mib", s["peak_rss_mib"])
        rows.append([s["name"], s["arch"], s["amp"], s["clips"], f"{s['seconds_per_step']['median']:.3f}",
                     f"{s['clips_per_s']:.2f}", f"{s['flops']['total'] / 1e9:.0f}", f"{s['flops_per_s'] / 1e9:.0f}",
                     f"{100 * s['fraction_of_matmul_peak']:.0f}%", f"{mem:.0f}", f"{s['cpu_share']:.0%}"])
    out.append(table(["step", "arch", "amp", "clips", "s/step", "clips/s", "GFLOP/step", "GFLOP/s", "of peak",
                      "peak MiB", "CPU got"], rows))
    out += [*targets(results), f"   for orientation, {REFERENCE_NOTE}"]
    out += ["", "   where the time goes (median seconds per phase):"]
    out.append(table(["step", *PhaseClock.PHASES],
                     [[s["name"], *(f"{s['phases_median'][k]:.3f}" for k in PhaseClock.PHASES)]
                      for s in results["steps"]]))
    for s in results["steps"]:
        if s.get("profile"):
            prof = s["profile"]
            out += ["", f"   top ops of one {s['name']} step (torch.profiler, self time; "
                        f"the profiled step took {prof['seconds']:.3f} s):"]
            out.append(table(["op", "calls", "self ms", "of step"],
                             [[e["op"][:60], e["calls"], f"{e['self_cpu_ms']:.1f}",
                               f"{e['self_cpu_ms'] / 1e3 / prof['seconds']:.0%}"] for e in prof["ops"][:12]]))
            if prof.get("matmul_ms"):
                out.append(matmul_bound(results, s))
    p = results["pipeline"]
    out += ["", f"2. data pipeline, one worker ({p['threads']} thread, {p['clips']} clips of {p['source']}, "
                f"{p['mean_clip_seconds']:.1f} s on average):",
            f"   views (decode, resample, fbank, 2 crops) {p['views_clips_per_s']:.1f} clips/s from files, "
            f"{p['shards_clips_per_s']:.1f} from shards (index opened in {p['shards_open_seconds'] * 1e3:.0f} ms); "
            f"corruption {p['corrupt_clips_per_s']:.1f} clips/s; together {p['clips_per_s']:.1f} clips/s "
            f"(CPU got {p['cpu_share']:.0%})",
            f"   views.frontend=device: the worker makes {p['crops_clips_per_s']:.1f} clips/s of crops, and the "
            f"batched fbank of the step {p['device_fbank_clips_per_s']:.1f} clips/s on {p['device_threads']} thread(s)",
            f"   listing a generated manifest of {p['manifest_entries']:,} clips: {p['manifest_list_seconds']:.1f} s"]
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
    parser.add_argument("--no-laptop", action="store_true", help="skip the laptop recipe's step")
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
