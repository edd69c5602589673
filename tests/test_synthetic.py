from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asit import synthetic
from asit.audio import SILENCE_PEAK, load_audio
from asit.sources import list_audio
from asit.synthetic import KINDS, default_cache_dir, ensure_synthetic_dataset, make_clip

SMALL = dict(num_clips=8, seconds=0.25, sample_rate=8000)


def clip_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("clip_*.wav"))


def test_folder_name_and_contents(tmp_path):
    folder = ensure_synthetic_dataset(tmp_path, **SMALL, seed=3)

    assert folder == tmp_path / "synthetic-v1-n8-s0.25-r8000-seed3"
    assert [p.name for p in clip_files(folder)] == [f"clip_{i:05d}.wav" for i in range(8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no staging left


def test_same_seed_gives_identical_bytes(tmp_path):
    first = ensure_synthetic_dataset(tmp_path / "a", **SMALL)
    second = ensure_synthetic_dataset(tmp_path / "b", **SMALL)

    for a, b in zip(clip_files(first), clip_files(second), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert (first / "labels.csv").read_bytes() == (second / "labels.csv").read_bytes()


def test_different_seed_gives_different_audio(tmp_path):
    first = ensure_synthetic_dataset(tmp_path, **SMALL, seed=0)
    second = ensure_synthetic_dataset(tmp_path, **SMALL, seed=1)

    assert first != second
    for a, b in zip(clip_files(first), clip_files(second), strict=True):
        assert not np.array_equal(sf.read(a)[0], sf.read(b)[0])


def test_clip_does_not_depend_on_set_size(tmp_path):
    few = ensure_synthetic_dataset(tmp_path, num_clips=3, seconds=0.25, sample_rate=8000)
    many = ensure_synthetic_dataset(tmp_path, num_clips=6, seconds=0.25, sample_rate=8000)

    assert (few / "clip_00002.wav").read_bytes() == (many / "clip_00002.wav").read_bytes()


def test_second_call_reuses_the_set(tmp_path, monkeypatch):
    folder = ensure_synthetic_dataset(tmp_path, **SMALL)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_writes(*args, **kwargs):
        raise AssertionError("the set was regenerated")

    monkeypatch.setattr(synthetic.sf, "write", no_writes)
    assert ensure_synthetic_dataset(tmp_path, **SMALL) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_clips_load_at_full_length_audible_and_unclipped(tmp_path):
    folder = ensure_synthetic_dataset(tmp_path, num_clips=16, seconds=0.5, sample_rate=16000)

    for path in clip_files(folder):
        wave = load_audio(path, 16000)
        assert wave.shape == (8000,)
        peak = wave.abs().max().item()
        assert 100 * SILENCE_PEAK < peak < 1.0
        assert sf.info(path).subtype == "PCM_16"


def test_files_hold_make_clip_audio_and_label(tmp_path):
    folder = ensure_synthetic_dataset(tmp_path, **SMALL, seed=5)
    labels = {Path(i.path).name: i.labels for i in list_audio(folder / "labels.csv")}

    for index, path in enumerate(clip_files(folder)):
        clip, label = make_clip(5, index, 2000, 8000)
        np.testing.assert_allclose(sf.read(path, dtype="float32")[0], clip, atol=1 / 32767)
        assert labels[path.name] == (label,)


def test_labels_csv_lists_every_clip_with_a_kind(tmp_path):
    folder = ensure_synthetic_dataset(tmp_path, num_clips=64, seconds=0.1, sample_rate=8000)

    items = list_audio(folder / "labels.csv")

    assert [Path(i.path) for i in items] == clip_files(folder)
    assert all(len(i.labels) == 1 and i.labels[0] in KINDS for i in items)
    counts = Counter(i.labels[0] for i in items)
    assert set(counts) == set(KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced classes


def test_primary_event_is_first_and_at_least_6db_louder():
    rng = np.random.default_rng(0)
    for primary in KINDS * 10:
        events = synthetic._events(rng, primary, 1600, 8000)

        peaks = [np.abs(samples).max() for _, _, samples in events]
        assert events[0][0] == primary
        assert all(peaks[0] >= 2 * p for p in peaks[1:])
        assert 1 <= len(events) <= 4
        assert all(0 <= onset and onset + len(x) <= 1600 for _, onset, x in events)


def test_events_fade_in_and_out():
    rng = np.random.default_rng(0)
    for kind in KINDS * 4:
        _, _, samples = synthetic._events(rng, kind, 4000, 8000)[0]
        peak = np.abs(samples).max()
        assert abs(samples[0]) < 0.01 * peak and abs(samples[-1]) < 0.01 * peak


def test_crash_midway_leaves_no_set_and_a_later_call_succeeds(tmp_path, monkeypatch):
    real_write = sf.write
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(synthetic.sf, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        ensure_synthetic_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither the final folder nor the staging one

    monkeypatch.setattr(synthetic.sf, "write", real_write)
    folder = ensure_synthetic_dataset(tmp_path, **SMALL)
    assert len(list_audio(folder / "labels.csv")) == 8


def test_leftover_staging_folder_of_a_killed_run_is_ignored(tmp_path):
    name = "synthetic-v1-n8-s0.25-r8000-seed0"
    stale = tmp_path / f".{name}.deadbeef.tmp"
    stale.mkdir()
    (stale / "clip_00000.wav").write_bytes(b"RIFF partial")

    folder = ensure_synthetic_dataset(tmp_path, **SMALL)

    assert folder == tmp_path / name
    assert len(list_audio(folder / "labels.csv")) == 8


def test_incomplete_final_folder_is_not_reused(tmp_path):
    # Only a complete set (labels.csv written last) counts; an empty folder with
    # the final name, e.g. made by hand, is replaced.
    (tmp_path / "synthetic-v1-n8-s0.25-r8000-seed0").mkdir()

    folder = ensure_synthetic_dataset(tmp_path, **SMALL)

    assert len(clip_files(folder)) == 8 and (folder / "labels.csv").is_file()


def test_lost_race_keeps_the_other_process_set(tmp_path, monkeypatch):
    # Simulate another process publishing the same set while this one generates.
    real_write_dataset = synthetic._write_dataset

    def write_then_lose_race(folder, *args):
        real_write_dataset(folder, *args)
        winner = tmp_path / "synthetic-v1-n8-s0.25-r8000-seed0"
        winner.mkdir()
        (winner / "labels.csv").write_text("path,label\n")

    monkeypatch.setattr(synthetic, "_write_dataset", write_then_lose_race)
    folder = ensure_synthetic_dataset(tmp_path, **SMALL)

    assert (folder / "labels.csv").read_text() == "path,label\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ASIT_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    folder = ensure_synthetic_dataset(**SMALL)
    assert folder.parent == tmp_path / "cache"

    monkeypatch.delenv("ASIT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "asit"


def test_rejects_empty_sets(tmp_path):
    with pytest.raises(ValueError, match="num_clips"):
        ensure_synthetic_dataset(tmp_path, num_clips=0)
    with pytest.raises(ValueError, match="seconds"):
        ensure_synthetic_dataset(tmp_path, seconds=0)
