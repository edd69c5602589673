"""Embeddings for the field's evaluation harnesses: the HEAR 2021 API and an X-ARES encoder.

HEAR (hearbenchmark.com), over any asit backbone (teacher_backbone.pt, checkpoint.pt) or fine-tuned
classifier checkpoint:

    import asit.hear as hear
    model = hear.load_model("runs/pretrain/teacher_backbone.pt")
    emb, timestamps_ms = hear.get_timestamp_embeddings(audio, model)  # audio [n, samples] at model.sample_rate
    scene = hear.get_scene_embeddings(audio, model)                   # [n, model.scene_embedding_size]

X-ARES (`pip install xares`) builds its encoder with no arguments, so `AsitEncoder` reads the checkpoint
from $ASIT_CKPT and this module is the encoder file:

    ASIT_CKPT=runs/pretrain/teacher_backbone.pt python -m xares.run asit/hear.py tasks/esc50_task.py

What each embedding is (D, the ViT width: 192 tiny, 384 small, 768 base):
- timestamp [n, T, D]: the last block's patch tokens after the final norm (the tokens `ASTModel.embed`
  reads), averaged over the frequency rows of each time column of patches (`column_embeddings`). Column c
  covers frames [cS, cS + P), frame k covers [k shift, k shift + frame_length) ms, so its centre is
  c S shift + ((P - 1) shift + frame_length) / 2: one column every S x shift ms (160 ms for a pretrained
  backbone, 100 ms for an AST classifier with stride 10). HEAR scores events within 50 ms and its
  validator wants timestamps evenly spaced and inside the audio, which column centres are not (the last
  one can lie past the end), so the embeddings are read at t = 0, h, 2h, ... up to the audio's duration,
  with h = `hop_size_in_ms` the column spacing divided into steps of at most 50 ms (40 ms and 50 ms for
  those two): each is the linear interpolation of the two columns whose centres surround it (the first
  or last column beyond them).
- scene [n, 2D]: `asit embed --pool token` and `--pool mean` concatenated: (cls + dist) / 2 (the class
  token for a backbone) and the mean of the patch tokens, after the final norm, averaged over the
  windows `asit embed` scores (`clip_windows`: hop half a window, the last one ending at the clip's end).

Audio of any length is cut into windows of the model's input length, fed `BATCH` at a time on the
model's device under `torch.inference_mode`, and the spectrogram of one clip at a time is held, so an
X-ARES batch of 10-minute clips fits in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch
import torchaudio
from einops import reduce
from torch import nn

from .ast_model import ASTModel, ast_from_backbone, classifier_from, is_classifier
from .checkpoint import load, load_backbone
from .cli import BATCH
from .errors import InputError
from .features import FrontEndConfig, clip_fbank, clip_windows, fit_frames, normalise

MAX_HOP_MS = 50.0  # HEAR's validator suggests at most 50 ms between timestamps: its event tolerance


class HearModel(nn.Module):
    """An asit model and its front end, with the attributes HEAR reads."""

    def __init__(self, model: ASTModel, frontend: FrontEndConfig):
        super().__init__()
        self.model = model.eval()
        self.frontend = frontend
        width = model.backbone.embed_dim
        self.sample_rate = frontend.sample_rate
        self.timestamp_embedding_size = width
        self.scene_embedding_size = 2 * width
        self.column_ms = model.cfg.stride[1] * frontend.frame_shift_ms  # between patch columns
        self.hop_size_in_ms = self.column_ms / math.ceil(self.column_ms / MAX_HOP_MS)  # between timestamps

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def load_model(model_file_path: str = "") -> HearModel:
    """A classifier checkpoint or a pretrained asit backbone, as `asit embed` accepts, in eval mode."""
    path = str(model_file_path)
    if not path:
        raise InputError("asit.hear.load_model: pass an asit checkpoint (teacher_backbone.pt, checkpoint.pt "
                         "or a fine-tuned classifier)")
    ckpt = load(path)  # FileNotFoundError / ValueError with the path: checkpoint.load's own messages
    if is_classifier(ckpt):
        model, frontend, _, _ = classifier_from(ckpt, path)
    else:
        state, meta = load_backbone(path)
        model, frontend = ast_from_backbone(state, meta, path)
    return HearModel(model, frontend)


@torch.inference_mode()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [n, samples] -> (embeddings [n, T, D], timestamps_ms [n, T]): T evenly spaced stamps from 0 to
    the audio's duration, `model.hop_size_in_ms` apart; see the module docstring."""
    audio = _checked(audio, model.device)
    columns, centres = column_embeddings(audio, model)
    duration = 1000 * audio.shape[1] / model.sample_rate
    # In float64: the stamp count must not lose the last stamp to rounding (duration a multiple of the hop).
    times = torch.arange(math.floor(duration / model.hop_size_in_ms + 1e-9) + 1, dtype=torch.float64,
                         device=audio.device) * model.hop_size_in_ms
    position = ((times - centres[0]) / model.column_ms).clamp(0, len(centres) - 1)  # in columns
    left = position.floor().long().clamp(max=max(0, len(centres) - 2))
    right = (left + 1).clamp(max=len(centres) - 1)
    weight = (position - left)[None, :, None].float()
    embeddings = torch.lerp(columns[:, left], columns[:, right], weight)
    return embeddings, times.float().expand(len(audio), -1).clone()


@torch.inference_mode()
def column_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [n, samples] (checked) -> (embeddings [n, C, D], centres_ms [C] in float64): one per patch
    column that starts on a frame of audio, at the centre of the frames it covers."""
    ast, frontend = model.model, model.frontend
    size, stride = ast.cfg.patch[1], ast.cfg.stride[1]  # in time
    frames_per_window = ast.cfg.num_frames
    rows, cols = ast.backbone.patch_embed.grid_size
    # Not `clip_windows`: its hop (half a window) is rarely a multiple of the patch stride and its last
    # window ends at the clip's end, so the patch columns of its windows lie on different time grids.
    # Here windows start every hop_columns patch columns and the last is padded (log-mel 0, as
    # `fit_frames`), so all columns lie on one grid and the timestamps are evenly spaced, as X-ARES's
    # hop_size_in_ms assumes.
    hop_columns = max(1, min(frames_per_window // 2 // stride, cols))  # about half a window
    step = hop_columns * stride  # in frames
    offset = (cols - hop_columns) // 2  # an inner window keeps its hop_columns central columns
    frames = max(1, frontend.frames_in(audio.shape[1]))  # clip_fbank pads a clip shorter than a frame
    columns = -(-frames // stride)  # every column that starts on a frame of audio
    windows = 1 + max(0, -(-((columns - 1) * stride + size - frames_per_window) // step))
    length = (windows - 1) * step + frames_per_window

    def clip_windows_on_grid(wave: torch.Tensor) -> Iterator[torch.Tensor]:
        spec = normalise(fit_frames(clip_fbank(wave, frontend), length), frontend)  # [F, length]
        yield from spec.unfold(1, frames_per_window, step).unbind(1)  # each [F, frames_per_window]

    pieces, index = [], 0
    for batch in _batches(w for wave in audio for w in clip_windows_on_grid(wave)):
        tokens = ast.backbone.forward_features(batch)[:, ast.backbone.num_prefix_tokens:]  # [b, rows * cols, D]
        per_column = reduce(tokens, "b (f t) d -> b t d", "mean", f=rows)
        for column_tokens in per_column:
            w = index % windows  # each column comes from the window in which it is most central
            first = 0 if w == 0 else offset + w * hop_columns
            end = columns if w == windows - 1 else offset + (w + 1) * hop_columns
            pieces.append(column_tokens[first - w * hop_columns:end - w * hop_columns])
            index += 1
    embeddings = torch.cat(pieces).view(len(audio), columns, -1)
    shift = frontend.frame_shift_ms
    centre = ((size - 1) * shift + frontend.frame_length_ms) / 2
    return embeddings, torch.arange(columns, dtype=torch.float64, device=audio.device) * model.column_ms + centre


@torch.inference_mode()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """audio [n, samples] -> [n, 2D]: [token pool; mean pool] averaged over windows, as `asit embed`."""
    audio = _checked(audio, model.device)
    ast, frontend = model.model, model.frontend
    outputs = []
    for batch in _batches(w for wave in audio for w in clip_windows(wave, frontend, ast.cfg.num_frames)):
        pooled = ast.embed(batch)
        outputs.append(torch.cat([pooled["cls"], pooled["mean"]], dim=1))
    return torch.cat(outputs).view(len(audio), -1, model.scene_embedding_size).mean(dim=1)


class AsitEncoder(nn.Module):
    """The X-ARES encoder contract: `sampling_rate`, `output_dim`, `hop_size_in_ms`, `device`, and
    `encoder(audio [B, T], sample_rate=None)` -> [B, T', D], the HEAR timestamp embeddings (T' =
    1 + floor(duration / hop_size_in_ms)). Audio at another rate is resampled;
    inputs of any length (10 minutes and more) are windowed as `get_timestamp_embeddings` does.

    X-ARES instantiates the class with no arguments (and requires it to be the only name ending in
    "Encoder" in its module), hence the checkpoint from $ASIT_CKPT.
    """

    def __init__(self, checkpoint: str | None = None):
        super().__init__()
        path = checkpoint or os.environ.get("ASIT_CKPT", "")
        if not path:
            raise InputError("AsitEncoder: no checkpoint; pass one or set ASIT_CKPT=path/to/teacher_backbone.pt")
        self.model = load_model(path)
        self.sampling_rate = self.model.sample_rate
        self.output_dim = self.model.timestamp_embedding_size
        self.hop_size_in_ms = self.model.hop_size_in_ms

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, audio: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        audio = _checked(audio, self.device)
        if sample_rate is not None and sample_rate != self.sampling_rate:
            audio = torchaudio.functional.resample(audio, sample_rate, self.sampling_rate)
        return get_timestamp_embeddings(audio, self.model)[0]


def _checked(audio, device: torch.device) -> torch.Tensor:
    """audio as a float32 [n, samples] tensor on `device`, or a one-line InputError (a ValueError)
    saying what is wrong."""
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor):
        raise InputError(f"audio must be a float tensor [n, samples], got {type(audio).__name__}")
    if audio.ndim != 2 or not audio.is_floating_point():
        raise InputError(f"audio must be a 2-D float tensor [n, samples], got a {audio.ndim}-D {audio.dtype} "
                         f"tensor of shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise InputError(f"audio must hold at least one sample of one clip, got shape {tuple(audio.shape)}")
    audio = audio.to(device, torch.float32)
    if not torch.isfinite(audio).all():
        raise InputError("audio contains NaN or infinite samples")
    return audio


def _batches(windows: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """[F, N] windows -> [b, 1, F, N] batches of at most BATCH: bounded memory for any amount of audio."""
    windows = iter(windows)
    while batch := list(islice(windows, BATCH)):
        yield torch.stack(batch)[:, None]
