import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="Hugging Face interop needs transformers (a dev dependency)")

from safetensors.torch import load_file  # noqa: E402

from asit.ast_model import ASTConfig, ASTModel, classifier_checkpoint, load_classifier  # noqa: E402
from asit.audio import load_audio  # noqa: E402
from asit.checkpoint import atomic_save  # noqa: E402
from asit.config import load_config  # noqa: E402
from asit.features import FrontEndConfig, clip_features, normalise  # noqa: E402
from asit.hf import export_hf, import_hf  # noqa: E402
from conftest import REPO  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from finetune.model import build_model  # noqa: E402

LABELS = ["yes", "no", "up", "down"]
FRONTEND = FrontEndConfig(mean=-5.5, std=3.25)  # not AudioSet's, so a lost setting shows


def randomise(module: torch.nn.Module) -> None:
    """Perturb every parameter, HF's zero-initialised tokens and positions and unit norms included."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random tiny asit classifier (1 s = 100 frames, stride 10), saved and exported."""
    torch.manual_seed(0)
    cfg = ASTConfig("tiny", num_classes=len(LABELS), num_frames=100)
    model = ASTModel(cfg)
    randomise(model)
    root = tmp_path_factory.mktemp("hf")
    atomic_save(classifier_checkpoint(model, cfg, FRONTEND, LABELS, multilabel=True), root / "best.pt")
    export_hf(root / "best.pt", root / "hf")
    return root / "best.pt", root / "hf"


def fsdd_waves(fsdd, count=3):
    return [load_audio(path, 16000) for path in sorted(fsdd.glob("*.wav"))[:count]]


def test_export_writes_safetensors_and_hf_configs(exported):
    _, hf_dir = exported
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = transformers.AutoConfig.from_pretrained(hf_dir)
    assert config.id2label == dict(enumerate(LABELS)) and config.label2id["down"] == 3
    assert config.problem_type == "multi_label_classification"
    assert (config.hidden_size, config.num_attention_heads, config.max_length) == (192, 3, 100)
    assert (config.frequency_stride, config.time_stride, config.layer_norm_eps) == (10, 10, 1e-6)
    extractor = json.loads((hf_dir / "preprocessor_config.json").read_text())
    assert (extractor["mean"], extractor["std"], extractor["max_length"]) == (-5.5, 3.25, 100)


def assert_transformers_matches(ckpt, hf_dir, waves):
    """transformers, fed by its own feature extractor, gives asit's logits (from asit's front end)."""
    model, frontend, _, _ = load_classifier(ckpt)
    hf_model = transformers.ASTForAudioClassification.from_pretrained(hf_dir).eval()
    extractor = transformers.ASTFeatureExtractor.from_pretrained(hf_dir)

    hf_inputs = extractor([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt")
    ours = torch.stack([clip_features(w, frontend, model.cfg.num_frames) for w in waves])[:, None]  # [B, 1, F, T]
    with torch.no_grad():
        expected = model(ours)
        got = hf_model(**hf_inputs).logits

    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.1  # the logits differ between clips: a real comparison


def test_exported_model_gives_asit_logits_in_transformers(exported, fsdd):
    ckpt, hf_dir = exported
    assert_transformers_matches(ckpt, hf_dir, fsdd_waves(fsdd))


def test_the_laptop_recipe_exports_with_equal_logits(tmp_path, fsdd):
    # What `configs/finetune/tiny_fsdd.yaml` trains (stride 16, 96 frames) must be exportable as it is.
    cfg = load_config(FinetuneConfig, REPO / "configs" / "finetune" / "tiny_fsdd.yaml", ["model.init=null"])
    torch.manual_seed(2)
    model, frontend = build_model(cfg, num_classes=len(LABELS))
    randomise(model)
    atomic_save(classifier_checkpoint(model, model.cfg, frontend, LABELS, multilabel=False), tmp_path / "best.pt")
    export_hf(tmp_path / "best.pt", tmp_path / "hf")
    assert_transformers_matches(tmp_path / "best.pt", tmp_path / "hf", fsdd_waves(fsdd))


def test_clip_features_match_ast_feature_extractor_on_real_audio(fsdd):
    frontend = FrontEndConfig(mean=-5.5, std=3.25)
    extractor = transformers.ASTFeatureExtractor(sampling_rate=16000, num_mel_bins=128, max_length=100,
                                                 mean=-5.5, std=3.25, do_normalize=True)
    short = fsdd_waves(fsdd, count=4)
    long = [torch.cat([wave] * 4) for wave in short]
    assert all(len(w) < 16000 for w in short) and all(len(w) > 16000 for w in long)  # padded, then cut
    for wave in short + long:
        hf = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt").input_values[0]  # [T, F]
        torch.testing.assert_close(clip_features(wave, frontend, 100), hf.T, atol=1e-5, rtol=0)


def test_hf_model_imports_with_identical_logits(tmp_path):
    torch.manual_seed(1)
    config = transformers.ASTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768, max_length=100,
                                    num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    hf_model = transformers.ASTForAudioClassification(config).eval()
    randomise(hf_model)
    hf_model.save_pretrained(tmp_path / "hf")
    transformers.ASTFeatureExtractor(max_length=100, mean=-6.0, std=4.0).save_pretrained(tmp_path / "hf")

    import_hf(tmp_path / "hf", tmp_path / "imported.pt")
    model, frontend, labels, multilabel = load_classifier(tmp_path / "imported.pt")

    x = torch.randn(2, 1, 128, 100)
    with torch.no_grad():
        expected = hf_model(input_values=x[:, 0].transpose(1, 2)).logits  # HF's input is [B, T, F]
    torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=0)
    assert labels == ["a", "b", "c"] and multilabel is False
    assert (frontend.mean, frontend.std, frontend.sample_rate) == (-6.0, 4.0, 16000)
    assert model.cfg.arch == "tiny" and model.cfg.patch_stride == 10


def test_export_then_import_gives_back_the_same_weights(exported, tmp_path):
    ckpt, hf_dir = exported
    original = torch.load(ckpt, weights_only=True)
    back = import_hf(hf_dir, tmp_path / "back.pt")
    assert back["model"].keys() == original["model"].keys()
    assert all(torch.equal(back["model"][k], v) for k, v in original["model"].items())
    assert back["ast"] == original["ast"] and back["labels"] == LABELS and back["multilabel"] is True
    assert (back["frontend"]["mean"], back["frontend"]["std"]) == (-5.5, 3.25)


def test_a_pickled_pytorch_model_bin_is_read_safely(exported, tmp_path):
    # Older published AST checkpoints ship pytorch_model.bin: read with weights_only=True.
    ckpt, hf_dir = exported
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
    torch.save(load_file(hf_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")

    back = import_hf(tmp_path, tmp_path / "back.pt")

    original = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(back["model"][k], v) for k, v in original.items())


def test_an_unsupported_width_is_a_clear_error(tmp_path):
    config = transformers.ASTConfig(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                                    num_hidden_layers=2, max_length=100)
    transformers.ASTForAudioClassification(config).save_pretrained(tmp_path)
    transformers.ASTFeatureExtractor(max_length=100).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"hidden_size 256 with 4 heads is none of tiny \(192, 3\).*2 layers"):
        import_hf(tmp_path, tmp_path / "x.pt")


def test_mean_pooling_cannot_be_exported(tmp_path):
    cfg = ASTConfig("tiny", num_classes=2, num_frames=100, pool="mean")
    atomic_save(classifier_checkpoint(ASTModel(cfg), cfg, FRONTEND, ["a", "b"], False), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="pool='mean' has no Hugging Face equivalent"):
        export_hf(tmp_path / "c.pt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_missing_preprocessor_config_is_named(exported, tmp_path):
    _, hf_dir = exported
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        import_hf(tmp_path, tmp_path / "x.pt")


def test_feature_extractor_without_normalisation_becomes_an_identity_front_end(exported, tmp_path):
    _, hf_dir = exported
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
    transformers.ASTFeatureExtractor(max_length=100, do_normalize=False).save_pretrained(tmp_path)

    import_hf(tmp_path, tmp_path / "x.pt")

    _, frontend, _, _ = load_classifier(tmp_path / "x.pt")
    spec = torch.randn(128, 100)
    assert torch.equal(normalise(spec, frontend), spec)
