from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from asit.ast_model import ASTConfig, ASTModel, classifier_checkpoint, load_classifier
from asit.audio import load_audio
from asit.checkpoint import atomic_save, backbone_checkpoint
from asit.cli import main
from asit.features import FrontEndConfig, clip_fbank, clip_windows, frontend_metadata
from asit.vit import build_vit

LABELS = ["siren", "dog", "rain"]
FRAMES = 64


def write_wav(path, seconds, freq, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(int(freq))
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    sf.write(path, wave.astype(np.float32), rate, subtype="FLOAT")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    # 0.4 s fits one 64-frame window; 1.5 s is scored by 4 windows; 22.05 kHz is resampled
    return [write_wav(root / "short.wav", 0.4, 440), write_wav(root / "long.wav", 1.5, 1000),
            write_wav(root / "other_rate.wav", 0.9, 3000, rate=22050)]


def classifier(path, multilabel):
    torch.manual_seed(0)
    cfg = ASTConfig("tiny", num_classes=len(LABELS), num_frames=FRAMES, patch_stride=16)  # 8 x 4 patches
    model = ASTModel(cfg)
    with torch.no_grad():
        model.head[1].weight.mul_(50)  # spread the scores so the ranking is clear
    atomic_save(classifier_checkpoint(model, cfg, FrontEndConfig(), LABELS, multilabel), path)
    return str(path)


@pytest.fixture(scope="module")
def single_label(tmp_path_factory):
    return classifier(tmp_path_factory.mktemp("ckpt") / "best.pt", multilabel=False)


def expected_scores(ckpt, path):
    """Window scores averaged after the nonlinearity, computed here directly."""
    model, frontend, _, multilabel = load_classifier(ckpt)
    windows = clip_windows(load_audio(path, frontend.sample_rate), frontend, FRAMES)[:, None]
    with torch.no_grad():
        logits = model(windows)
    return (logits.sigmoid() if multilabel else logits.softmax(-1)).mean(0)


def parse_predictions(out):
    """{file: [(label, score), ...]} from predict's output."""
    result, current = {}, None
    for line in out.splitlines():
        if line.startswith("  "):
            score, label = line.split()
            result[current].append((label, float(score)))
        else:
            current = line
            result[current] = []
    return result


def test_predict_ranks_labels_by_averaged_window_scores(single_label, files, capsys):
    assert main(["predict", single_label, *files, "--top-k", "3", "--device", "cpu"]) == 0

    predictions = parse_predictions(capsys.readouterr().out)
    assert list(predictions) == files
    for path, ranked in predictions.items():
        scores = [s for _, s in ranked]
        assert sorted(label for label, _ in ranked) == sorted(LABELS)
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=2e-4)  # softmax averages still sum to 1
        expected = expected_scores(single_label, path)
        assert ranked[0][0] == LABELS[expected.argmax()]
        for label, score in ranked:
            assert score == pytest.approx(expected[LABELS.index(label)].item(), abs=1e-4)


def test_predict_multilabel_uses_sigmoids_and_top_k(tmp_path, files, capsys):
    ckpt = classifier(tmp_path / "multi.pt", multilabel=True)
    assert main(["predict", ckpt, files[1], "--top-k", "2", "--device", "cpu"]) == 0

    ranked = parse_predictions(capsys.readouterr().out)[files[1]]
    expected = expected_scores(ckpt, files[1])
    assert len(ranked) == 2
    assert [label for label, _ in ranked] == [LABELS[i] for i in expected.argsort(descending=True)[:2]]
    assert [s for _, s in ranked] == pytest.approx(expected.sort(descending=True).values[:2].tolist(), abs=1e-4)


def test_embed_classifier_writes_one_row_per_file(single_label, files, tmp_path):
    out = tmp_path / "emb" / "x.npy"
    assert main(["embed", single_label, *files, "-o", str(out), "--pool", "mean", "--device", "cpu"]) == 0

    emb = np.load(out)
    assert emb.shape == (3, 192) and emb.dtype == np.float32
    model, frontend, _, _ = load_classifier(single_label)
    windows = clip_windows(load_audio(files[1], 16000), frontend, FRAMES)[:, None]
    assert windows.shape[0] == 4
    with torch.no_grad():
        expected = model.embed(windows)["mean"].mean(0)
    np.testing.assert_allclose(emb[1], expected.numpy(), atol=1e-5)


def test_folders_stand_for_the_audio_files_under_them(single_label, files, tmp_path, capsys):
    folder = Path(files[0]).parent  # short.wav, long.wav, other_rate.wav
    out = tmp_path / "e.npy"
    assert main(["embed", single_label, str(folder), files[0], "-o", str(out), "--device", "cpu"]) == 0
    listed = (tmp_path / "e.txt").read_text().splitlines()
    assert [Path(p).name for p in listed] == ["long.wav", "other_rate.wav", "short.wav", "short.wav"]
    emb = np.load(out)
    assert emb.shape == (4, 192) and np.array_equal(emb[2], emb[3])  # rows follow the listed files

    capsys.readouterr()
    assert main(["predict", single_label, str(folder), "--device", "cpu"]) == 0
    assert list(parse_predictions(capsys.readouterr().out)) == listed[:3]

    (tmp_path / "empty").mkdir()
    assert main(["predict", single_label, str(tmp_path / "empty"), "--device", "cpu"]) == 2
    assert "no audio files" in capsys.readouterr().err


def test_embed_a_teacher_backbone(files, tmp_path):
    backbone = build_vit("tiny", (128, 96))
    path = tmp_path / "teacher_backbone.pt"
    atomic_save(backbone_checkpoint(backbone, "tiny", 16, 16, (8, 6), frontend_metadata(FrontEndConfig(), 96)), path)

    assert main(["embed", str(path), *files[:2], "-o", str(tmp_path / "e.npy"), "--device", "cpu"]) == 0

    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (2, 192) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])


def test_stats_are_the_mean_and_std_of_all_log_mel_values(tmp_path, capsys):
    paths = [write_wav(tmp_path / "a.wav", 0.7, 500), write_wav(tmp_path / "b.wav", 1.3, 2500)]
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")

    assert main(["stats", str(tmp_path)]) == 0

    captured = capsys.readouterr()
    snippet = yaml.safe_load(captured.out.splitlines()[-1])["frontend"]
    cfg = FrontEndConfig()
    values = torch.cat([clip_fbank(load_audio(p, 16000), cfg).flatten() for p in paths]).double()
    assert snippet["mean"] == pytest.approx(values.mean().item(), rel=1e-5)
    assert snippet["std"] == pytest.approx(values.std(correction=0).item(), rel=1e-5)
    assert snippet["sample_rate"] == 16000
    assert "broken.wav" in captured.err and "skipped" in captured.err


def test_unreadable_audio_exits_non_zero_naming_the_file(single_label, tmp_path, capsys):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF garbage")

    assert main(["predict", single_label, str(bad)]) != 0

    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_checkpoint_and_wrong_kind_are_one_line_errors(files, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.pt"), files[0]]) != 0
    assert "nope.pt" in capsys.readouterr().err

    backbone = tmp_path / "teacher_backbone.pt"
    atomic_save(backbone_checkpoint(build_vit("tiny", (128, 96)), "tiny", 16, 16, (8, 6), {}), backbone)
    assert main(["predict", str(backbone), files[0]]) != 0
    err = capsys.readouterr().err
    assert "teacher_backbone.pt: not an asit classifier" in err and "Traceback" not in err


def test_hugging_face_round_trip_through_the_command(single_label, tmp_path, capsys):
    pytest.importorskip("transformers", reason="Hugging Face interop needs transformers (a dev dependency)")
    assert main(["export-hf", single_label, str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back.pt"), "--multilabel"]) == 0
    assert "3 labels, multi-label" in capsys.readouterr().out

    original, _, _, _ = load_classifier(single_label)
    back, _, labels, multilabel = load_classifier(tmp_path / "back.pt")
    x = torch.randn(1, 1, 128, FRAMES)
    assert torch.equal(back(x), original(x)) and labels == LABELS and multilabel
