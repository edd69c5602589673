"""asit.hear: the HEAR 2021 API and the X-ARES encoder, on real (FSDD) and synthetic audio."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from einops import reduce

from asit import hear
from asit.ast_model import ASTConfig, ASTModel, classifier_checkpoint
from asit.audio import load_audio
from asit.checkpoint import atomic_save, backbone_checkpoint
from asit.cli import main
from asit.features import FrontEndConfig, clip_fbank, clip_windows, fit_frames, frontend_metadata, normalise
from asit.vit import build_vit

RATE = 16000
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
SECONDS = (0.5, 1.0, 30.0)


def randomised(module):
    with torch.no_grad():  # off the trivial init, so that tokens and norms differ between positions
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A classifier (64 frames, overlapping patches: stride 10, a 12 x 5 grid) and a pretrained backbone
    (96 frames, stride 16, 8 x 6), as `asit finetune` and `asit pretrain` save them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    cfg = ASTConfig("tiny", num_classes=3, num_frames=64)
    atomic_save(classifier_checkpoint(randomised(ASTModel(cfg)), cfg, FrontEndConfig(), ["a", "b", "c"], False),
                root / "best.pt")
    vit = randomised(build_vit("tiny", (128, 96)))
    atomic_save(backbone_checkpoint(vit, "tiny", 16, 16, (8, 6), frontend_metadata(FrontEndConfig(), 96)),
                root / "teacher_backbone.pt")
    return {"classifier": str(root / "best.pt"), "backbone": str(root / "teacher_backbone.pt")}


@pytest.fixture(scope="module", params=["classifier", "backbone"])
def model(request, checkpoints):
    return hear.load_model(checkpoints[request.param])


def synthetic(seconds, seed):
    t = torch.arange(int(seconds * RATE)) / RATE
    g = torch.Generator().manual_seed(seed)
    chirp = torch.sin(2 * math.pi * (200 + 300 * seed) * t * (1 + t / 4))
    return 0.3 * chirp + 0.05 * torch.randn(t.shape, generator=g)


def fsdd_audio(fsdd, seconds, seed):
    """Spoken digits (FSDD, 8 kHz) at 16 kHz, one speaker after another, cut to `seconds`."""
    paths = sorted(fsdd.glob("*.wav"))[seed * 40:(seed + 1) * 40]  # 40 takes: about 17 s
    wave = torch.cat([load_audio(p, RATE) for p in paths])
    return wave.repeat(math.ceil(seconds * RATE / len(wave)))[:int(seconds * RATE)]


@pytest.fixture(scope="module", params=["fsdd", "synthetic"])
def clips(request):
    """{seconds: [2, samples]}: two different clips of each length, real or synthetic (never skipped)."""
    if request.param == "fsdd":
        fsdd = request.getfixturevalue("fsdd")
        return {s: torch.stack([fsdd_audio(fsdd, s, i) for i in range(2)]) for s in SECONDS}
    return {s: torch.stack([synthetic(s, i) for i in range(2)]) for s in SECONDS}


@pytest.fixture(scope="module")
def fsdd():  # conftest's, module-scoped for `clips`
    if not FSDD.is_dir():
        pytest.skip(f"real audio not available: {FSDD} is absent (it lives in the project's shared/ folder)")
    return FSDD


def test_the_model_carries_the_attributes_hear_reads(checkpoints):
    classifier, backbone = hear.load_model(checkpoints["classifier"]), hear.load_model(checkpoints["backbone"])
    for m in (classifier, backbone):
        assert isinstance(m, torch.nn.Module) and m.sample_rate == RATE
        assert (m.timestamp_embedding_size, m.scene_embedding_size) == (192, 384)
    assert (classifier.column_ms, backbone.column_ms) == (100, 160)  # patch stride x 10 ms
    assert (classifier.hop_size_in_ms, backbone.hop_size_in_ms) == (50, 40)  # at most HEAR's 50 ms


@pytest.mark.parametrize("seconds", SECONDS)
def test_one_column_per_patch_stride_at_the_centre_of_its_frames(model, clips, seconds):
    audio = clips[seconds]
    emb, centres = hear.column_embeddings(audio, model)

    stride = model.model.cfg.patch_stride
    columns = math.ceil(model.frontend.frames_in(audio.shape[1]) / stride)  # every column with audio in it
    assert emb.shape == (2, columns, model.timestamp_embedding_size) and centres.shape == (columns,)
    assert torch.isfinite(emb).all() and not torch.allclose(emb[0], emb[1])
    # the centre of column c's frames [Sc, Sc + 16): Sc * 10 ms + (15 * 10 + 25) / 2
    expected = torch.arange(columns, dtype=torch.float64) * model.column_ms + (15 * 10 + 25) / 2
    torch.testing.assert_close(centres, expected)


def hear_validator_rules(times: np.ndarray, length: float) -> None:
    """What hear-validator 2021.0.6 demands of the timestamps of `length` seconds of audio, its warnings
    included: evenly spaced (within 1 ms), at most 50 ms apart, the first within one step of the start,
    the last inside the audio and within one step (and 50 ms) of its end."""
    assert times.ndim == 2 and (times == times[0]).all()
    if times.shape[1] > 1:
        diff = np.diff(times)
        step = diff.mean()
        assert diff.max() <= 50.0 and np.abs(diff - step).max() <= 1, "uneven or coarse spacing"
        assert times.min() <= step, f"timestamps begin at {times.min()} ms"
        assert times.max() >= 1000 * length - step and times.max() >= 1000 * length - 50, \
            f"timestamps end at {times.max()} ms, long before the {1000 * length} ms of audio"
    assert times.max() <= 1000 * length, f"timestamps end at {times.max()} ms, past the {1000 * length} ms of audio"


# The validator's lengths (1.07, 1.98, 4.0 s), lengths that end on and just off a step, and a spread
# from 0.1 s to a minute.
LENGTHS = sorted({1.07, 1.98, 4.0, 0.04, 0.1, 0.16, 0.2, 1.0, 2.0, 2.74, 10.0, 60.0,
                  *np.round(np.geomspace(0.1, 20, 12), 4).tolist()})


@pytest.mark.parametrize("name", ["classifier", "backbone"])  # patch stride 10 and 16
def test_timestamps_pass_hear_validator_rules_at_every_length(checkpoints, name):
    model = hear.load_model(checkpoints[name])
    for length in LENGTHS:
        audio = 0.1 * torch.randn(1, int(length * RATE), generator=torch.Generator().manual_seed(0))
        emb, times = hear.get_timestamp_embeddings(audio, model)
        assert emb.shape[:2] == times.shape and times.shape[1] == 1 + math.floor(audio.shape[1] / RATE * 1000
                                                                                / model.hop_size_in_ms + 1e-9)
        hear_validator_rules(times.numpy(), length)


def test_stamps_between_column_centres_interpolate_the_columns(model, clips):
    audio = clips[1.0]
    emb, times = hear.get_timestamp_embeddings(audio, model)
    columns, centres = hear.column_embeddings(audio, model)
    for clip in range(2):
        for d in (0, 7, 100):  # np.interp: linear between centres, the end values beyond them
            expected = np.interp(times[clip].numpy(), centres.numpy(), columns[clip, :, d].numpy())
            np.testing.assert_allclose(emb[clip, :, d].numpy(), expected, atol=1e-5, rtol=1e-5)


def test_embeddings_are_deterministic_and_independent_of_the_batch(model, clips):
    audio = clips[30.0]
    emb, times = hear.get_timestamp_embeddings(audio, model)
    again, times_again = hear.get_timestamp_embeddings(audio, model)
    assert torch.equal(emb, again) and torch.equal(times, times_again)
    assert torch.equal(hear.get_scene_embeddings(audio, model), hear.get_scene_embeddings(audio, model))

    alone, _ = hear.get_timestamp_embeddings(audio[1:], model)
    torch.testing.assert_close(alone[0], emb[1], atol=1e-5, rtol=1e-5)


def columns_of(model, windows):
    """Direct forward: [W, F, N] windows -> [W, cols, D], patch tokens averaged over frequency."""
    tokens = model.model.backbone.forward_features(windows[:, None])[:, model.model.backbone.num_prefix_tokens:]
    return reduce(tokens, "b (f t) d -> b t d", "mean", f=model.model.backbone.patch_embed.grid_size[0])


@torch.no_grad()
def test_a_clip_in_one_window_reads_exactly_asit_s_features(model, clips):
    wave = clips[0.5][0]
    emb, _ = hear.column_embeddings(wave[None], model)
    direct = columns_of(model, clip_windows(wave, model.frontend, model.model.cfg.num_frames))[0]
    torch.testing.assert_close(emb[0], direct[:emb.shape[1]], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_long_audio_is_stitched_from_central_columns_of_windows_on_the_patch_grid(model, clips):
    wave = clips[30.0][0][:4 * RATE]  # 4 s: several windows of either model
    emb, _ = hear.column_embeddings(wave[None], model)
    cfg, n = model.model.cfg, model.model.cfg.num_frames
    spec = clip_fbank(wave, model.frontend)
    padded = normalise(fit_frames(spec, spec.shape[1] + n), model.frontend)  # the tail, padded as fit_frames
    starts = range(0, padded.shape[1] - n + 1, cfg.patch_stride)  # every window on the patch grid
    direct = columns_of(model, torch.stack([padded[:, s:s + n] for s in starts]))  # [W, cols, D]
    cols = direct.shape[1]

    for g in range(emb.shape[1]):
        held = [(w, g - w) for w in range(len(starts)) if 0 <= g - w < cols]  # (window, its column)
        matches = [j for w, j in held if torch.allclose(direct[w, j], emb[0, g], atol=1e-5, rtol=1e-5)]
        assert matches, f"column {g} is no window's column"
        if cols - 1 <= g < emb.shape[1] - cols:  # a column every window around could hold: not at an edge
            assert any(0 < j < cols - 1 for j in matches), f"column {g} comes from a window's edge"


def test_scene_embeddings_are_asit_embed_token_and_mean_pools(checkpoints, clips, tmp_path):
    model = hear.load_model(checkpoints["backbone"])
    for seconds, audio in clips.items():
        scene = hear.get_scene_embeddings(audio, model)
        assert scene.shape == (2, 384) and torch.isfinite(scene).all()

    audio = clips[1.0]
    scene = hear.get_scene_embeddings(audio, model)
    paths = [str(tmp_path / f"{i}.wav") for i in range(2)]
    for path, wave in zip(paths, audio):
        sf.write(path, wave.clamp(-1, 1).numpy(), RATE, subtype="FLOAT")
    for pool, half in (("token", scene[:, :192]), ("mean", scene[:, 192:])):
        out = tmp_path / f"{pool}.npy"
        assert main(["embed", checkpoints["backbone"], *paths, "-o", str(out), "--pool", pool, "--device", "cpu"]) == 0
        np.testing.assert_allclose(np.load(out), half.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("audio, what", [
    (torch.zeros(16000), "2-D"),
    (torch.zeros(1, 1, 16000), "2-D"),
    (torch.zeros(1, 16000, dtype=torch.int16), "float"),
    ([[0.0] * 100], "list"),
    (torch.zeros(1, 0), "at least one sample"),
    (torch.full((1, 100), float("nan")), "NaN"),
])
def test_bad_audio_is_a_one_line_value_error(checkpoints, audio, what):
    model = hear.load_model(checkpoints["backbone"])
    encoder = hear.AsitEncoder(checkpoints["backbone"])
    calls = [lambda: hear.get_timestamp_embeddings(audio, model), lambda: hear.get_scene_embeddings(audio, model),
             lambda: encoder(audio)]
    for call in calls:
        with pytest.raises(ValueError, match=what) as err:
            call()
        assert "\n" not in str(err.value)


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="pass an asit checkpoint"):
        hear.load_model()
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        hear.load_model(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a checkpoint"):
        hear.load_model(tmp_path / "garbage.pt")
    torch.save(build_vit("tiny", (128, 96)).state_dict(), tmp_path / "timm.pt")  # no front end recorded
    with pytest.raises(ValueError, match="timm.pt: no front-end metadata"):
        hear.load_model(tmp_path / "timm.pt")


def test_the_encoder_passes_x_ares_own_loader_and_checker(checkpoints, monkeypatch):
    pytest.importorskip("xares", reason="X-ARES's checker needs `pip install xares` (a dev dependency)")
    from xares.audio_encoder_checker import check_audio_encoder
    from xares.utils import attr_from_py_path

    monkeypatch.setenv("ASIT_CKPT", checkpoints["backbone"])
    encoder = attr_from_py_path("asit/hear.py", endswith="Encoder")()  # as `python -m xares.run asit/hear.py`
    assert type(encoder) is hear.AsitEncoder
    assert check_audio_encoder(encoder)


def test_the_x_ares_contract(checkpoints, monkeypatch):
    """The same contract checked without xares: attributes, [B, T', D] with T' ~ duration / hop, resampling."""
    encoder = hear.AsitEncoder(checkpoints["classifier"])
    assert encoder.device == torch.device("cpu") and encoder.sampling_rate == RATE
    assert (encoder.output_dim, encoder.hop_size_in_ms) == (192, 50)

    audio = torch.stack([synthetic(3.125, 0), synthetic(3.125, 1)])
    out = encoder(audio)
    assert out.shape == (2, 63, 192) and torch.equal(out, encoder(audio, RATE))  # 0, 50, ..., 3100 ms
    torch.testing.assert_close(out, hear.get_timestamp_embeddings(audio, encoder.model)[0])

    at_32k = torch.stack([synthetic(3.125, 0), synthetic(3.125, 1)]).repeat_interleave(2, dim=1)
    resampled = encoder(at_32k, 32000)
    assert resampled.shape == out.shape
    torch.testing.assert_close(resampled, encoder(torchaudio.functional.resample(at_32k, 32000, RATE)))

    monkeypatch.delenv("ASIT_CKPT", raising=False)
    with pytest.raises(ValueError, match="ASIT_CKPT"):
        hear.AsitEncoder()


def test_the_encoder_takes_ten_minutes_of_audio(checkpoints):
    encoder = hear.AsitEncoder(checkpoints["backbone"])
    audio = 0.1 * torch.randn(1, 600 * RATE, generator=torch.Generator().manual_seed(0))
    out = encoder(audio)
    assert out.shape == (1, 15001, 192) and torch.isfinite(out).all()  # 0, 40, ..., 600000 ms


def test_soundfile_decodes_what_x_ares_tars_hold(tmp_path):
    from asit.xares_run import soundfile_audio

    wave = synthetic(0.5, 0).numpy()
    sf.write(str(tmp_path / "a.wav"), wave, RATE, subtype="FLOAT")
    audio, rate = soundfile_audio("wav", (tmp_path / "a.wav").read_bytes())
    assert rate == RATE and audio.shape == (1, len(wave)) and audio.dtype == torch.float32
    np.testing.assert_array_equal(audio[0].numpy(), wave)
    assert soundfile_audio("json", b"{}") is None  # not audio: left to the next decoder


def test_x_ares_runs_end_to_end_on_a_cpu_without_ffmpeg(checkpoints, tmp_path, monkeypatch):
    """python -m asit.xares_run on a small local task: encoded, the MLP and k-NN scored (X-ARES's own
    loader, which decodes with torchaudio, would skip every clip without FFmpeg)."""
    pytest.importorskip("xares", reason="needs `pip install xares` (a dev dependency)")
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    monkeypatch.syspath_prepend(str(scripts))
    from hear_tasks import split_of
    from xares_commands_task import build

    speakers = {split_of(f"s{i}"): f"s{i}" for i in range(40)}  # one speaker per split
    source = tmp_path / "words"
    for k, word in enumerate(["low", "mid", "high"]):
        for speaker in speakers.values():
            for n in range(4):
                path = source / word / f"{speaker}_nohash_{n}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), synthetic(0.5, k).numpy() * (0.5 + 0.1 * n), RATE)
    build(source, tmp_path / "env")
    import os
    import subprocess
    import sys
    # Its own process, as a user runs it: X-ARES sets the multiprocessing start method, once per process.
    env = os.environ | {"ASIT_XARES_ENV": str(tmp_path / "env"), "ASIT_CKPT": checkpoints["backbone"]}
    subprocess.run([sys.executable, "-m", "asit.xares_run", "asit/hear.py", "scripts/xares_commands_task.py"],
                   cwd=Path(__file__).resolve().parents[1], env=env, check=True, capture_output=True)
    scores = tmp_path / "env" / "commands" / "checkpoints" / "AsitEncoder"
    mlp, knn = (float((scores / f"{kind}_score.txt").read_text().split()[0]) for kind in ("mlp", "knn"))
    assert mlp > 2 / 3 and knn > 1 / 3  # three chirps, told apart (chance 1/3): the labels reached the MLP
