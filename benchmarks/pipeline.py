"""2. The data pipeline of one loader worker: decode, resample, fbank, two crops, then the corruption."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from quality.tasks import data_root

from .measure import cpu_share



def pipeline_audio(folder: Path) -> tuple[str, list]:
    """Real audio if the shared data is there (FSDD is 8 kHz, so resampling is exercised), else the
    embedded synthetic set."""
    from asit.sources import list_audio
    from asit.synthetic import ensure_synthetic_dataset

    for name in ("fsdd/recordings", "speech_commands_sample"):
        if (data_root() / name).is_dir():
            return name, list_audio(data_root() / name)
    return "synthetic", list_audio(ensure_synthetic_dataset(folder, num_clips=64))


def worker_pipeline(spec: dict) -> dict:
    """Clips/s of one loader worker (single-threaded, as DataLoader makes its workers) making the two
    views of a clip, then of the corruption of those views, batched as the step does it."""
    import soundfile as sf

    from asit import gmml
    from asit.features import FrontEndConfig
    from asit.views import PretrainViews, ViewsConfig

    torch.set_num_threads(1)
    frontend, views = FrontEndConfig(), ViewsConfig(crop_seconds=spec["crop_seconds"])
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        source, items = pipeline_audio(Path(tmp))
        items = items[:: max(1, len(items) // spec["clips"])][: spec["clips"]]  # spread over speakers/words
        seconds = statistics.mean(sf.info(str(item.path)).duration for item in items)
        dataset = PretrainViews(items, frontend, views, seed=0)
        dataset[0, 0]  # warm-up: resampler kernels, fbank's mel matrix
        cpu, tic = time.process_time(), time.perf_counter()
        samples = [dataset[i, 0] for i in range(len(items))]
        load_seconds = (time.perf_counter() - tic) / len(items)
        share = cpu_share(time.process_time() - cpu, load_seconds * len(items), 1)

    cfg = gmml.GMMLConfig()
    batch = spec["batch"]  # clips per step, corrupted together as the step does
    batches = [torch.stack([s["views"] for s in samples[i:i + batch]])
               for i in range(0, len(samples) - batch + 1, batch)]
    tic = time.perf_counter()
    for step, views in enumerate(batches):
        ids = torch.arange(step * batch, (step + 1) * batch)
        for v in (0, 1):  # as Pretrainer.corrupt: one call per view index
            gmml.corrupt(views[:, v], cfg, 16, 0, step, ids, view=v)
    corrupt_seconds = (time.perf_counter() - tic) / (len(batches) * batch)
    return {"source": source, "clips": len(items), "mean_clip_seconds": seconds, "threads": torch.get_num_threads(),
            "cpu_share": share, "views_clips_per_s": 1 / load_seconds, "corrupt_clips_per_s": 1 / corrupt_seconds,
            "clips_per_s": 1 / (load_seconds + corrupt_seconds)}
