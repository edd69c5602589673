"""The online monitor: a quick probe that finds what is there, held-out groups, and a pretraining run
that logs its scores at the interval without changing what it computes."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asit.config import load_config
from asit.errors import InputError
from asit.monitor import MonitorConfig, OnlineMonitor, ridge_probe, split_half
from asit.sources import AudioItem
from pretrain.config import PretrainConfig
from pretrain.train import pretrain

from conftest import TINY
from test_pretrain import read_log


def accuracy(scores, y):
    return float((scores.argmax(dim=1) == y).float().mean())


def clusters(n: int, seed: int, informative: bool = True):
    """n points of 4 classes in 50 dimensions; class means apart in 4 of them (or labels shuffled)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 50, generator=g)
    x[:, :4] += 3 * F.one_hot(y, 4)
    if not informative:
        y = y[torch.randperm(n, generator=g)]
    return x, y


def test_the_quick_probe_finds_a_linear_class_structure_and_nothing_where_there_is_none():
    for informative, check in ((True, lambda a: a > 0.85), (False, lambda a: a < 0.45)):
        x, y = clusters(400, 0, informative)
        probe = ridge_probe(x[:200], F.one_hot(y[:200], 4).float(), [None] * 200, (0.01, 0.1, 1.0, 10.0), 3, 0)
        assert check(accuracy(probe(x[200:]), y[200:])), informative


def test_the_held_out_half_never_shares_a_group_with_the_fitting_half():
    items = [AudioItem(f"{s}_{i}.wav", (str(i % 3),), group=s) for s in "abcdefgh" for i in range(5)]
    fit, test = split_half(items, seed=0)
    assert {i.group for i in fit}.isdisjoint({i.group for i in test})
    assert len({i.group for i in test}) == 4 and len(fit) + len(test) == len(items)
    assert split_half(items, seed=1) != (fit, test)  # the seed draws the half


def test_a_clip_with_several_labels_is_refused_by_name(tmp_path):
    items = [AudioItem("a.wav", ("x",)), AudioItem("b.wav", ("x", "y")), AudioItem("c.wav", ("y",))]
    with pytest.raises(InputError, match="b.wav has 2 labels"):
        OnlineMonitor(items[:2], items[2:], None, 96, MonitorConfig(), 0, "labels.csv")


def run_dir(tmp_path: Path, name: str, *overrides: str) -> Path:
    out = tmp_path / name
    cfg = load_config(PretrainConfig, None, [*TINY, "data.synthetic_clips=48", "train.batch_size=8",
                                             "train.epochs=1", "train.precision=fp32", f"output_dir={out}",
                                             *overrides])
    pretrain(cfg)
    return out


def test_a_run_logs_the_monitor_at_its_interval_and_computes_the_same_losses_without_it(tmp_path):
    watched = run_dir(tmp_path, "watched", "monitor.every_steps=2", "monitor.max_clips=16")
    plain = run_dir(tmp_path, "plain")  # monitor.every_steps=0 (TINY)
    rows = read_log(watched)
    monitored = {row["step"]: row for row in rows if "monitor/teacher/knn" in row}
    assert sorted(monitored) == [0, 2, 4, 6]  # step 0 (untrained), every 2 steps, and the end
    for row in monitored.values():
        for net in ("teacher", "student"):
            for score in ("knn", "linear", "knn_freq", "linear_freq"):
                assert 0 <= row[f"monitor/{net}/{score}"] <= 1
    # Before any training the teacher is the student.
    assert all(monitored[0][f"monitor/teacher/{s}"] == monitored[0][f"monitor/student/{s}"] for s in ("knn", "linear"))
    losses = [{k: v for k, v in row.items() if k.startswith("loss/")} for row in rows if "loss/total" in row]
    assert losses == [{k: v for k, v in row.items() if k.startswith("loss/")} for row in read_log(plain)]
    events = list((watched / "tensorboard").glob("events.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert "monitor/teacher/linear_freq" in tags and "monitor/student/knn" in tags
    assert not any(k.startswith("monitor/") for row in read_log(plain) for k in row)
    assert np.isfinite([row["time/seconds_per_step"] for row in rows if "time/seconds_per_step" in row]).all()


def test_labels_the_fitting_clips_never_show_are_refused_by_name():
    fit = [AudioItem("a.wav", ("x",)), AudioItem("b.wav", ("y",))]
    with pytest.raises(InputError, match="never show \\(z\\)"):
        OnlineMonitor(fit, [AudioItem("c.wav", ("z",))], None, 96, MonitorConfig(), 0, "labels.csv")
    with pytest.raises(InputError, match="carry 1 label"):
        OnlineMonitor(fit[:1], fit[:1], None, 96, MonitorConfig(), 0, "labels.csv")


def test_an_embedded_set_too_small_to_split_runs_without_a_monitor_and_a_user_s_set_is_refused(tmp_path, caplog):
    from asit.features import FrontEndConfig
    from asit.synthetic import LABELS_FILE, ensure_synthetic_dataset

    labels = str(ensure_synthetic_dataset(tmp_path, num_clips=4) / LABELS_FILE)  # 4 kinds: no half holds them all
    assert OnlineMonitor.from_config(MonitorConfig(), labels, FrontEndConfig(), 96, 0) is None
    assert "no online monitor" in caplog.text
    with pytest.raises(InputError, match="never show"):
        OnlineMonitor.from_config(MonitorConfig(data=labels), None, FrontEndConfig(), 96, 0)
