"""`asit export-onnx CKPT OUT.onnx [--backbone]`: a classifier, or a model's embeddings, as an ONNX graph.

Input `fbank`: float32 [batch, 1, num_mel_bins, num_frames], batch dynamic; bins and frames are fixed by
the model (its positional embedding) and recorded in the file. It is asit's normalised log-mel, which
is NOT in the graph (the kaldi-compatible fbank is not exported: its framing follows the clip's length);
compute it with asit's front end, the windows `asit predict` scores:

    from asit.features import FrontEndConfig, clip_windows
    frontend = FrontEndConfig(**{k: v for k, v in meta.items() if k != "num_frames"})  # meta: asit_frontend
    x = clip_windows(wave, frontend, meta["num_frames"])[:, None].numpy()  # wave [S] at frontend.sample_rate

A clip that fits the model gives one window (`clip_features`); a longer one several (hop half a window):
average their softmax (sigmoid if multi-label) as `asit predict` does.

Outputs: `logits` [batch, classes]; with --backbone, `cls` and `mean` [batch, D], the per-window
embeddings `asit embed --pool token|mean` averages (after the final norm). Both a pretrained backbone and
a classifier export with --backbone. The file's metadata_props hold `asit_frontend` (JSON: sample rate,
bins, frame length and shift, mean, std, num_frames), `asit_labels` (JSON) and `asit_multilabel`.

Every pooling asit has (`POOLS`: token, the mean of the prefix tokens; mean, the mean of the patch
tokens) is a plain mean and exports exactly, so no pooling is refused; a checkpoint without a classifier
is, unless --backbone. The graph comes from torch's dynamo exporter (needs onnxscript): the legacy
TorchScript exporter bakes the example's batch size into timm's class-token `expand`. When onnxruntime
is installed the written file is run on a random batch and must match PyTorch within TOLERANCE.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .ast_model import ast_from_backbone, classifier_from, is_classifier
from .checkpoint import load, load_backbone
from .errors import InputError, UserError
from .features import frontend_metadata
from .vit import set_attention

INPUT = "fbank"
TOLERANCE = 1e-4  # max |ONNX - PyTorch| on the outputs, fp32
OPSET = 18


class MissingDependency(UserError, ImportError):
    """onnx, onnxscript or onnxruntime is not installed: the user's to fix, so one line, not a traceback."""


class Embeddings(nn.Module):
    """A model's per-window embeddings, `asit embed`'s two pools: (cls, mean), each [B, D]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model.embed(x)
        return pooled["cls"], pooled["mean"]


def exportable(path: str, backbone: bool = False) -> tuple[nn.Module, dict]:
    """The module to export (in eval mode, on the CPU) and what the file records about it."""
    ckpt = load(path)
    labels, multilabel = [], False
    if is_classifier(ckpt):
        model, frontend, labels, multilabel = classifier_from(ckpt, path)
    elif not backbone:
        raise InputError(f"{path}: not an asit classifier checkpoint, so it has no logits to export; "
                         f"pass --backbone to export its embeddings")
    else:
        state, meta = load_backbone(path)
        model, frontend = ast_from_backbone(state, meta, path)
    set_attention(model, "math", torch.device("cpu"), None)  # plain ops: nothing kernel-specific in the graph
    info = {"frontend": frontend_metadata(frontend, model.cfg.num_frames), "labels": labels,
            "multilabel": multilabel, "outputs": ["cls", "mean"] if backbone else ["logits"]}
    return (Embeddings(model) if backbone else model).eval(), info


def export_onnx(ckpt: str | Path, out: str | Path, backbone: bool = False) -> dict:
    """Write CKPT as ONNX to `out`; returns what was written, with the onnxruntime check's
    `max_abs_diff` (None when onnxruntime is not installed)."""
    onnx = _need("onnx")
    _need("onnxscript")  # torch's dynamo exporter imports it itself, with a less helpful message
    module, info = exportable(str(ckpt), backbone)
    f = info["frontend"]
    shape = (1, f["num_mel_bins"], f["num_frames"])
    with _quiet():
        program = torch.onnx.export(module, (torch.zeros(2, *shape),), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=info["outputs"], verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim.AUTO},))
    proto = program.model_proto
    _name_batch_axis(proto)
    for key, value in (("asit_frontend", json.dumps(f)), ("asit_labels", json.dumps(info["labels"])),
                       ("asit_multilabel", json.dumps(info["multilabel"]))):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out)
    info.update(path=str(out), input=["batch", *shape], max_abs_diff=None)
    if importlib.util.find_spec("onnxruntime"):
        # A batch of 3 where the example had 2: the batch axis really is dynamic.
        x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
        info["max_abs_diff"] = max_difference(out, module, x)
        if info["max_abs_diff"] > TOLERANCE:
            raise RuntimeError(f"{out}: onnxruntime's outputs differ from PyTorch's by {info['max_abs_diff']:.1e} "
                             f"> {TOLERANCE:.0e}")
    return info


def max_difference(path: str | Path, module: nn.Module, x: torch.Tensor) -> float:
    """max |onnxruntime(path)(x) - module(x)| over all outputs."""
    ort = _need("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: x.numpy()})
    with torch.inference_mode():
        want = module(x)
    want = want if isinstance(want, tuple) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def _name_batch_axis(proto) -> None:
    """The exporter names the dynamic axis after its symbol (s77); call it `batch` everywhere."""
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        raise RuntimeError("ONNX export: the batch axis came out static")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"


@contextlib.contextmanager
def _quiet():
    """Hide the exporter's chatter (warnings on torchvision ops it does not use, one line per initializer
    deduplicated), which `asit`'s INFO logging would print."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _need(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDependency(f"ONNX export needs {name}: pip install 'asit[onnx]' "
                          f"(onnx, onnxscript, onnxruntime)") from None
