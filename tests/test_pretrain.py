"""End-to-end behaviour of the pretraining stage: it learns, resumes exactly, scales out exactly,
and fails cleanly on bad data and non-finite losses."""

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asit.checkpoint import load, load_backbone
from asit.config import load_config
from asit.errors import UserError
from asit.sources import AudioItem, list_audio, write_csv
from pretrain.config import PretrainConfig
from pretrain.train import NonFiniteLossError, Pretrainer, pretrain, repeat_copies

from conftest import REPO, TINY


def config(*overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, *overrides])


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def fsdd_subset(fsdd: Path, folder: Path, n: int) -> str:
    items = list_audio(fsdd)[::3][:n]  # every speaker and digit
    write_csv(items, folder / "train.csv")
    return str(folder / "train.csv")


@pytest.mark.parametrize("head_batchnorm", [True, False])
def test_pretraining_on_real_audio_learns_and_the_monitor_sees_collapse(fsdd, tmp_path, head_batchnorm):
    # 48 steps on 256 FSDD clips. Reconstruction learns either way. With the paper's heads the
    # distillation collapses to a uniform teacher at this scale (entropy -> ln K, loss -> ln K), and the
    # collapse monitor must show it; with batch norm in the heads both distillation losses fall.
    data = fsdd_subset(fsdd, tmp_path, 256)
    out = tmp_path / "run"
    cfg = config(f"data.train={data}", f"output_dir={out}", "train.batch_size=16", "train.epochs=3",
                 "train.lr=0.016", "train.momentum_teacher=0.99",
                 f"model.head_batchnorm={head_batchnorm}")
    pretrain(cfg)
    log = read_log(out)
    assert len(log) == 48

    def late(key):
        return np.mean([row[key] for row in log[-8:]])

    assert late("loss/rec") < 0.85 * np.mean([row["loss/rec"] for row in log[:5]])
    if head_batchnorm:
        assert late("loss/global") < 0.95 * math.log(64) and late("loss/local") < 0.95 * math.log(32)
        assert late("collapse/global_entropy_frac") < 0.85
    else:
        assert late("collapse/global_entropy_frac") > 0.98
    backbone = load(out / "teacher_backbone.pt")
    assert backbone["frontend"]["sample_rate"] == 16000 and backbone["grid"] == [8, 6]
    assert backbone["model"]["pos_embed"].shape == (1, 1 + 48, 192)


def run_cli(out: Path, *overrides: str, torchrun: tuple[str, ...] = (), **popen) -> subprocess.Popen:
    """`python -m pretrain`, or under `torchrun` with these launcher arguments."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun] if torchrun else [sys.executable]
    args = [*launcher, "-m", "pretrain", *TINY, f"output_dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)  # with PYTHONFAULTHANDLER each process prints where it hangs
        out, _ = proc.communicate()
        pytest.fail(f"no exit after {timeout} s; the processes' last words:\n{out.decode()[-8000:]}")
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


SHORT_RUN = ["train.batch_size=4", "train.epochs=2", "data.synthetic_clips=32", "train.save_every_steps=3",
             "data.num_workers=1", "train.precision=fp32"]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    finish(run_cli(tmp_path / "straight", *SHORT_RUN))
    proc = run_cli(tmp_path / "killed", *SHORT_RUN)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = load(ckpt)["step"]
    assert 0 < killed_at < 16, f"killed at step {killed_at}: the run must die between its first checkpoint and its end"
    log = finish(run_cli(tmp_path / "killed", *SHORT_RUN))
    assert f"resumed from {ckpt} at step {killed_at}" in log
    a, b = load(tmp_path / "straight" / "checkpoint.pt"), load(ckpt)
    assert a["step"] == b["step"] == 16
    for part in ("student", "teacher", "loss"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resuming"


# Alien donors come from the local batch and stochastic depth draws per process, so both are off;
# everything else (data order, crops, corruption masks, loss normalisation, centres) is layout-free.
LAYOUT_FREE = ["gmml.p_alien=0", "model.drop_path=0", "train.precision=fp32", "train.epochs=1",
               "data.synthetic_clips=32", "train.max_steps=4"]


def assert_same_losses(one: Path, other: Path) -> None:
    a_log, b_log = read_log(one), read_log(other)
    assert len(a_log) == len(b_log) == 4
    for a, b in zip(a_log, b_log):
        for key in ("loss/rec", "loss/local", "loss/global", "loss/total"):
            # fp32 sums in another order: differences at the 1e-6 level that grow a little per step.
            assert a[key] == pytest.approx(b[key], rel=1e-3), (a["step"], key)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    finish(run_cli(tmp_path / "one", *LAYOUT_FREE, "train.batch_size=8"))
    finish(run_cli(tmp_path / "two", *LAYOUT_FREE, "train.batch_size=4", torchrun=("--standalone", "--nproc_per_node=2")))
    assert_same_losses(tmp_path / "one", tmp_path / "two")


def test_two_nodes_rehearsed_on_localhost_match_one_process(tmp_path):
    # The multi-node launch of the README, both "nodes" on this machine: two torchrun agents meet at a
    # c10d rendezvous (the first to bind the endpoint hosts its store), one process each.
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    node = ("--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}",
            f"--rdzv_id=asit-test-{port}")
    finish(run_cli(tmp_path / "one", *LAYOUT_FREE, "train.batch_size=8"))
    nodes = [run_cli(tmp_path / "nodes", *LAYOUT_FREE, "train.batch_size=4", torchrun=node) for _ in range(2)]
    for proc in nodes:
        finish(proc)
    assert_same_losses(tmp_path / "one", tmp_path / "nodes")


def write_clips(folder: Path, good: int, bad: int) -> list[AudioItem]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(good):
        sf.write(folder / f"good{i}.wav", 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
        items.append(AudioItem(str(folder / f"good{i}.wav")))
    for i in range(bad):
        (folder / f"bad{i}.wav").write_bytes(b"not audio at all")
        items.append(AudioItem(str(folder / f"bad{i}.wav")))
    return items


def test_bad_files_are_warned_about_once_counted_once_and_listed(tmp_path, caplog):
    # Two epochs and two loader processes: each bad file is met in both epochs, by either process, and
    # as bad0's stand-in bad1 is met again; still one warning, one count and one line per file.
    items = write_clips(tmp_path / "clips", good=30, bad=2)
    write_csv(items, tmp_path / "data.csv")
    out = tmp_path / "run"
    pretrain(config(f"data.train={tmp_path / 'data.csv'}", f"output_dir={out}", "train.batch_size=8",
                    "train.epochs=2", "data.num_workers=2", "data.max_bad_fraction=0.1"))
    bad = [item.path for item in items[-2:]]
    for path in bad:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and path in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert read_log(out)[-1]["data/bad_files"] == 2
    listed = [line.split("\t") for line in (out / "bad_files.txt").read_text().splitlines()]
    assert sorted(path for path, _ in listed) == bad
    assert all("cannot decode audio" in reason for _, reason in listed)


def test_too_many_bad_files_stop_the_run(tmp_path):
    items = write_clips(tmp_path / "clips", good=12, bad=20)
    write_csv(items, tmp_path / "data.csv")
    with pytest.raises(UserError, match=r"files read so far cannot be read.*max_bad_fraction.*bad_files\.txt"):
        pretrain(config(f"data.train={tmp_path / 'data.csv'}", f"output_dir={tmp_path / 'run'}",
                        "train.batch_size=8", "train.epochs=4", "data.max_bad_fraction=0.1"))
    listed = [line.split("\t")[0] for line in (tmp_path / "run" / "bad_files.txt").read_text().splitlines()]
    assert len(listed) > 2 and all(Path(path).name.startswith("bad") for path in listed)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Pretrainer(config(f"output_dir={out}", "train.batch_size=4", "data.synthetic_clips=32",
                                "train.epochs=1", "train.save_every_steps=2", "train.log_every_steps=5"))
    criterion_forward = trainer.criterion.forward

    def poisoned(*args, **kwargs):
        losses = criterion_forward(*args, **kwargs)
        if poisoned.calls >= 3:  # from the fourth step on
            losses["loss"] = losses["loss"] * float("nan")
        poisoned.calls += 1
        return losses

    poisoned.calls = 0
    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        trainer.run()
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values())


def test_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    out = tmp_path / "run"
    base = ["train.batch_size=4", "data.synthetic_clips=32", "train.epochs=1", "train.max_steps=1"]
    pretrain(config(f"output_dir={out}", *base))
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*student"):
        Pretrainer(config(f"output_dir={out}", *base, "model.global_out_dim=32"))


@pytest.mark.parametrize("init_file", ["teacher_backbone.pt", "checkpoint.pt"])
def test_init_from_an_earlier_teacher_continues_from_its_weights(tmp_path, init_file):
    # checkpoint.pt holds student and teacher: the teacher must be the one taken. Two steps: the first
    # is at learning rate 0 (warm-up), after which student and teacher are still equal.
    base = ["train.batch_size=4", "data.synthetic_clips=32", "train.epochs=1", "train.max_steps=2"]
    pretrain(config(f"output_dir={tmp_path / 'first'}", *base))
    teacher = load(tmp_path / "first" / "teacher_backbone.pt")["model"]
    student = load(tmp_path / "first" / "checkpoint.pt")["student"]
    assert not torch.equal(student["backbone.cls_token"], teacher["cls_token"])
    trainer = Pretrainer(config(f"output_dir={tmp_path / 'second'}", *base,
                                f"model.init={tmp_path / 'first' / init_file}"))
    for k, v in trainer.teacher.backbone.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    if init_file == "checkpoint.pt":  # and its student where asked (finetune's model.init_network)
        state, _ = load_backbone(tmp_path / "first" / init_file, "student")
        assert all(torch.equal(v, student[f"backbone.{k}"]) for k, v in state.items())
    else:
        with pytest.raises(UserError, match="only a pretraining checkpoint.pt holds a student"):
            load_backbone(tmp_path / "first" / init_file, "student")


def test_fast_bf16_step_computes_what_the_fp32_step_computes(tmp_path):
    # The fast path changes kernels (bf16 autocast; attention as separate ops on a CPU), not results:
    # two steps from the same weights, data and corruption give the same losses and logits within
    # bf16 rounding.
    runs = {}
    for precision in ("fp32", "bf16"):
        trainer = Pretrainer(config(f"output_dir={tmp_path / precision}", f"train.precision={precision}",
                                    "data.synthetic_clips=8", "train.batch_size=4", "model.drop_path=0"))
        attn = trainer.student.backbone.blocks[0].attn
        assert attn.fused_attn == (precision == "fp32")
        runs[precision] = [trainer.train_step(batch, step) for step, batch in zip(range(2), trainer.loader())]
    for (a, out_a), (b, out_b) in zip(runs["fp32"], runs["bf16"]):
        for key in ("rec", "local", "global"):
            assert b[key].item() == pytest.approx(a[key].item(), rel=1e-2), key
        logits_a, logits_b = out_a["student"]["global"].float(), out_b["student"]["global"].float()
        assert (logits_a - logits_b).abs().max() < 0.1 * logits_a.std()


def test_the_fbank_on_the_device_computes_what_the_loader_computes(tmp_path):
    # views.frontend=device moves the fbank from the loader to the training step, batched: same numbers.
    runs = {}
    for where in ("loader", "device"):
        trainer = Pretrainer(config(f"output_dir={tmp_path / where}", f"views.frontend={where}", "train.precision=fp32",
                                    "data.synthetic_clips=8", "train.batch_size=4"))
        batch = next(iter(trainer.loader()))
        assert batch["views"].shape[2:] == ((16000,) if where == "device" else (1, 128, 96))
        runs[where] = [trainer.train_step(batch, step) for step, batch in zip(range(2), trainer.loader())]
    for (a, out_a), (b, out_b) in zip(runs["loader"], runs["device"]):
        assert torch.allclose(out_a["clean"], out_b["clean"], atol=1e-6)
        for key in ("rec", "local", "global"):
            assert b[key].item() == pytest.approx(a[key].item(), rel=1e-5), key


def test_corrupted_copies_train_against_one_teacher_pass_as_against_one_pass_per_copy(tmp_path):
    # Without batch norm in the heads a token's local target does not depend on which other tokens go
    # through the head: the teacher's one pass over every token, split per copy, is then exactly the
    # teacher run on each copy's selection.
    cfg = config("data.synthetic_clips=8", "train.batch_size=4", "gmml.copies=3", "model.head_batchnorm=false",
                 "train.precision=fp32", f"output_dir={tmp_path}")
    trainer = Pretrainer(cfg)
    batch = next(iter(trainer.loader()))
    views = batch["views"]
    clean = torch.cat([views[:, 0], views[:, 1]])
    corrupted, _, token_mask = trainer.corrupt(views, batch["index"], 0)
    assert corrupted.shape[0] == 3 * len(clean)
    copies = token_mask.unflatten(0, (3, -1))
    assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    one = config("data.synthetic_clips=8", "train.batch_size=4", f"output_dir={tmp_path}")
    assert torch.equal(copies[0], Pretrainer(one).corrupt(views, batch["index"], 0)[2])  # copy 0 is ASiT's
    with torch.no_grad():
        shared = repeat_copies(trainer.teacher(clean, torch.ones_like(copies[0])), 3, token_mask)
        for c in range(3):
            alone = trainer.teacher(clean, copies[c])
            rows = slice(c * len(clean), (c + 1) * len(clean))
            assert torch.allclose(shared["global"][rows], alone["global"], atol=1e-6)
            first = int(token_mask[:c * len(clean)].sum())
            assert torch.allclose(shared["local"][first:first + len(alone["local"])], alone["local"], atol=1e-6)
    losses, _ = trainer.train_step(batch, 0)
    assert all(torch.isfinite(v).all() for v in losses.values())
