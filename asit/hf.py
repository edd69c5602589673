"""Hugging Face interop: asit classifier checkpoints <-> `transformers` AST model directories.

The two models are the same network (see `asit.ast_model`), so conversion is renaming tensors, plus
splitting timm's fused qkv projection into HF's query/key/value (and back). The tensor names are those
of HF's files on disk, which every published AST checkpoint uses (`save_pretrained` writes them too).

Export writes `config.json`, `preprocessor_config.json` and `model.safetensors`: no pickles.
`transformers` is only needed here, so it is imported lazily.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .ast_model import NORM_EPS, ASTConfig, ast_with_weights, classifier_checkpoint, load_classifier
from .checkpoint import atomic_save
from .errors import InputError, MissingError, UserError
from .features import FrontEndConfig
from .vit import ARCHS

log = logging.getLogger(__name__)

PREFIX = "audio_spectrogram_transformer."  # ASTForAudioClassification's name for its ASTModel
DEPTH = 12  # every asit architecture (`asit.vit.ARCHS`)
MULTI_LABEL = "multi_label_classification"
SINGLE_LABEL = "single_label_classification"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face interop needs transformers: pip install transformers") from None
    return transformers


def _renames() -> list[tuple[str, str]]:
    """(asit name, HF name) of every tensor that is only renamed; the qkv projections are split apart."""
    pairs = [
        ("backbone.cls_token", PREFIX + "embeddings.cls_token"),
        ("backbone.reg_token", PREFIX + "embeddings.distillation_token"),
        ("backbone.pos_embed", PREFIX + "embeddings.position_embeddings"),
        ("backbone.patch_embed.proj", PREFIX + "embeddings.patch_embeddings.projection"),
        ("backbone.norm", PREFIX + "layernorm"),
        ("head.0", "classifier.layernorm"),
        ("head.1", "classifier.dense"),
    ]
    for i in range(DEPTH):
        block, layer = f"backbone.blocks.{i}.", f"{PREFIX}encoder.layer.{i}."
        pairs += [
            (block + "norm1", layer + "layernorm_before"),
            (block + "attn.proj", layer + "attention.output.dense"),
            (block + "norm2", layer + "layernorm_after"),
            (block + "mlp.fc1", layer + "intermediate.dense"),
            (block + "mlp.fc2", layer + "output.dense"),
        ]
    # Modules own a weight and a bias; the three tokens are bare tensors.
    out = []
    for a, h in pairs:
        out += [(a, h)] if a.endswith(("_token", "pos_embed")) else [(a + s, h + s) for s in (".weight", ".bias")]
    return out


def _qkv() -> list[tuple[str, list[str]]]:
    """timm's fused [3D, ...] qkv tensor -> HF's query, key, value (in that order, as timm splits it)."""
    return [
        (f"backbone.blocks.{i}.attn.qkv{s}",
         [f"{PREFIX}encoder.layer.{i}.attention.attention.{part}{s}" for part in ("query", "key", "value")])
        for i in range(DEPTH) for s in (".weight", ".bias")
    ]


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An `ASTModel` state dict -> HF `ASTForAudioClassification` tensor names."""
    out = {h: state[a] for a, h in _renames()}
    for fused, parts in _qkv():
        out.update(zip(parts, state[fused].chunk(3, dim=0)))
    return {k: v.contiguous() for k, v in out.items()}  # safetensors stores no views


def from_hf(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """HF `ASTForAudioClassification` tensors -> an `ASTModel` state dict; names any tensor not found."""
    def get(name):
        if name not in state:
            raise InputError(f"{source}: tensor {name} is missing (is this an ASTForAudioClassification?)")
        return state[name]

    out = {a: get(h) for a, h in _renames()}
    for fused, parts in _qkv():
        out[fused] = torch.cat([get(p) for p in parts], dim=0)
    return out


def hf_ast_config(cfg: ASTConfig, **extra):
    """transformers' ASTConfig of the network asit's `cfg` describes (`extra`: labels and the like)."""
    width, heads = ARCHS[cfg.arch]
    if cfg.patch[0] != cfg.patch[1]:
        raise InputError(f"patches of {cfg.patch[0]} mel bins x {cfg.patch[1]} frames: transformers' AST has square "
                         f"patches only, so this model has no Hugging Face form; use its asit checkpoint, or "
                         f"`asit export-onnx`")
    return _transformers().ASTConfig(
        hidden_size=width, num_hidden_layers=DEPTH, num_attention_heads=heads, intermediate_size=4 * width,
        hidden_act="gelu", layer_norm_eps=NORM_EPS, qkv_bias=True, patch_size=cfg.patch[0],
        frequency_stride=cfg.stride[0], time_stride=cfg.stride[1], max_length=cfg.num_frames,
        num_mel_bins=cfg.num_mel_bins, **extra,
    )


def export_hf(classifier_ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write an asit classifier as a directory that `ASTForAudioClassification.from_pretrained` and
    `ASTFeatureExtractor.from_pretrained` load, giving the same logits on the same audio."""
    transformers = _transformers()
    from safetensors.torch import save_file

    model, frontend, labels, multilabel = load_classifier(classifier_ckpt_path)
    cfg = model.cfg
    source = str(classifier_ckpt_path)
    if cfg.pool != "token":
        raise InputError(f"{source}: pool={cfg.pool!r} has no Hugging Face equivalent (its AST reads (cls + dist) / 2);"
                         f" fine-tune with model.pool=token to export")
    if not cfg.dist_token:
        raise InputError(f"{source}: the model has no distillation token, which Hugging Face's AST always has")
    if cfg.num_classes == 0:
        raise InputError(f"{source}: the model has no classifier layer to export")
    if (frontend.frame_length_ms, frontend.frame_shift_ms) != (25.0, 10.0):
        # ASTFeatureExtractor always uses kaldi's 25 ms / 10 ms frames.
        raise InputError(f"{source}: frames of {frontend.frame_length_ms}/{frontend.frame_shift_ms} ms cannot be "
                         f"expressed in ASTFeatureExtractor (25/10 ms)")
    hf_config = hf_ast_config(
        cfg, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        problem_type=MULTI_LABEL if multilabel else SINGLE_LABEL, architectures=["ASTForAudioClassification"],
    )
    extractor = transformers.ASTFeatureExtractor(
        sampling_rate=frontend.sample_rate, num_mel_bins=frontend.num_mel_bins, max_length=cfg.num_frames,
        mean=frontend.mean, std=frontend.std, do_normalize=True,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(out_dir)
    extractor.save_pretrained(out_dir)
    save_file(to_hf(model.state_dict()), out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


def import_hf(hf_dir: str | Path, out_ckpt: str | Path, multilabel: bool | None = None) -> dict:
    """Convert a Hugging Face AST classifier directory into an asit classifier checkpoint.

    The front end comes from its `preprocessor_config.json`, the labels from `id2label`. Multi-label
    comes from the config's `problem_type` unless given (many published AST configs leave it unset).
    asit's norms use eps 1e-6 whatever the config says (HF's default is 1e-12): logits move by ~1e-6.
    """
    transformers = _transformers()
    hf_dir = Path(hf_dir)
    source = str(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise MissingError(f"{source}: no config.json; not a Hugging Face model directory")
    if not (hf_dir / "preprocessor_config.json").is_file():
        raise MissingError(f"{source}: no preprocessor_config.json; its front end is unknown")
    hf_config = transformers.AutoConfig.from_pretrained(hf_dir)
    extractor = transformers.ASTFeatureExtractor.from_pretrained(hf_dir)
    cfg = _ast_config(hf_config, source)
    frontend = _frontend(extractor, cfg, source)

    model = ast_with_weights(cfg, from_hf(_read_weights(hf_dir), source), source)
    labels = [str(hf_config.id2label[i]) for i in range(cfg.num_classes)]
    if multilabel is None:
        if hf_config.problem_type is None:
            log.warning("%s: config has no problem_type; importing as single-label (say multi-label if it is)",
                        source)
        multilabel = hf_config.problem_type == MULTI_LABEL
    ckpt = classifier_checkpoint(model, cfg, frontend, labels, multilabel, extra={"source": source})
    atomic_save(ckpt, out_ckpt)
    return ckpt


def _ast_config(hf, source: str) -> ASTConfig:
    """The asit ASTConfig of a HF AST config, refusing what asit's architecture cannot hold."""
    if hf.model_type != "audio-spectrogram-transformer":
        raise InputError(f"{source}: model_type {hf.model_type!r} is not an AST")
    arch = next((name for name, dims in ARCHS.items() if dims == (hf.hidden_size, hf.num_attention_heads)), None)
    patch = hf.patch_size if isinstance(hf.patch_size, int) else hf.patch_size[0]
    problems = [
        arch is None and f"hidden_size {hf.hidden_size} with {hf.num_attention_heads} heads is none of "
                         + ", ".join(f"{n} ({w}, {h})" for n, (w, h) in ARCHS.items()),
        hf.num_hidden_layers != DEPTH and f"{hf.num_hidden_layers} layers (asit's are {DEPTH} deep)",
        hf.intermediate_size != 4 * hf.hidden_size and f"intermediate_size {hf.intermediate_size} is not 4 x hidden",
        hf.hidden_act != "gelu" and f"hidden_act {hf.hidden_act!r} is not gelu",
        not hf.qkv_bias and "qkv_bias is false",
        not isinstance(hf.patch_size, int) and len(set(hf.patch_size)) > 1 and f"patch {hf.patch_size} is not square",
    ]
    problems = [p for p in problems if p]
    if problems:
        raise InputError(f"{source}: unsupported AST: " + "; ".join(problems))
    return ASTConfig(arch, num_classes=hf.num_labels, num_mel_bins=hf.num_mel_bins, num_frames=hf.max_length,
                     patch_size=patch, patch_stride=(hf.time_stride if hf.frequency_stride == hf.time_stride
                                                     else (hf.frequency_stride, hf.time_stride)))


def _frontend(extractor, cfg: ASTConfig, source: str) -> FrontEndConfig:
    if (extractor.num_mel_bins, extractor.max_length) != (cfg.num_mel_bins, cfg.num_frames):
        raise InputError(f"{source}: the feature extractor makes {extractor.num_mel_bins} x {extractor.max_length} "
                         f"features, the model expects {cfg.num_mel_bins} x {cfg.num_frames}")
    # Without normalisation the features are the raw log-mels: (x - 0) / (2 * 0.5) is the identity.
    mean, std = (extractor.mean, extractor.std) if extractor.do_normalize else (0.0, 0.5)
    return FrontEndConfig(sample_rate=extractor.sampling_rate, num_mel_bins=extractor.num_mel_bins,
                          mean=float(mean), std=float(std))


def _read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint: safetensors (single or sharded), else a pytorch_model.bin read
    safely (weights_only)."""
    from safetensors.torch import load_file

    index = hf_dir / "model.safetensors.index.json"
    if (hf_dir / "model.safetensors").is_file():
        return load_file(hf_dir / "model.safetensors")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(hf_dir / shard).items()}
    if (hf_dir / "pytorch_model.bin").is_file():
        return torch.load(hf_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise MissingError(f"{hf_dir}: no model.safetensors or pytorch_model.bin")
