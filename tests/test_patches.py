"""Patches that are not square (e.g. 16 mel bins x 4 frames, 40 ms tokens): the ViT's grid, GMML's
token mask, the reconstruction head, pretraining checkpoints, fine-tuning and the exporters follow the
patch, and what cannot express it says so."""

import pytest
import torch

from asit import hear
from asit.ast_model import ASTConfig, ASTModel, classifier_checkpoint
from asit.checkpoint import atomic_save, load
from asit.config import ConfigError, load_config, pair
from asit.errors import InputError
from asit.features import FrontEndConfig, frontend_metadata
from asit.gmml import GMMLConfig, corrupt
from asit.heads import ReconstructionHead
from asit.vit import adapt_state_dict, build_vit, grid_of
from finetune.config import FinetuneConfig
from finetune.model import build_model
from pretrain.config import PretrainConfig
from pretrain.train import pretrain

from conftest import TINY


def test_a_patch_is_one_number_or_frequency_and_time():
    assert pair(16) == (16, 16) and pair([16, 4]) == (16, 4)
    for bad in (0, [16], [16, 0], [16, 4, 2], "16", True):
        with pytest.raises(ValueError, match="patch_size"):
            pair(bad)
    with pytest.raises(ConfigError, match="model.patch_size"):
        load_config(PretrainConfig, None, ["model.patch_size=[16,0]"])


def test_the_grid_counts_frequency_and_time_patches_apart():
    vit = build_vit("tiny", (128, 96), (16, 4))
    assert grid_of(vit) == (8, 24) and vit.pos_embed.shape == (1, 1 + 8 * 24, 192)
    overlapping = build_vit("tiny", (128, 96), (16, 4), (10, 2))
    assert grid_of(overlapping) == ((128 - 16) // 10 + 1, (96 - 4) // 2 + 1)
    # A backbone pretrained on 1 s loads into a longer input: the time axis of the grid is interpolated.
    longer = build_vit("tiny", (128, 192), (16, 4))
    state = adapt_state_dict(vit.state_dict(), longer, "test", grid_of(vit))
    assert state["pos_embed"].shape == longer.pos_embed.shape


def test_a_token_is_corrupted_by_the_pixels_of_its_own_patch():
    views = torch.randn(4, 1, 128, 96)
    out = corrupt(views, GMMLConfig(p_alien=0.0), (16, 4), seed=0, step=0, sample_ids=range(4), view=0)
    assert out.token_mask.shape == (4, 8 * 24)
    share = out.pixel_mask.float().view(4, 8, 16, 24, 4).mean((2, 4)).flatten(1)
    assert torch.equal(out.token_mask, share >= 0.5)
    aligned = corrupt(views, GMMLConfig(align_to_patches=True), (16, 4), 0, 0, range(4), 0)
    per_patch = aligned.pixel_mask.view(4, 8, 16, 24, 4)
    assert torch.equal(per_patch.all(dim=(2, 4)), per_patch.any(dim=(2, 4)))  # whole patches only


def test_the_reconstruction_of_a_token_fills_its_own_patch():
    torch.manual_seed(0)
    head = ReconstructionHead(8, (16, 4), (8, 24), hidden_dim=16, bottleneck_dim=8)
    tokens = torch.randn(1, 8 * 24, 8)
    moved = tokens.clone()
    moved[0, 2 * 24 + 5] += 1.0  # frequency row 2, time column 5
    changed = (head(moved) != head(tokens))[0, 0]
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    assert rows.tolist() == list(range(32, 48)) and cols.tolist() == list(range(20, 24))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("patches") / "run"
    cfg = load_config(PretrainConfig, None, [*TINY, "model.patch_size=[16,4]", "data.synthetic_clips=16",
                                             "train.batch_size=4", "train.epochs=1", "train.max_steps=2",
                                             "train.precision=fp32", f"output_dir={out}"])
    pretrain(cfg)
    return out


def test_pretraining_with_time_patches_records_them_and_fine_tuning_adopts_them(pretrained):
    backbone = load(pretrained / "teacher_backbone.pt")
    assert backbone["patch_size"] == [16, 4] and backbone["grid"] == [8, 24]
    assert load(pretrained / "checkpoint.pt")["patch_size"] == [16, 4]
    cfg = load_config(FinetuneConfig, None, ["data.train=unused", "model.arch=tiny", "model.num_frames=96",
                                             f"model.init={pretrained / 'teacher_backbone.pt'}",
                                             "model.patch_stride=null"])
    model, _ = build_model(cfg, 3)
    assert model.cfg.patch == (16, 4) and model.cfg.stride == (16, 4) and grid_of(model.backbone) == (8, 24)
    teacher = {k.removeprefix("backbone."): v for k, v in load(pretrained / "checkpoint.pt")["teacher"].items()}
    assert torch.equal(model.backbone.patch_embed.proj.weight, teacher["patch_embed.proj.weight"])
    # AST's overlap (stride 10 on both axes) does not fit a 4-frame patch: refused, naming the key.
    with pytest.raises(ValueError, match="patch_stride"):
        build_model(load_config(FinetuneConfig, None, ["data.train=unused", "model.arch=tiny", "model.num_frames=96",
                                                       f"model.init={pretrained / 'teacher_backbone.pt'}"]), 3)


def test_hear_stamps_every_time_stride_and_hugging_face_refuses_a_patch_it_cannot_hold(pretrained, tmp_path):
    model = hear.load_model(str(pretrained / "teacher_backbone.pt"))
    assert model.column_ms == model.hop_size_in_ms == 40.0  # a 4-frame time stride: fine enough for HEAR
    emb, stamps = hear.get_timestamp_embeddings(torch.randn(1, 16000) * 0.1, model)
    assert emb.shape[1] == stamps.shape[1] and torch.allclose(stamps.diff(), torch.tensor(40.0))
    from asit.hf import export_hf

    cfg = ASTConfig("tiny", 2, num_frames=96, patch_size=(16, 4), patch_stride=(16, 4))
    path = tmp_path / "classifier.pt"
    atomic_save(classifier_checkpoint(ASTModel(cfg), cfg, FrontEndConfig(), ["a", "b"], False), path)
    pytest.importorskip("transformers")
    with pytest.raises(InputError, match="square patches only"):
        export_hf(path, tmp_path / "hf")


def test_onnx_exports_a_backbone_of_time_patches(pretrained, tmp_path):
    for module in ("onnx", "onnxscript"):
        pytest.importorskip(module, reason="ONNX export needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra")
    from asit.onnx_export import export_onnx

    info = export_onnx(pretrained / "teacher_backbone.pt", tmp_path / "backbone.onnx", backbone=True)
    assert info["max_abs_diff"] < 1e-4
