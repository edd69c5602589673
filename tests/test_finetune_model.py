"""Where a fine-tune starts: the init checkpoint's weights and front end."""

import pytest
import torch

from asit.checkpoint import atomic_save, backbone_checkpoint
from asit.config import load_config
from asit.features import FrontEndConfig, frontend_metadata
from asit.vit import build_vit
from finetune.config import FinetuneConfig
from finetune.model import build_model

BASE = ["data.train=unused", "model.arch=tiny", "model.num_frames=64", "model.patch_stride=16"]


def save_backbone(path, frontend: FrontEndConfig, grid_frames: int = 96):
    vit = build_vit("tiny", (128, grid_frames), 16)
    torch.nn.init.normal_(vit.cls_token)
    grid = (8, grid_frames // 16)
    atomic_save(backbone_checkpoint(vit, "tiny", 16, 16, grid, frontend_metadata(frontend, grid_frames)), path)
    return vit


def test_backbone_weights_are_loaded(tmp_path):
    vit = save_backbone(tmp_path / "b.pt", FrontEndConfig())
    model, _ = build_model(load_config(FinetuneConfig, None, BASE + [f"model.init={tmp_path / 'b.pt'}"]), 10)
    assert torch.equal(model.backbone.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert torch.equal(model.backbone.cls_token, vit.cls_token)
    assert model.head[1].out_features == 10


def test_checkpoint_stats_are_adopted_when_the_config_keeps_the_defaults(tmp_path):
    save_backbone(tmp_path / "b.pt", FrontEndConfig(mean=-6.5, std=5.25))
    init = f"model.init={tmp_path / 'b.pt'}"
    _, frontend = build_model(load_config(FinetuneConfig, None, BASE + [init]), 3)
    assert (frontend.mean, frontend.std) == (-6.5, 5.25)
    # Stats set explicitly must agree with the checkpoint's: the error says what differs.
    with pytest.raises(ValueError, match=r"mean: checkpoint -6.5 vs config -1.0"):
        build_model(load_config(FinetuneConfig, None, BASE + [init, "frontend.mean=-1.0"]), 3)


def test_front_end_mismatch_is_an_error_naming_the_setting(tmp_path):
    save_backbone(tmp_path / "b.pt", FrontEndConfig(sample_rate=8000))
    with pytest.raises(ValueError, match=r"sample_rate: checkpoint 8000 vs config 16000"):
        build_model(load_config(FinetuneConfig, None, BASE + [f"model.init={tmp_path / 'b.pt'}"]), 3)


def test_rgb_image_vit_state_dict_initialises_the_backbone(tmp_path):
    # An ImageNet-style timm ViT: 3 channels, a 14 x 14 grid, no distillation token, its own head.
    import timm

    image = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    torch.save(image.state_dict(), tmp_path / "vit.pth")
    model, frontend = build_model(load_config(FinetuneConfig, None, BASE + [f"model.init={tmp_path / 'vit.pth'}"]), 5)
    assert torch.allclose(model.backbone.patch_embed.proj.weight, image.patch_embed.proj.weight.mean(1, keepdim=True))
    assert frontend == FrontEndConfig()  # nothing recorded, nothing adopted
    assert model(torch.zeros(2, 1, 128, 64)).shape == (2, 5)


def test_layer_decay_scales_each_block_s_rate_by_its_depth_from_the_top():
    from asit.ast_model import ASTConfig, ASTModel
    from asit.optim import build_adamw, set_hyperparameters
    from finetune.train import layer_lr_scale

    model = ASTModel(ASTConfig("tiny", 3, num_frames=96))
    optimizer = build_adamw(model, layer_lr_scale(12, 0.5))
    set_hyperparameters(optimizer, 1e-3, 0.05)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(lr_of) == len(params)  # every parameter in exactly one group
    expected = {"head.1.weight": 1e-3, "backbone.norm.weight": 1e-3, "backbone.blocks.11.attn.qkv.weight": 5e-4,
                "backbone.blocks.0.mlp.fc1.weight": 1e-3 * 0.5 ** 12, "backbone.pos_embed": 1e-3 * 0.5 ** 13,
                "backbone.patch_embed.proj.weight": 1e-3 * 0.5 ** 13}
    for name, lr in expected.items():
        assert lr_of[id(params[name])][0] == pytest.approx(lr), name
    assert lr_of[id(params["backbone.blocks.0.mlp.fc1.bias"])] == (pytest.approx(1e-3 * 0.5 ** 12), 0.0)

    plain = build_adamw(model)  # without decay: one rate, two groups (decayed or not)
    set_hyperparameters(plain, 1e-3, 0.05)
    assert len(plain.param_groups) == 2 and all(g["lr"] == 1e-3 for g in plain.param_groups)
