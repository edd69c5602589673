"""The `asit` command: data statistics, inference, shards, and conversion to Hugging Face and ONNX.

    asit stats DATA [--sample-rate 16000] [--max-files N]
    asit predict CKPT FILE|FOLDER... [--top-k 5]
    asit embed CKPT FILE|FOLDER... -o out.npy [--pool token|mean]     (+ out.txt: the files, in row order)
    asit export-hf CKPT DIR
    asit import-hf DIR CKPT [--multilabel | --single-label]
    asit export-onnx CKPT OUT.onnx [--backbone]
    asit shard DATA OUT/ --shard-size N [--sample-rate R] [--mono]

Audio longer than the model's window is scored window by window (hop half a window) and the outputs
averaged, so a file of any length gets one answer. User errors (a missing file, unreadable audio, the
wrong kind of checkpoint) end in one line naming the file and exit status 2, not a traceback (`asit
--debug ...` or ASIT_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from . import hf
from .ast_model import POOLS, ASTModel, ast_from_backbone, classifier_from, is_classifier, load_classifier
from .audio import AudioError, load_audio
from .checkpoint import load, load_backbone
from .errors import InputError, add_debug_option, run_command
from .features import FrontEndConfig, clip_fbank, clip_windows
from .sources import list_audio

BATCH = 16  # windows per forward pass: bounded memory for files of any length
FILES_HELP = "audio files, or folders (every audio file under them, in sorted order)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_command(lambda: args.run(args), args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asit", description=__doc__.split("\n")[0])
    add_debug_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stats", help="mean and std of the log-mel features of a data source")
    p.add_argument("data", help="a folder of audio, an AST-style .json manifest or a .csv")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--max-files", type=_positive, default=None, help="use N files spread evenly over the source")
    p.set_defaults(run=stats)

    p = sub.add_parser("predict", help="top-k labels of audio files with a classifier checkpoint")
    p.add_argument("ckpt")
    p.add_argument("files", nargs="+", help=FILES_HELP)
    p.add_argument("--top-k", type=_positive, default=5)
    p.add_argument("--device", default=_default_device())
    p.set_defaults(run=predict)

    p = sub.add_parser("embed", help="clip embeddings from a classifier or a pretrained backbone")
    p.add_argument("ckpt", help="a classifier checkpoint, a teacher_backbone.pt or a checkpoint.pt")
    p.add_argument("files", nargs="+", help=FILES_HELP)
    p.add_argument("-o", "--output", required=True,
                   help=".npy file for the [N, D] float32 embeddings; the N files go to the same name .txt")
    p.add_argument("--pool", choices=sorted(POOLS), default="token",
                   help="token: (cls + dist) / 2; mean: the mean of the patch tokens")
    p.add_argument("--device", default=_default_device())
    p.set_defaults(run=embed)

    p = sub.add_parser("export-hf", help="write a classifier as a Hugging Face transformers AST directory")
    p.add_argument("ckpt")
    p.add_argument("dir")
    p.set_defaults(run=export_hf)

    p = sub.add_parser("export-onnx", help="write a classifier (or, with --backbone, embeddings) as an ONNX graph")
    p.add_argument("ckpt", help="a classifier checkpoint; with --backbone also a teacher_backbone.pt or checkpoint.pt")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--backbone", action="store_true",
                   help="export the per-window embeddings (cls, mean: asit embed's pools) instead of the logits")
    p.set_defaults(run=export_onnx)

    p = sub.add_parser("import-hf", help="convert a Hugging Face AST classifier directory to a checkpoint")
    p.add_argument("dir")
    p.add_argument("ckpt")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--multilabel", dest="multilabel", action="store_const", const=True, default=None,
                      help="default: the config's problem_type")
    kind.add_argument("--single-label", dest="multilabel", action="store_const", const=False)
    p.set_defaults(run=import_hf)

    p = sub.add_parser("shard", help="pack a data source into webdataset tar shards with an index.json")
    p.add_argument("data", help="a folder of audio, an AST-style .json manifest or a .csv")
    p.add_argument("out", help="an empty (or new) folder for 000000.tar ... and index.json")
    p.add_argument("--shard-size", type=_positive, required=True, help="clips per shard")
    p.add_argument("--sample-rate", type=_positive, default=None,
                   help="resample to this rate while packing (default: keep each file's bytes)")
    p.add_argument("--mono", action="store_true", help="mix multichannel clips down to mono while packing")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="a folder source: label each clip with the name of its folder")
    p.set_defaults(run=shard)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def stats(args) -> None:
    items = list_audio(args.data)
    if args.max_files is not None and args.max_files < len(items):
        # Spread over the whole (sorted) list: its first N files are often all of one class.
        items = [items[i * len(items) // args.max_files] for i in range(args.max_files)]
    cfg = FrontEndConfig(sample_rate=args.sample_rate)
    total = squares = count = used = 0
    for item in items:
        try:
            spec = clip_fbank(load_audio(item.path, cfg.sample_rate), cfg).double()  # [F, T]
        except AudioError as err:
            print(f"warning: {err}; skipped", file=sys.stderr)
            continue
        total += spec.sum().item()
        squares += spec.square().sum().item()
        count += spec.numel()
        used += 1
    if not used:
        raise InputError(f"{args.data}: no readable audio")
    mean = total / count
    std = max(squares / count - mean**2, 0.0) ** 0.5
    print(f"{used} files, {count // cfg.num_mel_bins} frames: log-mel mean {mean:.7g}, std {std:.7g}")
    print(f"frontend: {{sample_rate: {cfg.sample_rate}, mean: {mean:.7g}, std: {std:.7g}}}")


def predict(args) -> None:
    model, frontend, labels, multilabel = load_classifier(args.ckpt)
    activation = torch.sigmoid if multilabel else (lambda z: z.softmax(dim=-1))
    model.to(args.device)
    for path in _audio_files(args.files):
        scores = _average_windows(model, frontend, path, lambda x: activation(model(x)), args.device)
        top = scores.topk(min(args.top_k, len(labels)))
        print(path)
        for score, index in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {score:.4f}  {labels[index]}")


def embed(args) -> None:
    ckpt = load(args.ckpt)
    if is_classifier(ckpt):
        model, frontend, _, _ = classifier_from(ckpt, args.ckpt)
    else:
        state, meta = load_backbone(args.ckpt)
        model, frontend = ast_from_backbone(state, meta, args.ckpt)
    model.to(args.device)
    key = POOLS[args.pool]
    paths = _audio_files(args.files)
    rows = [_average_windows(model, frontend, path, lambda x: model.embed(x)[key], args.device) for path in paths]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, torch.stack(rows).numpy().astype(np.float32))
    out.with_suffix(".txt").write_text("".join(f"{path}\n" for path in paths))
    print(f"wrote {len(rows)} x {rows[0].shape[0]} embeddings to {out} (their files: {out.with_suffix('.txt')})")


def export_hf(args) -> None:
    print(f"wrote {hf.export_hf(args.ckpt, args.dir)}")


def export_onnx(args) -> None:
    from .onnx_export import TOLERANCE, export_onnx as export  # onnx is optional: imported only here

    info = export(args.ckpt, args.out, backbone=args.backbone)
    diff = info["max_abs_diff"]
    check = "not checked (onnxruntime not installed)" if diff is None else f"max |diff| {diff:.1e} <= {TOLERANCE:.0e}"
    print(f"wrote {info['path']}: input fbank {info['input']}, outputs {info['outputs']}; "
          f"onnxruntime vs PyTorch: {check}")


def import_hf(args) -> None:
    ckpt = hf.import_hf(args.dir, args.ckpt, multilabel=args.multilabel)
    kind = "multi-label" if ckpt["multilabel"] else "single-label"
    print(f"wrote {args.ckpt}: {ckpt['ast']['arch']}, {len(ckpt['labels'])} labels, {kind}")


def shard(args) -> None:
    from .shards import pack

    done = pack(args.data, args.out, args.shard_size, args.sample_rate, args.mono, args.labels_from_folders)
    skipped = f"; {done['skipped']} unusable files skipped (listed in the index)" if done["skipped"] else ""
    print(f"packed {done['clips']} of {done['files']} clips into {done['shards']} shards "
          f"({done['bytes'] / 1e6:.1f} MB) in {args.out}{skipped}\n"
          f"train on data.train={done['index']} or data.train={done['pattern']}")


def _audio_files(args: list[str]) -> list[str]:
    """The files named, with each folder replaced by the audio files under it."""
    paths = []
    for arg in args:
        paths += [item.path for item in list_audio(arg)] if Path(arg).is_dir() else [arg]
    return paths


@torch.no_grad()
def _average_windows(model: ASTModel, frontend: FrontEndConfig, path: str, fn, device: str) -> torch.Tensor:
    """fn over every window of a file's features, averaged: [K] for fn's [B, K] outputs."""
    windows = clip_windows(load_audio(path, frontend.sample_rate), frontend, model.cfg.num_frames)  # [W, F, T]
    outputs = [fn(batch[:, None].to(device)) for batch in windows.split(BATCH)]  # each [b, K]
    return torch.cat(outputs).mean(dim=0).cpu()


if __name__ == "__main__":
    sys.exit(main())
