"""Checkpoints that survive: the newest and one older, a fallback on the older when the newest cannot
be read, and a failed save that says why and leaves the good files as they were."""

import errno
import logging

import pytest
import torch

import asit.checkpoint
from asit.checkpoint import atomic_save, load, load_newest, previous
from asit.config import load_config
from asit.errors import UserError
from pretrain.config import PretrainConfig
from pretrain.train import Pretrainer, pretrain

from conftest import TINY

SHORT = ["train.batch_size=4", "data.synthetic_clips=8", "train.epochs=2", "train.save_every_steps=1"]


def config(out, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, *SHORT, f"output_dir={out}", *overrides])


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def test_a_save_keeps_the_checkpoint_it_replaces(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for step in (1, 2, 3):
        atomic_save({"step": step}, path, keep_previous=True)
    assert previous(path) == tmp_path / "checkpoint.prev.pt"
    assert load(path)["step"] == 3 and load(previous(path))["step"] == 2
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "checkpoint.prev.pt"}


def test_an_unreadable_newest_falls_back_on_the_previous(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    assert load_newest(path) is None
    atomic_save({"step": 1}, path, keep_previous=True)
    atomic_save({"step": 2}, path, keep_previous=True)
    truncate(path)
    ckpt, source = load_newest(path)
    assert ckpt["step"] == 1 and source == previous(path)
    assert "checkpoint.pt: cannot be read: truncated or corrupt" in caplog.text and "checkpoint.prev.pt" in caplog.text
    truncate(previous(path))
    with pytest.raises(UserError, match=r"no checkpoint to resume from can be read.*prev\.pt.*start afresh"):
        load_newest(path)


def test_a_run_resumes_from_the_previous_checkpoint_when_the_newest_is_truncated(tmp_path, caplog):
    out = tmp_path / "run"
    pretrain(config(out, "train.max_steps=2"))
    assert load(out / "checkpoint.pt")["step"] == 2 and load(out / "checkpoint.prev.pt")["step"] == 1
    truncate(out / "checkpoint.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="asit"):
        pretrain(config(out, "train.max_steps=3"))
    assert "falling back on the previous checkpoint" in caplog.text
    assert f"resumed from {out / 'checkpoint.prev.pt'} at step 1" in caplog.text
    # The truncated file was overwritten, never kept as the older one.
    assert load(out / "checkpoint.pt")["step"] == 3 and load(out / "checkpoint.prev.pt")["step"] == 2

    truncate(out / "checkpoint.pt")
    truncate(out / "checkpoint.prev.pt")
    with pytest.raises(UserError, match="no checkpoint to resume from can be read"):
        Pretrainer(config(out))


def test_a_full_disk_says_so_and_leaves_the_good_checkpoints(tmp_path, monkeypatch):
    out = tmp_path / "run"
    pretrain(config(out, "train.max_steps=2"))
    before = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    assert {"checkpoint.pt", "checkpoint.prev.pt", "teacher_backbone.pt"} <= set(before)
    save = torch.save

    def disk_full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(asit.checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError) as err:
        pretrain(config(out, "train.max_steps=3"))
    monkeypatch.setattr(asit.checkpoint.torch, "save", save)
    message = str(err.value)
    assert f"could not save {out / 'checkpoint.pt'}: No space left on device" in message
    assert "bytes free there, about" in message and "needed" in message
    needed = int(message.split("about ")[1].split(" bytes needed")[0].replace(",", ""))
    assert needed > 0.5 * len(before["checkpoint.pt"])  # the tensors' bytes: most of the file
    assert {p.name: p.read_bytes() for p in out.glob("*.pt")} == before
    assert not list(out.glob(".*tmp*"))
