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


def loader_seconds(dataset, n: int) -> tuple[float, float]:
    """Seconds per clip of `dataset[i, 0]` over its first n clips (after one warm-up clip: resampler
    kernels, the mel matrix), and the CPU share the process got."""
    dataset[0, 0]
    cpu, tic = time.process_time(), time.perf_counter()
    for i in range(n):
        dataset[i, 0]
    wall = time.perf_counter() - tic
    return wall / n, cpu_share(time.process_time() - cpu, wall, 1)


def listing_seconds(folder: Path, entries: int) -> dict:
    """Seconds to list a generated AST manifest of `entries` clips (never opened: listing reads paths only)."""
    import json

    from asit.sources import list_audio

    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"data": [{"wav": f"audio/{i:07d}.wav", "labels": "/m/09x0r"} for i in range(entries)]}))
    tic = time.perf_counter()
    listed = len(list_audio(manifest))
    return {"manifest_entries": listed, "manifest_list_seconds": time.perf_counter() - tic}


def worker_pipeline(spec: dict) -> dict:
    """Clips/s of one loader worker (single-threaded, as DataLoader makes its workers) making the two
    views of a clip from files and from shards, with the fbank in the loader or left to the device (then
    timed batched, as the step does it), then of the corruption of those views, batched as the step does it."""
    import soundfile as sf

    from asit import gmml
    from asit.batched_fbank import BatchedFbank
    from asit.features import FrontEndConfig
    from asit.shards import pack
    from asit.sources import list_audio, write_csv
    from asit.views import PretrainViews, ViewsConfig

    torch.set_num_threads(1)
    frontend, views = FrontEndConfig(), ViewsConfig(crop_seconds=spec["crop_seconds"])
    result = {}
    with tempfile.TemporaryDirectory(prefix="asit-bench-") as tmp:
        tmp = Path(tmp)
        source, items = pipeline_audio(tmp)
        items = items[:: max(1, len(items) // spec["clips"])][: spec["clips"]]  # spread over speakers/words
        n = len(items)
        seconds = statistics.mean(sf.info(str(item.path)).duration for item in items)
        write_csv(items, tmp / "clips.csv")
        pack(tmp / "clips.csv", tmp / "shards", shard_size=max(1, n // 4))
        tic = time.perf_counter()
        shard_items = list_audio(tmp / "shards" / "index.json")
        result["shards_open_seconds"] = time.perf_counter() - tic
        device_views = ViewsConfig(crop_seconds=spec["crop_seconds"], frontend="device")
        load_seconds, share = loader_seconds(PretrainViews(items, frontend, views, seed=0), n)
        result["shards_clips_per_s"] = 1 / loader_seconds(PretrainViews(shard_items, frontend, views, seed=0), n)[0]
        crops_seconds = loader_seconds(PretrainViews(items, frontend, device_views, seed=0), n)[0]
        crops = torch.stack([PretrainViews(items, frontend, device_views, seed=0)[i, 0]["views"] for i in range(n)])
        samples = [PretrainViews(items, frontend, views, seed=0)[i, 0] for i in range(n)]
        result |= listing_seconds(tmp, spec.get("manifest_entries", 2_000_000))

    # The device front end on this process's threads (all of them: it runs in the training process).
    torch.set_num_threads(spec.get("device_threads", 1))
    fbank = BatchedFbank(frontend)
    fbank(crops[:2].flatten(0, 1))
    tic = time.perf_counter()
    for i in range(0, n, spec["batch"]):
        fbank(crops[i:i + spec["batch"]].flatten(0, 1))
    device_fbank_seconds = (time.perf_counter() - tic) / n
    torch.set_num_threads(1)

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
    return {"source": source, "clips": n, "mean_clip_seconds": seconds, "threads": 1,
            "cpu_share": share, "views_clips_per_s": 1 / load_seconds, "corrupt_clips_per_s": 1 / corrupt_seconds,
            "clips_per_s": 1 / (load_seconds + corrupt_seconds), "crops_clips_per_s": 1 / crops_seconds,
            "device_fbank_clips_per_s": 1 / device_fbank_seconds, "device_threads": spec.get("device_threads", 1),
            **result}
