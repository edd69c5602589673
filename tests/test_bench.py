"""The benchmark's own arithmetic: its FLOP counter and its statistics. No timing is asserted."""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from asit.runtime import resolve_precision
from asit.vit import build_vit

from conftest import REPO, TINY

from benchmarks import bench, flops, inference, measure, step

# TINY's model and front end, without its run settings (the benchmark sets device, workers, ...).
TINY_MODEL = [o for o in TINY if o.startswith(("model.", "frontend.", "views."))]


def explicit_attention(*modules: torch.nn.Module) -> None:
    # FlopCounterMode has no formula for the CPU kernel of scaled_dot_product_attention; timm's
    # unfused path (two bmm) computes the same thing and is counted.
    for module in modules:
        for m in module.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False


def test_vit_flops_by_hand():
    # One block, width D = 8 (MLP 32), one 4 x 4 view in 2 x 2 patches: P = 4 patches, N = 5 tokens.
    #   patch embed  2 * 4 patches * 4 pixels * 8            =  256
    #   qkv + proj   2 * 5 * 8 * 24  +  2 * 5 * 8 * 8        = 1920 + 640 = 2560
    #   QK^T + AV    2 * 5 * 5 * 8   +  2 * 5 * 5 * 8        =  400 + 400 =  800
    #   fc1 + fc2    2 * 5 * 8 * 32  +  2 * 5 * 32 * 8       = 2560 + 2560 = 5120
    counted = flops.vit_forward_flops(views=1, grid=(2, 2), width=8, depth=1, patch_pixels=4)
    assert counted == {"patch_embed": 256, "attn_linear": 2560, "attn_scores": 800, "mlp": 5120}
    # Linear in batch size.
    assert sum(flops.vit_forward_flops(3, (2, 2), 8, depth=1, patch_pixels=4).values()) == 3 * 8736


def test_head_flops_by_hand():
    # 2 rows, 4 -> 8 -> 8 -> 3, then 3 -> 5 prototypes: 2*2*(32 + 64 + 24) + 2*2*3*5 = 480 + 60
    assert flops.dino_head_flops(2, 4, 8, 3, 5) == 540
    # The same MLP, then a 2 x 2 transposed convolution from 3 channels: 480 + 2*2*3*4
    assert flops.rec_head_flops(2, 4, 8, 3, 2) == 528


def test_backbone_forward_matches_torch_flop_counter():
    vit = build_vit("tiny", (32, 48)).eval()
    explicit_attention(vit)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vit.forward_features(torch.randn(3, 1, 32, 48))
    ours = sum(flops.vit_forward_flops(3, (2, 3), 192).values())
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_step_flops_match_torch_flop_counter_on_a_real_step():
    with tempfile.TemporaryDirectory() as tmp:
        trainer = step.build_pretrainer(Path(tmp), ["train.precision=fp32", "train.device=cpu",
                                                    f"train.batch_size={bench.CLIPS_PER_STEP}", *TINY_MODEL])
        explicit_attention(trainer.student, trainer.teacher)
        batch = step.synthetic_batch(trainer, bench.CLIPS_PER_STEP)
        with FlopCounterMode(display=False) as counter:
            _, outputs = trainer.train_step(batch, trainer.steps_per_epoch)
    grid = tuple(trainer.student.backbone.patch_embed.grid_size)
    ours = flops.step_flops(trainer.cfg.model, grid, bench.CLIPS_PER_STEP, outputs["student"]["local"].shape[0])
    assert ours["total"] == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_summarise_reports_the_median():
    assert measure.summarise([3.0, 1.0, 10.0]) == {"median": 3.0, "min": 1.0, "max": 10.0, "n": 3}
    assert measure.summarise([4.0, 1.0, 2.0, 3.0])["median"] == 2.5  # even count: mean of the middle two
    with pytest.raises(ValueError):
        measure.summarise([])


def test_peak_rss_is_the_high_water_mark():
    # In a fresh interpreter: touching 256 MiB lifts the peak to at least the RSS before plus 256 MiB
    # (the peak may already be higher: imports allocate transiently), and freeing it lowers the
    # current RSS but not the peak.
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from benchmarks import measure as b\n"
        "peak0, rss0 = b.peak_rss_mib(), b.current_rss_mib()\n"
        "x = np.ones(256 * 2**20, dtype=np.uint8)\n"
        "peak1, rss1 = b.peak_rss_mib(), b.current_rss_mib()\n"
        "del x\n"
        "print(peak0, rss0, peak1, rss1, b.peak_rss_mib(), b.current_rss_mib())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    peak0, rss0, peak1, rss1, peak2, rss2 = map(float, out.split())
    assert 250 <= rss1 - rss0 <= 270, out  # the current RSS helper sees the array
    assert peak1 >= rss1 - 1 and peak1 >= peak0, out  # a high-water mark is never below what was seen
    assert peak1 <= max(peak0, rss1) + 16, out  # ... and is what was seen, not more
    assert peak2 == peak1 and rss2 < rss1 - 200, out  # freeing lowers the RSS, not the high-water mark


def test_step_worker_reports_a_consistent_measurement():
    r = step.worker_step({"name": "tiny", "warmup": 1, "steps": 2,
                          "overrides": ["train.precision=fp32", "train.device=cpu", "train.batch_size=2", *TINY_MODEL]})
    assert r["seconds_per_step"]["n"] == 2 and r["grid"] == [8, 6]
    # The phases tile the step: they add up to its duration.
    assert sum(r["phases_median"].values()) == pytest.approx(r["seconds_per_step"]["median"], rel=0.2)
    parts = r["flops"]
    assert parts["total"] == parts["teacher_forward"] + parts["student_forward"] + parts["student_backward"]
    assert r["peak_rss_mib"] >= r["rss_after_build_mib"] > 0


def test_inference_comparison_runs_the_same_network():
    pytest.importorskip("transformers")
    r = inference.worker_inference({"arch": "tiny", "frames": 64, "batch": 1, "reps": 1})
    assert r["tokens"] == 12 * 5 + 2  # stride 10: (128 - 16) / 10 + 1 rows, (64 - 16) / 10 + 1 columns
    assert r["max_abs_logit_diff"] < 1e-4
    assert r["asit"]["clips_per_s"] > 0 and r["transformers"]["clips_per_s"] > 0


def fake_step(name: str, config: str | None, amp: str, seconds: float) -> dict:
    return {"name": name, "arch": "tiny", "amp": amp, "clips": 32, "config": config, "seconds_per_step": {"median": seconds},
            "clips_per_s": 32 / seconds, "flops": {"total": 1e11}, "flops_per_s": 1e11 / seconds,
            "fraction_of_matmul_peak": 0.1, "peak_rss_mib": 1.0, "cpu_share": 1.0, "phases_median": dict.fromkeys(step.PhaseClock.PHASES, 0.0)}


def test_the_report_names_the_kernel_flags_and_sets_each_runtime_choice_beside_its_alternative():
    results = {"command": "bench", "quick": False, "matmul_peak_flops": {"fp32": 1e11, "bf16": 4e11},
               "machine": {"cpu": "a CPU", "cpu_flags": ["avx2", "avx512_bf16", "avx512f"], "logical_cpus": 2,
                           "torch": "2.9", "torch_threads": 2, "cpu_capability": "AVX512"},
               "steps": [fake_step("laptop", "tiny.yaml", "bf16", 0.4), fake_step("laptop, other precision", "tiny.yaml", "fp32", 0.8)],
               "pipeline": {"threads": 1, "clips": 1, "source": "x", "mean_clip_seconds": 1.0, "views_clips_per_s": 1.0,
                            "corrupt_clips_per_s": 1.0, "clips_per_s": 1.0, "cpu_share": 1.0, "shards_clips_per_s": 1.0,
                            "shards_open_seconds": 0.1, "crops_clips_per_s": 9.0, "device_fbank_clips_per_s": 3.0,
                            "device_threads": 2, "manifest_entries": 2_000_000, "manifest_list_seconds": 5.0},
               "inference": []}
    text = bench.report(results)
    assert "avx512_bf16" in text and "precision auto -> bf16 (native: avx512_bf16)" in text
    assert "laptop, other precision: 2.00x the laptop step's time" in text
    assert "vs ref" not in text and "not measured in this run" in text  # no other machine's time as a ratio
    assert "listing a generated manifest of 2,000,000 clips: 5.0 s" in text
    assert "the matmuls" not in text  # no profile, no bound
    # 1e11 FLOPs in 0.5 s of matmuls at a 4e11 peak: 50% at best; 50% of the peak is a 0.5 s step, which
    # leaves nothing to the other 0.2 s of the profiled 0.7 s step.
    profile = {"seconds": 0.7, "matmul_ms": 500.0, "ops": [{"op": "aten::mm", "calls": 3, "self_cpu_ms": 500.0}]}
    results["steps"][0]["profile"] = profile
    text = bench.report(results)
    assert "took 500 ms of it, at 50% of the peak: the step's ceiling with everything else free\n" in text
    assert "leaves everything else" not in text  # the laptop step's target is not a fraction of the peak
    results["steps"].append({**fake_step("small bf16", None, "bf16", 0.6), "arch": "small", "profile": profile})
    assert ("took 500 ms of it, at 50% of the peak: the step's ceiling with everything else free; 50% of the "
            "peak leaves everything else 0 ms (it took 200 ms here)") in bench.report(results)
    args = argparse.Namespace(quick=False, archs="small", precisions="bf16", no_laptop=False, no_profile=True)
    specs = bench.step_specs(bench.plan(args), "cpu", [])
    laptop = {s["name"]: s["overrides"] for s in specs if s["config"]}
    assert set(laptop) == set(bench.LAPTOP_VARIANTS)
    other = "train.precision=fp32" if resolve_precision("auto", torch.device("cpu")) else "train.precision=bf16"
    assert other in laptop["laptop, other precision"]
