"""Tar shards of audio clips: packing (`asit shard`), listing and reading a clip by random access.

    asit shard DATA OUT/ --shard-size N [--sample-rate R] [--mono] [--labels-from-folders]

packs the clips of DATA (a folder, a .json manifest or a .csv: anything `asit.sources.list_audio`
reads) into `OUT/000000.tar, OUT/000001.tar, ...` in webdataset's format: per clip two consecutive
members `<key>.<ext>` (the file's encoded bytes, unchanged) and `<key>.json` (labels, fold, group, the
source path, the stored rate and channels). Keys are the clip's position in the packed set, zero-padded
to nine digits. `--sample-rate` and `--mono` resample and mix down at packing time, and only clips that
need it are re-encoded (24-bit FLAC); the others keep their bytes. Files the loader would refuse (not
decodable, empty, NaN, silent: `asit.audio.AudioError`) are skipped, the first one is warned, and all
of them are counted in the summary and listed in the index. `OUT/index.json` is a wids shard index
(`{"__kind__": "wids-shard-index-v1", "shardlist": [{"url", "nsamples", "filesize"}, ...]}`), with
under "asit" each clip's shard, member name, data offset and size, labels, fold, group and source.

Reading. `list_audio("OUT/index.json")`, or a brace pattern `list_audio("OUT/{000000..000191}.tar")`
(or one `.tar`), lists `AudioItem`s whose path names a member: `/abs/OUT/000001.tar::000000012.wav`.
Listing an index opens no shard; a pattern is listed by reading the shards' tar headers and json
members. `asit.audio.load_audio` reads such a path with one positional read (the member's 512-byte tar
header and its data: the header is checked, so a shard rewritten since it was listed, truncated or
damaged is an `AudioError` naming shard and member, never wrong audio), decodes it with soundfile from
memory and applies exactly the checks and the resampling of a file. Open shards and member offsets are
cached per process; a forked DataLoader worker drops the inherited handles and opens its own.

What is exact. Shards are a map-style data set, not a stream: the items are listed in the order of the
source they were packed from, so the global batch sampler, the per-(seed, epoch, clip) crops,
multi-process equivalence, resume at the step it left and the replacement of unreadable clips are the
same code as for files. Packed without resampling (and from a source without bad files), a run from the
shards reads the same bytes at the same indices as a run from the files, and computes the same losses,
step by step. Packed with `--sample-rate` set to the front end's rate (and/or `--mono`), the loader
reads the waveform it would have computed from the file, rounded to 24 bits by the FLAC: |difference|
<= 2**-23 of full scale (a clip kept in stereo is resampled per channel, the same linear operation up to
float rounding), so the run is equivalent but not bit-identical. Skipped bad files shift the indices of
the clips after them: such a run sees the same usable clips as one from the files, in another order.
Listing an index keeps each member's (offset, size) in memory, one dict entry per clip, inherited by
forked workers; a worker that did not inherit them (spawned) reads a shard's headers once, on its first
clip from that shard.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from .audio import AudioError, _read, _resampler, load_audio
from .errors import InputError, MissingError
from .sources import AUDIO_EXTENSIONS, AudioItem, list_audio

log = logging.getLogger("asit")

INDEX_KIND = "wids-shard-index-v1"
INDEX_NAME = "index.json"
MEMBER_SEP = "::"  # "<shard>.tar::<member>": a clip inside a shard
FIELDS = ["shard", "member", "offset", "size", "labels", "fold", "group", "source"]
KEY_DIGITS = 9
TAR_FORMAT = tarfile.USTAR_FORMAT
HEADER = tarfile.BLOCKSIZE  # a USTAR member header: one 512-byte block
OPEN_SHARDS = 32  # file handles kept open per process


# ---- names ----------------------------------------------------------------------------------------
def split_member(path: str) -> tuple[str, str] | None:
    """(shard, member) of a member path, None for a plain file path."""
    shard, sep, member = str(path).rpartition(MEMBER_SEP)
    if not sep or not shard.endswith(".tar") or not member:
        return None
    return shard, member


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's (key, extension): the extension starts at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


# ---- packing --------------------------------------------------------------------------------------
def pack(source, out, shard_size: int, sample_rate: int | None = None, mono: bool = False,
         labels_from_folders: bool = False) -> dict:
    """Pack the clips of `source` into `out/000000.tar ...` and `out/index.json`; returns a summary."""
    if shard_size < 1:
        raise InputError(f"--shard-size must be a positive number of clips, got {shard_size}")
    if sample_rate is not None and sample_rate < 1:
        raise InputError(f"--sample-rate must be positive, got {sample_rate}")
    items = list_audio(source, labels_from_folders)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: output folder exists and is not empty (shards are written to an empty folder)")
    out.mkdir(parents=True, exist_ok=True)

    rows, shardlist, skipped = [], [], []
    writer = None
    for item in tqdm(items, desc=f"packing {out}", unit="clip", disable=None):  # shown on a terminal only
        try:
            data, ext, stored_rate, channels = _encode(item.path, sample_rate, mono)
        except AudioError as err:
            if not skipped:
                log.warning("skipping %s (bad files are skipped, counted and listed in %s)", err, INDEX_NAME)
            skipped.append({"path": os.path.abspath(item.path), "reason": str(err)})
            continue
        if writer is None or writer.count == shard_size:
            if writer is not None:
                shardlist.append(writer.close())
            writer = _ShardWriter(out, len(shardlist))
        key = f"{len(rows):0{KEY_DIGITS}d}"
        meta = {"key": key, "labels": list(item.labels), "fold": item.fold, "group": item.group,
                "source": os.path.abspath(item.path), "sample_rate": stored_rate, "channels": channels}
        offset = writer.add(f"{key}.{ext}", data)
        writer.add(f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        writer.count += 1
        rows.append([len(shardlist), f"{key}.{ext}", offset, len(data), list(item.labels), item.fold,
                     item.group, meta["source"]])
    if writer is not None:
        shardlist.append(writer.close())
    if not rows:
        raise InputError(f"{source}: none of its {len(items)} files is usable audio (first: {skipped[0]['reason']})")

    index = {"__kind__": INDEX_KIND, "wids_version": 1, "shardlist": shardlist,
             "asit": {"version": 1, "source": str(source), "sample_rate": sample_rate, "mono": mono,
                      "skipped": skipped, "fields": FIELDS, "members": rows}}
    tmp = out / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    tmp.replace(out / INDEX_NAME)
    return {"clips": len(rows), "shards": len(shardlist), "skipped": len(skipped), "files": len(items),
            "bytes": sum(s["filesize"] for s in shardlist), "index": str(out / INDEX_NAME),
            "pattern": str(out / _brace(len(shardlist)))}


def _brace(num_shards: int) -> str:
    last = f"{num_shards - 1:06d}"
    return f"{last}.tar" if num_shards == 1 else f"{{000000..{last}}}.tar"


def _encode(path: str, sample_rate: int | None, mono: bool) -> tuple[bytes, str, int, int]:
    """(bytes to store, extension, stored rate, stored channels); AudioError where the loader would refuse.

    `path` is a file, or a member of other shards (re-packing them with another shard size or rate)."""
    member = split_member(path)
    if member:
        data = read_member(path)
    else:
        if not Path(path).is_file():
            raise AudioError(f"{path}: file not found")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise AudioError(f"{path}: cannot read ({err})") from err
    samples, rate_in = _read(path, io.BytesIO(data))  # the loader's decoding
    load_audio(path, rate_in)  # and every check it makes: empty, non-finite, silent
    ext = Path(member[1] if member else path).suffix.lower()
    channels = samples.shape[1]
    rate = sample_rate or rate_in
    if ext in AUDIO_EXTENSIONS and rate == rate_in and not (mono and channels > 1):
        return data, ext[1:], rate, channels
    if mono:
        wave = load_audio(path, rate)[:, None]  # [T, 1]: the loader's own mix-down and resampling
    else:
        wave = torch.from_numpy(samples).T  # [C, T]
        if rate != rate_in:
            wave = _resampler(rate_in, rate)(wave)
        wave = wave.clamp_(-1.0, 1.0).T
    buf = io.BytesIO()
    sf.write(buf, wave.numpy(), rate, format="FLAC", subtype="PCM_24")
    return buf.getvalue(), "flac", rate, wave.shape[1]


class _ShardWriter:
    """One shard, written under a temporary name and renamed when complete."""

    def __init__(self, out: Path, number: int):
        self.url = f"{number:06d}.tar"
        self.final = out / self.url
        self.tmp = out / f".{self.url}.tmp"
        self.tar = tarfile.open(self.tmp, "w", format=TAR_FORMAT)
        self.count = 0

    def add(self, name: str, data: bytes) -> int:
        """Write a member; returns the offset of its data in the shard."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0  # reproducible shards
        header = info.tobuf(TAR_FORMAT, self.tar.encoding, self.tar.errors)
        if len(header) != HEADER:
            raise InputError(f"{name}: member name too long for a one-block tar header")
        offset = self.tar.offset + HEADER
        self.tar.addfile(info, io.BytesIO(data))
        return offset

    def close(self) -> dict:
        self.tar.close()
        self.tmp.replace(self.final)
        return {"url": self.url, "nsamples": self.count, "filesize": self.final.stat().st_size}


# ---- listing --------------------------------------------------------------------------------------
def items_from_index(doc: dict, index_path) -> list[AudioItem]:
    """The clips of a parsed shard index, in packing order; opens no shard if asit wrote the index."""
    base = Path(os.path.abspath(index_path)).parent
    urls = [entry["url"] for entry in doc.get("shardlist") or []]
    if not urls:
        raise InputError(f"{index_path}: shard index has an empty shardlist")
    shards = [str(base / url) for url in urls]
    packed = doc.get("asit")
    if not packed:  # written by another tool (wids): read the shards' headers
        return _non_empty(index_path, [item for shard in shards for item in _scan(shard)])
    try:
        at = {name: i for i, name in enumerate(packed["fields"])}
        shard_, member_, offset_, size_ = at["shard"], at["member"], at["offset"], at["size"]
        labels_, fold_, group_ = at["labels"], at["fold"], at["group"]
        tables: list[dict[str, tuple[int, int]]] = [{} for _ in shards]
        items = []
        for row in packed["members"]:
            number, member = row[shard_], row[member_]
            tables[number][member] = (row[offset_], row[size_])
            items.append(AudioItem(f"{shards[number]}{MEMBER_SEP}{member}", tuple(row[labels_]), row[fold_],
                                   row[group_]))
    except (KeyError, IndexError, TypeError) as err:
        raise InputError(f"{index_path}: malformed shard index ({type(err).__name__}: {err}); "
                         f"pack the data again with asit shard") from err
    # Where the members lie, for this process and the loader workers it forks: reading is one read.
    for shard, table in zip(shards, tables):
        _TABLES[shard] = table
    return _non_empty(index_path, items)


def list_shards(pattern) -> list[AudioItem]:
    """The clips of the shards a brace pattern (or one path) names, in pattern and tar order."""
    from braceexpand import braceexpand

    shards = list(braceexpand(str(pattern)))
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise MissingError(f"{missing[0]}: shard does not exist"
                                + (f" ({len(missing)} of the {len(shards)} shards of {pattern} are missing)"
                                   if len(shards) > 1 else ""))
    return _non_empty(pattern, [item for shard in shards for item in _scan(shard)])


def _scan(shard: str) -> list[AudioItem]:
    """Read a shard's tar headers and json members; remember where its audio members lie."""
    shard = os.path.abspath(shard)
    samples: list[dict] = []
    table = {}
    try:
        # ignore_zeros: past a damaged header, look for the next valid one instead of stopping there.
        tar = tarfile.open(shard, "r:", ignore_zeros=True)
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"{shard}: not a readable tar shard ({err})") from err
    with tar:
        try:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_name(info.name)
                if not samples or samples[-1]["key"] != key:
                    samples.append({"key": key})
                sample = samples[-1]
                if ext == "json":
                    try:
                        sample["meta"] = json.loads(tar.extractfile(info).read())
                    except ValueError:
                        log.warning("%s%s%s: not valid JSON, the clip is listed without labels",
                                    shard, MEMBER_SEP, info.name)
                elif f".{ext.lower()}" in AUDIO_EXTENSIONS and "member" not in sample:
                    sample["member"] = info.name
                    table[info.name] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError) as err:  # cut short: keep what was found
            log.warning("%s: damaged tar shard, listing the %d samples before the damage (%s)",
                        shard, len(samples), err)
    _TABLES[shard] = table
    items = []
    for sample in samples:
        if "member" not in sample:
            continue  # not an audio sample
        meta = sample.get("meta") or {}
        labels = meta.get("labels") or ()
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        fold, group = meta.get("fold"), meta.get("group")
        items.append(AudioItem(f"{shard}{MEMBER_SEP}{sample['member']}", tuple(str(label) for label in labels),
                               None if fold in (None, "") else str(fold), None if group in (None, "") else str(group)))
    return items


def _non_empty(source, items: list[AudioItem]) -> list[AudioItem]:
    if not items:
        raise InputError(f"{source}: no audio members in the shards")
    return items


# ---- reading --------------------------------------------------------------------------------------
_TABLES: dict[str, dict[str, tuple[int, int]]] = {}  # shard -> member -> (data offset, size)
_HANDLES: OrderedDict[str, int] = OrderedDict()  # shard -> open file descriptor, least recently used first
_PID = os.getpid()
_LOCK = threading.Lock()


def read_member(path: str) -> bytes:
    """The encoded bytes of the member `path` names ("<shard>.tar::<member>"), or AudioError."""
    shard, member = split_member(path)
    shard = os.path.abspath(shard)
    try:
        offset, size = _locate(shard, member)
        block = _read_at(shard, offset - HEADER, HEADER + size)
    except OSError as err:
        raise AudioError(f"{path}: cannot read shard member ({err})") from err
    if len(block) < HEADER + size:
        raise AudioError(f"{path}: truncated shard member ({max(0, len(block) - HEADER)} of {size} bytes)")
    try:
        info = tarfile.TarInfo.frombuf(block[:HEADER], "utf-8", "surrogateescape")
    except tarfile.HeaderError as err:
        raise AudioError(f"{path}: no valid tar header before the member's data ({err}): "
                         f"the shard is damaged or changed since it was listed") from err
    if info.size != size or (info.name != member and len(member.encode()) < 100):
        raise AudioError(f"{path}: the tar header at offset {offset - HEADER} is {info.name!r} of "
                         f"{info.size} bytes, not this member: the shard changed since it was listed")
    return block[HEADER:]


def _locate(shard: str, member: str) -> tuple[int, int]:
    _forked()
    table = _TABLES.get(shard)
    if table is None:
        try:
            _scan(shard)
        except ValueError as err:
            raise AudioError(f"{shard}{MEMBER_SEP}{member}: {err}") from err
        table = _TABLES[shard]
    if member not in table:
        raise AudioError(f"{shard}{MEMBER_SEP}{member}: no such member in the shard")
    return table[member]


def _forked() -> None:
    global _PID, _LOCK
    if os.getpid() != _PID:  # a forked worker: the inherited descriptors share the parent's files
        _PID, _LOCK = os.getpid(), threading.Lock()
        for fd in _HANDLES.values():
            os.close(fd)
        _HANDLES.clear()


def _read_at(shard: str, offset: int, size: int) -> bytes:
    """`size` bytes of `shard` from `offset` (fewer at its end), through this process's open handles."""
    _forked()
    with _LOCK:  # one reader at a time per process: a handle is never closed under another thread's read
        fd = _HANDLES.get(shard)
        if fd is None:
            fd = os.open(shard, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            _HANDLES[shard] = fd
            while len(_HANDLES) > OPEN_SHARDS:
                os.close(_HANDLES.popitem(last=False)[1])
        else:
            _HANDLES.move_to_end(shard)
        chunks, done = [], 0
        while done < size:
            if hasattr(os, "pread"):
                chunk = os.pread(fd, size - done, offset + done)
            else:  # Windows: no positional read
                os.lseek(fd, offset + done, os.SEEK_SET)
                chunk = os.read(fd, size - done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)
