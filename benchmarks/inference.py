"""3. Inference of the fine-tuning model: asit's ASTModel against transformers' AST holding the same weights."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from asit.vit import ARCHS

from .flops import vit_forward_flops
from .measure import cpu_share, summarise, synchronize


def hf_twin(model, cfg, folder: Path):
    """transformers' ASTForAudioClassification holding `model`'s weights: both compute the same
    function, which the benchmark checks.

    The weights go through a saved directory and `from_pretrained`, as a user's export would: recent
    transformers rename AST's modules in memory and map the on-disk names on load.
    """
    import transformers
    from safetensors.torch import save_file

    from asit.hf import hf_ast_config, to_hf

    transformers.utils.logging.disable_progress_bar()  # keep the benchmark's stderr readable
    hf_ast_config(cfg, num_labels=cfg.num_classes).save_pretrained(folder)
    save_file(to_hf(model.state_dict()), folder / "model.safetensors", metadata={"format": "pt"})
    return transformers.ASTForAudioClassification.from_pretrained(folder).eval()


def worker_inference(spec: dict) -> dict:
    """Clips/s of asit's ASTModel and of HF's AST on the same batch, timed alternately (so that any
    drift of the machine hits both alike), fp32, inference_mode."""
    from asit.ast_model import ASTConfig, ASTModel

    torch.manual_seed(0)
    device = torch.device(spec.get("device", "cpu"))
    cfg = ASTConfig(spec["arch"], num_classes=527, num_frames=spec["frames"])  # AudioSet's 527 classes
    ours = ASTModel(cfg).eval()
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        theirs = hf_twin(ours, cfg, Path(tmp))
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
              "flops_per_batch": flops,
              "hf_attention": getattr(theirs.config, "_attn_implementation", None)}
    for name, samples in times.items():
        result[name] = {"seconds_per_batch": summarise(samples),
                        "clips_per_s": spec["batch"] / statistics.median(samples)}
    result["max_abs_logit_diff"] = float((outputs["asit"] - outputs["transformers"]).abs().max())
    return result
