import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DATA", REPO.parent / "shared" / "data"))  # as make quality and make ablations
FSDD = SHARED_DATA / "fsdd" / "recordings"

# Small heads and 1 s views: a pretraining step of a ViT-tiny in well under a second on 2 cores.
TINY = [
    "model.arch=tiny", "model.head_hidden_dim=64", "model.head_bottleneck_dim=32",
    "model.global_out_dim=64", "model.local_out_dim=32", "views.crop_seconds=1.0",
    "data.num_workers=0", "train.log_every_steps=1", "train.device=cpu",
    "monitor.every_steps=0",  # the online monitor has its own tests (test_monitor.py)
]


@pytest.fixture
def fsdd() -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"real audio not available: {FSDD} is absent (it lives in the project's shared/ folder)")
    return FSDD


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never write the synthetic set into the user's ~/.cache from a test.
    monkeypatch.setenv("ASIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "asit-cache"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
