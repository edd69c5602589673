"""Tar shards (`asit shard`): packing keeps every usable clip exactly, listing and reading give back the
files' items and audio, and a run from shards computes what a run from the files computes."""

import csv
import json
import multiprocessing
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asit import shards
from asit.audio import AudioError, load_audio
from asit.cli import main
from asit.config import load_config
from asit.sources import AudioItem, list_audio, write_csv
from asit.views import PretrainViews
from pretrain.config import PretrainConfig
from pretrain.train import pretrain

from conftest import TINY

# FLAC at 24 bits rounds each sample to a multiple of 2**-23 (error at most half of that), plus float
# rounding of the resampling done per channel instead of on the mix.
FLAC_TOLERANCE = 2.0**-23


def write_clips(folder: Path, corrupt: bool = True) -> list[Path]:
    """Noise clips of different lengths, rates, channels and formats (two folders), plus a corrupt one."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        rate = (16000, 22050, 8000, 44100)[i % 4]
        channels = 2 if i % 3 == 0 else 1
        samples = 0.1 * rng.standard_normal((int(rate * (0.6 + 0.1 * i)), channels)).astype(np.float32)
        path = folder / ("dog" if i % 2 else "cat") / f"clip{i:02d}.{'flac' if i % 5 == 4 else 'wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, rate, subtype="PCM_16" if i % 2 else "FLOAT" if path.suffix == ".wav" else "PCM_24")
        files.append(path)
    if corrupt:
        (folder / "cat" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return files


def pack(source, out: Path, *flags: str) -> str:
    assert main(["shard", str(source), str(out), *flags]) == 0
    return str(out / "index.json")


def member_bytes(item: AudioItem) -> bytes:
    shard, member = item.path.split("::")
    with tarfile.open(shard) as tar:
        return tar.extractfile(member).read()


def source_of(item: AudioItem) -> str:
    shard, member = item.path.split("::")
    with tarfile.open(shard) as tar:
        return json.loads(tar.extractfile(member.split(".")[0] + ".json").read())["source"]


def fresh_process_caches():
    """As a spawned worker starts: no member tables, no open shards."""
    shards._TABLES.clear()
    shards._forked()
    for fd in shards._HANDLES.values():
        os.close(fd)
    shards._HANDLES.clear()


def test_shards_hold_exactly_the_usable_files_and_decode_to_their_audio(tmp_path, capsys, caplog):
    files = write_clips(tmp_path / "clips")
    index = pack(tmp_path / "clips", tmp_path / "shards", "--shard-size", "5")
    summary = capsys.readouterr().out
    assert "packed 12 of 13 clips into 3 shards" in summary and "1 unusable files skipped" in summary
    assert "broken.wav" in caplog.text and caplog.text.count("skipping") == 1

    doc = json.loads(Path(index).read_text())
    assert [s["url"] for s in doc["shardlist"]] == ["000000.tar", "000001.tar", "000002.tar"]
    assert [s["nsamples"] for s in doc["shardlist"]] == [5, 5, 2]
    assert sum(s["nsamples"] for s in doc["shardlist"]) == 12
    assert [Path(s["path"]).name for s in doc["asit"]["skipped"]] == ["broken.wav"]

    items = list_audio(index)
    # The files in the order the folder lists them, minus the corrupt one.
    assert [source_of(item) for item in items] == [str(f) for f in sorted(files)]
    for item in items:
        source = source_of(item)
        assert member_bytes(item) == Path(source).read_bytes()  # the encoded bytes, unchanged
        assert item.path.endswith(Path(source).suffix)
        for rate in (16000, sf.info(source).samplerate):
            assert torch.equal(load_audio(item.path, rate), load_audio(source, rate)), (source, rate)

    # The offsets in the index are where tarfile finds each member's data.
    for number, entry in enumerate(doc["shardlist"]):
        with tarfile.open(tmp_path / "shards" / entry["url"]) as tar:
            found = {m.name: (m.offset_data, m.size) for m in tar}
        rows = [r for r in doc["asit"]["members"] if r[0] == number]
        assert rows and all(found[r[1]] == (r[2], r[3]) for r in rows)


def test_a_brace_pattern_without_the_index_lists_the_same_items(tmp_path):
    write_clips(tmp_path / "clips")
    index = pack(tmp_path / "clips", tmp_path / "shards", "--shard-size", "5")
    from_index = list_audio(index)
    (tmp_path / "shards" / "index.json").unlink()
    fresh_process_caches()
    from_pattern = list_audio(tmp_path / "shards" / "{000000..000002}.tar")
    assert from_pattern == from_index
    assert list_audio(tmp_path / "shards" / "000001.tar") == from_index[5:10]
    # A process that never listed the shards (a spawned worker) finds the members by their headers.
    fresh_process_caches()
    for item in from_index:
        assert torch.equal(load_audio(item.path, 16000), load_audio(source_of(item), 16000))
    with pytest.raises(FileNotFoundError, match="000003.tar: shard does not exist"):
        list_audio(tmp_path / "shards" / "{000000..000003}.tar")


def test_labels_folds_and_groups_round_trip_from_a_csv(tmp_path):
    files = write_clips(tmp_path / "clips", corrupt=False)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "fold", "speaker"])
        for i, path in enumerate(files):
            writer.writerow([path.relative_to(tmp_path), "bark,loud" if i % 2 else "", i % 3 + 1, f"s{i % 4}"])
    expected = list_audio(tmp_path / "data.csv")
    index = pack(tmp_path / "data.csv", tmp_path / "shards", "--shard-size", "4")
    for listed in (list_audio(index), list_audio(tmp_path / "shards" / "{000000..000002}.tar")):
        assert [(i.labels, i.fold, i.group) for i in listed] == [(i.labels, i.fold, i.group) for i in expected]
        assert listed[1].labels == ("bark", "loud") and listed[0].labels == () and listed[0].group == "s0"

    # Labels from folders are packed too; a CSV of shard members lists as the members themselves.
    labelled = list_audio(pack(tmp_path / "clips", tmp_path / "by_folder", "--shard-size", "6",
                               "--labels-from-folders"))
    assert [i.labels for i in labelled] == [i.labels for i in list_audio(tmp_path / "clips", True)]
    write_csv(labelled, tmp_path / "members.csv")
    assert list_audio(tmp_path / "members.csv") == labelled
    # Shards re-pack into other shards (another shard size) with their labels and audio.
    repacked = list_audio(pack(tmp_path / "by_folder" / "index.json", tmp_path / "repacked", "--shard-size", "7"))
    assert [i.labels for i in repacked] == [i.labels for i in labelled]
    assert all(member_bytes(a) == member_bytes(b) for a, b in zip(repacked, labelled))


@pytest.mark.parametrize("mono", [True, False])
def test_resampled_packing_gives_the_audio_the_loader_computes(tmp_path, mono):
    write_clips(tmp_path / "clips", corrupt=False)
    flags = ["--shard-size", "5", "--sample-rate", "16000", *(["--mono"] if mono else [])]
    items = list_audio(pack(tmp_path / "clips", tmp_path / "shards", *flags))
    assert len(items) == 12
    for item in items:
        source = source_of(item)
        info, stored = sf.info(source), sf.info(_member_file(item, tmp_path))
        assert stored.samplerate == 16000
        assert stored.channels == (1 if mono else info.channels)
        unchanged = info.samplerate == 16000 and (info.channels == 1 or not mono)
        # Clips already at the rate (and mono if asked) keep their bytes; the others are 24-bit FLAC.
        assert item.path.endswith(Path(source).suffix if unchanged else ".flac")
        packed, direct = load_audio(item.path, 16000), load_audio(source, 16000)
        assert packed.shape == direct.shape
        if unchanged:
            assert torch.equal(packed, direct)
        else:
            assert (packed - direct).abs().max().item() <= FLAC_TOLERANCE, source


def _member_file(item: AudioItem, folder: Path) -> Path:
    path = folder / ("member" + Path(item.path).suffix)
    path.write_bytes(member_bytes(item))
    return path


def test_a_run_from_shards_computes_the_losses_of_the_run_from_files(tmp_path):
    write_clips(tmp_path / "clips", corrupt=False)
    index = pack(tmp_path / "clips", tmp_path / "shards", "--shard-size", "5")
    logs = {}
    for name, data in (("files", tmp_path / "clips"), ("shards", index)):
        out = tmp_path / name
        # One loader worker: the shard run reads its members in a forked process.
        pretrain(load_config(PretrainConfig, None, [
            *TINY, f"data.train={data}", f"output_dir={out}", "train.batch_size=4", "train.epochs=1",
            "train.max_steps=3", "train.precision=fp32", "data.num_workers=1"]))
        logs[name] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(logs["files"]) == len(logs["shards"]) == 3
    for a, b in zip(logs["files"], logs["shards"]):
        # The losses, and the data counters (no failed reads in either run).
        keys = [k for k in a if k.startswith(("loss/", "data/"))]
        assert "loss/total" in keys and {k: a[k] for k in keys} == {k: b.get(k) for k in keys}, a["step"]


def test_a_forked_process_reads_members_with_its_own_file_handles(tmp_path):
    write_clips(tmp_path / "clips", corrupt=False)
    items = list_audio(pack(tmp_path / "clips", tmp_path / "shards", "--shard-size", "5"))
    parent = [load_audio(item.path, 16000) for item in items]  # opens the shards in this process
    # One thread per child, as DataLoader sets up its workers: OpenMP's pool does not survive a fork.
    with multiprocessing.get_context("fork").Pool(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        children = pool.starmap(load_audio, [(item.path, 16000) for item in items])
    assert all(torch.equal(a, b) for a, b in zip(parent, children))
    assert [load_audio(item.path, 16000).shape for item in items] == [w.shape for w in parent]


def test_damaged_shard_members_are_audio_errors_that_name_shard_and_member(tmp_path, caplog):
    write_clips(tmp_path / "clips", corrupt=False)
    index = pack(tmp_path / "clips", tmp_path / "shards", "--shard-size", "5")
    doc = json.loads(Path(index).read_text())
    rows = doc["asit"]["members"]
    items = list_audio(index)

    # The last shard cut in the middle of its last audio member.
    last = tmp_path / "shards" / "000002.tar"
    shard_no, member, offset, size = rows[-1][:4]
    assert shard_no == 2
    os.truncate(last, offset + size // 2)
    with pytest.raises(AudioError, match=rf"000002\.tar::{member}: truncated shard member"):
        load_audio(items[-1].path, 16000)
    assert torch.equal(load_audio(items[-2].path, 16000), load_audio(rows[-2][7], 16000))  # its neighbour

    # Garbage over the start of a member's audio: it does not decode.
    first = tmp_path / "shards" / "000000.tar"
    shard_no, member, offset, size = rows[1][:4]
    with open(first, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * 64)
    with pytest.raises(AudioError, match=rf"000000\.tar::{member}: cannot decode audio"):
        load_audio(items[1].path, 16000)

    # The shard rewritten after it was listed: the tar header before the data is not this member's.
    with open(first, "r+b") as f:
        f.seek(rows[2][2] - 512)
        f.write(b"x" * 100)
    with pytest.raises(AudioError, match=rf"000000\.tar::{rows[2][1]}: no valid tar header"):
        load_audio(items[2].path, 16000)

    # Listed by their headers, damaged shards give every clip whose member header survived: the
    # truncated member is listed (and fails to read), the one without a header is not.
    fresh_process_caches()
    listed = list_audio(tmp_path / "shards" / "{000000..000002}.tar")
    assert listed == items[:2] + items[3:]
    assert "000002.tar: damaged tar shard" in caplog.text
    with pytest.raises(AudioError, match="truncated shard member"):
        load_audio(listed[-1].path, 16000)

    # The loader replaces a damaged member by the next clip, as it replaces an unreadable file.
    cfg = load_config(PretrainConfig, None, TINY)
    views = PretrainViews(items, cfg.frontend, cfg.views, cfg.seed, cfg.model.patch_size)
    replaced = views[2, 0]
    assert replaced["failed"] == 1 and views[1, 0]["failed"] == 2 and views[3, 0]["failed"] == 0
    # The reason names shard and member (reported with the batch, or logged by older loaders).
    assert f"000000.tar::{rows[2][1]}" in str(replaced.get("errors", "")) + caplog.text


def test_listing_an_index_opens_no_shard_and_is_fast(tmp_path):
    # 100 000 clips in 100 shards that do not exist: listing reads the index only.
    rows = [[s, f"{s * 1000 + i:09d}.flac", 512 + 2048 * i, 1000, ["a"], None, None, f"/data/{s}/{i}.flac"]
            for s in range(100) for i in range(1000)]
    doc = {"__kind__": "wids-shard-index-v1", "wids_version": 1,
           "shardlist": [{"url": f"{s:06d}.tar", "nsamples": 1000} for s in range(100)],
           "asit": {"version": 1, "fields": shards.FIELDS, "members": rows}}
    (tmp_path / "index.json").write_text(json.dumps(doc))
    start = time.perf_counter()
    items = list_audio(tmp_path / "index.json")
    elapsed = time.perf_counter() - start
    assert len(items) == 100_000 and items[1234].path == f"{tmp_path}/000001.tar::000001234.flac"
    assert elapsed < 5.0, f"listing 100 000 clips took {elapsed:.1f} s"
    with pytest.raises(AudioError, match="000001.tar::000001234.flac: cannot read shard member"):
        load_audio(items[1234].path, 16000)


def test_packing_refuses_a_used_folder_and_a_source_without_usable_audio(tmp_path, capsys):
    write_clips(tmp_path / "clips", corrupt=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "000000.tar").write_bytes(b"")
    assert main(["shard", str(tmp_path / "clips"), str(tmp_path / "used"), "--shard-size", "4"]) != 0
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.wav").write_bytes(b"junk")
    sf.write(tmp_path / "bad" / "quiet.wav", np.zeros(1600, np.float32), 16000)
    assert main(["shard", str(tmp_path / "bad"), str(tmp_path / "none"), "--shard-size", "4"]) != 0
    assert "none of its 2 files is usable audio" in capsys.readouterr().err


def test_webdataset_reads_the_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    write_clips(tmp_path / "clips", corrupt=False)
    items = list_audio(pack(tmp_path / "clips", tmp_path / "shards", "--shard-size", "5"))
    samples = list(wds.WebDataset(str(tmp_path / "shards" / "{000000..000002}.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(12)]
    for sample, item in zip(samples, items):
        ext = Path(item.path).suffix[1:]
        assert sample[ext] == member_bytes(item)
        assert json.loads(sample["json"])["source"] == source_of(item)


def test_real_audio_packs_to_the_same_clips(fsdd, tmp_path):
    files = list_audio(fsdd)[::75][:40]  # every speaker and digit
    write_csv(files, tmp_path / "fsdd.csv")
    items = list_audio(pack(tmp_path / "fsdd.csv", tmp_path / "shards", "--shard-size", "16"))
    assert len(items) == 40
    assert {source_of(item) for item in items} == {os.path.abspath(f.path) for f in files}
    for item, file in zip(items, files):
        assert torch.equal(load_audio(item.path, 16000), load_audio(file.path, 16000))
    resampled = list_audio(pack(tmp_path / "fsdd.csv", tmp_path / "at16k", "--shard-size", "16",
                                "--sample-rate", "16000", "--mono"))
    for item, file in zip(resampled, files):
        assert (load_audio(item.path, 16000) - load_audio(file.path, 16000)).abs().max() <= FLAC_TOLERANCE
