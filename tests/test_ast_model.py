import pytest
import torch

from asit.ast_model import (
    ASTConfig,
    ASTModel,
    ast_from_backbone,
    classifier_checkpoint,
    load_backbone_weights,
    load_classifier,
)
from asit.checkpoint import atomic_save, backbone_checkpoint, load_backbone
from asit.features import FrontEndConfig, clip_features, clip_windows, fbank, frontend_metadata, normalise
from asit.vit import WeightShapeError, build_vit, grid_of, resample_pos_embed

TINY = dict(arch="tiny", num_classes=3, num_frames=100)  # 1 s, stride 10: a 12 x 9 grid


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter perturbed: norms, tokens and biases are no longer at their trivial init."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomised(ASTModel(ASTConfig(**TINY)))


def test_ast_layout_tokens_and_pooling(model):
    assert grid_of(model.backbone) == (12, 9)
    assert model.backbone.num_prefix_tokens == 2  # [cls, dist, patches]
    assert model.backbone.pos_embed.shape == (1, 2 + 108, 192)  # positions for the tokens too
    x = torch.randn(2, 1, 128, 100)
    tokens = model.backbone.forward_features(x)
    emb = model.embed(x)
    torch.testing.assert_close(emb["cls"], (tokens[:, 0] + tokens[:, 1]) / 2)
    torch.testing.assert_close(emb["mean"], tokens[:, 2:].mean(dim=1))
    torch.testing.assert_close(model(x), model.head(emb["cls"]))
    assert model(x).shape == (2, 3)


def test_mean_pooling_reads_the_patch_tokens(model):
    mean_model = ASTModel(ASTConfig(**TINY, pool="mean")).eval()
    mean_model.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 128, 100)
    torch.testing.assert_close(mean_model(x), model.head(model.embed(x)["mean"]))


def test_config_is_validated():
    with pytest.raises(ValueError, match="pool"):
        ASTConfig("tiny", 2, pool="max")
    with pytest.raises(ValueError, match="num_frames=8"):
        ASTConfig("tiny", 2, num_frames=8)
    with pytest.raises(ValueError, match="arch"):
        ASTConfig("huge", 2)


def test_classifier_checkpoint_round_trip_gives_identical_logits(model, tmp_path):
    frontend = FrontEndConfig(mean=-3.0, std=2.5)
    ckpt = classifier_checkpoint(model, model.cfg, frontend, ["dog", "cat", "bird"], True, extra={"epoch": 7})
    atomic_save(ckpt, tmp_path / "best.pt")

    loaded, loaded_frontend, labels, multilabel = load_classifier(tmp_path / "best.pt")  # weights_only=True

    x = torch.randn(2, 1, 128, 100)
    assert torch.equal(loaded(x), model(x))
    assert loaded.cfg == model.cfg and not loaded.training
    assert (loaded_frontend.mean, loaded_frontend.std) == (-3.0, 2.5)
    assert labels == ["dog", "cat", "bird"] and multilabel is True
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 7


def test_classifier_checkpoint_refuses_wrong_labels_and_clashing_extras(model):
    with pytest.raises(ValueError, match="2 labels for a model with 3 classes"):
        classifier_checkpoint(model, model.cfg, FrontEndConfig(), ["a", "b"], False)
    with pytest.raises(ValueError, match="labels"):
        classifier_checkpoint(model, model.cfg, FrontEndConfig(), ["a", "b", "c"], False, extra={"labels": []})


def test_a_wrong_shape_in_a_classifier_checkpoint_names_the_tensor(model, tmp_path):
    ckpt = classifier_checkpoint(model, model.cfg, FrontEndConfig(), ["a", "b", "c"], False)
    ckpt["model"]["head.1.weight"] = torch.zeros(5, 192)
    atomic_save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(WeightShapeError, match=r"head\.1\.weight has shape \(5, 192\)"):
        load_classifier(tmp_path / "bad.pt")


def test_a_backbone_checkpoint_is_not_a_classifier(tmp_path):
    backbone = build_vit("tiny", (128, 96))
    atomic_save(backbone_checkpoint(backbone, "tiny", 16, 16, (8, 6), {}), tmp_path / "teacher_backbone.pt")
    with pytest.raises(ValueError, match="teacher_backbone.pt: not an asit classifier.*asit-backbone-v1"):
        load_classifier(tmp_path / "teacher_backbone.pt")


@pytest.fixture(scope="module")
def teacher_backbone(tmp_path_factory):
    """A pretraining teacher's backbone: 1 s views (96 frames), stride 16 -> an 8 x 6 grid."""
    torch.manual_seed(1)
    backbone = randomised(build_vit("tiny", (128, 96), patch_size=16))
    path = tmp_path_factory.mktemp("pretrain") / "teacher_backbone.pt"
    meta = frontend_metadata(FrontEndConfig(), 96)
    atomic_save(backbone_checkpoint(backbone, "tiny", 16, 16, grid_of(backbone), meta), path)
    return backbone, path


def test_teacher_backbone_loads_into_a_stride_10_model_of_another_length(teacher_backbone):
    backbone, path = teacher_backbone
    state, meta = load_backbone(path)
    model = ASTModel(ASTConfig("tiny", num_classes=5, num_frames=300))  # 3 s: a 12 x 29 grid

    load_backbone_weights(model, state, meta, str(path), FrontEndConfig())

    loaded = model.backbone
    assert torch.equal(loaded.reg_token, backbone.cls_token)
    assert torch.equal(loaded.pos_embed[:, 1], backbone.pos_embed[:, 0])
    expected = resample_pos_embed(backbone.pos_embed, (8, 6), (12, 29))
    torch.testing.assert_close(loaded.pos_embed[:, 2:], expected[:, 1:])
    assert torch.equal(loaded.blocks[5].attn.qkv.weight, backbone.blocks[5].attn.qkv.weight)
    assert model(torch.randn(1, 1, 128, 300)).shape == (1, 5)


def test_a_backbone_with_another_front_end_is_refused_saying_what_differs(teacher_backbone):
    _, path = teacher_backbone
    state, meta = load_backbone(path)
    model = ASTModel(ASTConfig("tiny", num_classes=2, num_frames=100))
    with pytest.raises(ValueError, match="mean: checkpoint -4.2677393 vs config -3.0"):
        load_backbone_weights(model, state, meta, str(path), FrontEndConfig(mean=-3.0))


def test_a_copied_distillation_token_outputs_what_the_class_token_does(teacher_backbone):
    _, path = teacher_backbone
    model = ASTModel(ASTConfig("tiny", num_classes=2, num_frames=96, patch_stride=16)).eval()
    load_backbone_weights(model, *load_backbone(path), str(path))
    with torch.no_grad():
        tokens = model.backbone.forward_features(torch.randn(2, 1, 128, 96))
    torch.testing.assert_close(tokens[:, 1], tokens[:, 0])


def test_a_backbone_on_its_own_input_embeds_exactly_as_the_backbone(teacher_backbone):
    backbone, path = teacher_backbone
    model, frontend = ast_from_backbone(*load_backbone(path), str(path))
    assert model.cfg.num_frames == 96 and model.cfg.patch_stride == 16 and frontend == FrontEndConfig()
    x = torch.randn(2, 1, 128, 96)
    with torch.no_grad():
        expected = backbone.forward_features(x)  # [B, 1 + N, D]
        emb = model.embed(x)
    torch.testing.assert_close(emb["cls"], expected[:, 0])
    torch.testing.assert_close(emb["mean"], expected[:, 1:].mean(dim=1))


def test_clip_features_pad_in_the_log_mel_domain_then_normalise():
    cfg = FrontEndConfig()
    wave = torch.randn(8000) * 0.1  # 0.5 s -> 48 frames
    raw = fbank(wave, cfg, subtract_mean=False)
    feats = clip_features(wave, cfg, 100)
    assert raw.shape == (128, 48) and feats.shape == (128, 100)
    torch.testing.assert_close(feats[:, :48], normalise(raw, cfg))
    assert torch.equal(feats[:, 48:], normalise(torch.zeros(128, 52), cfg))  # log-mel 0, not the mean


def test_clip_features_cut_at_the_end():
    cfg = FrontEndConfig()
    wave = torch.randn(32000) * 0.1  # 2 s -> 198 frames
    expected = normalise(fbank(wave, cfg, subtract_mean=False)[:, :100], cfg)
    torch.testing.assert_close(clip_features(wave, cfg, 100), expected)


def test_a_clip_shorter_than_one_window_gives_one_frame():
    feats = clip_features(torch.randn(100) * 0.1, FrontEndConfig(), 20)
    assert feats.shape == (128, 20) and (feats[:, 0] != feats[:, 1]).all()


def test_windows_cover_a_long_clip_with_half_window_hops():
    cfg = FrontEndConfig()
    wave = torch.randn(40000) * 0.1  # 2.5 s -> 248 frames
    spec = normalise(fbank(wave, cfg, subtract_mean=False), cfg)
    windows = clip_windows(wave, cfg, 100)
    # starts 0, 50, 100 and 148: the last window ends at the clip's end
    assert windows.shape == (4, 128, 100)
    for window, start in zip(windows, (0, 50, 100, 148)):
        torch.testing.assert_close(window, spec[:, start:start + 100])


def test_a_short_clip_is_one_window_equal_to_clip_features():
    cfg = FrontEndConfig()
    wave = torch.randn(12000) * 0.1
    windows = clip_windows(wave, cfg, 100)
    assert windows.shape == (1, 128, 100)
    torch.testing.assert_close(windows[0], clip_features(wave, cfg, 100))


def test_embeddings_of_a_block_and_the_frequency_rows_that_the_mean_averages():
    torch.manual_seed(0)
    model = ASTModel(ASTConfig("tiny", 0, num_frames=96, patch_stride=16, dist_token=False)).eval()
    x = torch.randn(2, 1, 128, 96)
    with torch.no_grad():
        last, picked = model.embed(x), model.embed(x, [5, 11])
    rows = last["freq"].reshape(2, 8, 192)  # 8 frequency rows of 6 patches each
    assert torch.allclose(rows.mean(dim=1), last["mean"], atol=1e-6)
    assert not torch.allclose(rows[:, 0], rows[:, 7])
    tokens = model.backbone.forward_features(x)[:, 1:].detach().reshape(2, 8, 6, 192)  # rows, time, width
    assert last["freq_std"].shape == (2, 2 * 8 * 192)
    assert torch.allclose(last["freq_std"][:, :8 * 192], last["freq"])
    assert torch.allclose(last["freq_std"][:, 8 * 192:], tokens.std(dim=2, correction=0).flatten(1), atol=1e-5)
    for name in ("cls", "mean", "freq", "freq_std"):  # block 12 through the final norm is the last embedding
        assert picked[name].shape[1] == 2 and torch.allclose(picked[name][:, 1], last[name], atol=1e-5)
        assert not torch.allclose(picked[name][:, 0], last[name])
