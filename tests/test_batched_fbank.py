import math

import pytest
import torch
import torchaudio

from asit.audio import load_audio
from asit.batched_fbank import BatchedFbank, kaldi_mel_banks
from asit.features import FrontEndConfig, fbank

CFG = FrontEndConfig()
SR = CFG.sample_rate
# On the CPU the batched path runs torchaudio's float32 operations in the same order and is measured
# bit-identical (max error 0.0); 1e-4 leaves room for a kernel change without hiding a real error.
ATOL = 1e-4


def kaldi_fbank(wave: torch.Tensor, subtract_mean: bool = True) -> torch.Tensor:
    """torchaudio's Kaldi fbank with AST's settings: the reference [F, T] of one clip [S]."""
    if subtract_mean:
        wave = wave - wave.mean()
    return torchaudio.compliance.kaldi.fbank(
        wave[None], sample_frequency=SR, num_mel_bins=CFG.num_mel_bins, frame_length=CFG.frame_length_ms,
        frame_shift=CFG.frame_shift_ms, window_type="hanning", htk_compat=True, use_energy=False, dither=0.0).T


def reference(waves: torch.Tensor, subtract_mean: bool = True) -> torch.Tensor:
    return torch.stack([kaldi_fbank(w, subtract_mean) for w in waves])


def sweep(seconds: float, f0: float = 50.0, f1: float = 7900.0) -> torch.Tensor:
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    return (0.5 * torch.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))).float()


def clips(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name == "noise":
        return 0.1 * torch.randn(3, SR, generator=g)
    if name == "sweep":
        return sweep(6.0)[None]
    # Pre-emphasis leaves the low bands of this below Kaldi's epsilon: the floor must be torchaudio's.
    return 1e-4 * torch.randn(3, SR, generator=g)


@pytest.fixture(scope="module")
def fbank_module() -> BatchedFbank:
    return BatchedFbank(CFG)


@pytest.mark.parametrize("name", ["noise", "sweep", "near_silence"])
@pytest.mark.parametrize("subtract_mean", [True, False])
def test_matches_kaldi_fbank_per_clip(fbank_module, name, subtract_mean):
    waves = clips(name)
    out = fbank_module(waves, subtract_mean=subtract_mean)
    torch.testing.assert_close(out, reference(waves, subtract_mean), atol=ATOL, rtol=0)


def test_matches_kaldi_fbank_on_real_speech(fbank_module, fsdd):
    paths = sorted(fsdd.glob("*.wav"))[:8]
    assert paths, f"no wav files in {fsdd}"
    for path in paths:  # 8 kHz recordings, resampled by load_audio as the loader does
        wave = load_audio(path, SR)
        torch.testing.assert_close(fbank_module(wave[None])[0], kaldi_fbank(wave), atol=ATOL, rtol=0)


@pytest.mark.parametrize("subtract_mean", [True, False])
def test_the_loaders_fbank_is_kaldi_s_to_the_bit(subtract_mean):
    # asit.features.fbank (every loader's) runs on this module; on the CPU it must stay torchaudio's
    # exactly, since AST-family weights and the Hugging Face export expect Kaldi's features.
    for wave in [*clips("noise"), sweep(1.0), *clips("near_silence"), 0.1 * torch.randn(12345)]:
        assert torch.equal(fbank(wave, CFG, subtract_mean), kaldi_fbank(wave, subtract_mean))


def test_rows_of_a_batch_do_not_interact(fbank_module):
    g = torch.Generator().manual_seed(1)
    batch = torch.stack([
        0.1 * torch.randn(SR, generator=g),
        sweep(1.0),
        1e-4 * torch.randn(SR, generator=g),
        0.3 + 0.05 * torch.randn(SR, generator=g),  # a DC offset: removed per clip, not per batch
        torch.zeros(SR),
    ])
    out = fbank_module(batch)
    torch.testing.assert_close(out, reference(batch), atol=ATOL, rtol=0)
    changed = batch.clone()
    changed[1:] = torch.randn(4, SR, generator=g)
    assert torch.equal(fbank_module(changed)[0], out[0])


@pytest.mark.parametrize("samples", [SR, 6 * SR, 12345, 400, 559])
def test_frame_count_follows_the_config(fbank_module, samples):
    waves = 0.1 * torch.randn(2, samples, generator=torch.Generator().manual_seed(samples))
    out = fbank_module(waves)
    assert out.shape == (2, CFG.num_mel_bins, CFG.frames_in(samples))
    torch.testing.assert_close(out, reference(waves), atol=ATOL, rtol=0)


def test_a_clip_shorter_than_one_window_is_refused(fbank_module):
    with pytest.raises(ValueError, match="shorter than one window"):
        fbank_module(torch.zeros(2, 399))


def test_mel_banks_are_kaldi_s():
    expected, _ = torchaudio.compliance.kaldi.get_mel_banks(128, 512, float(SR), 20.0, 0.0, 100.0, -500.0, 1.0)
    assert torch.equal(kaldi_mel_banks(128, 512, SR), torch.nn.functional.pad(expected, (0, 1)).T)


def test_buffers_follow_the_module_and_stay_out_of_checkpoints():
    module = BatchedFbank(CFG)
    assert module.state_dict() == {}  # rebuilt from the config, never saved
    module.to(torch.float64)
    assert {b.dtype for b in module.buffers()} == {torch.float64}
    waves = clips("noise").double()
    out = module(waves)
    assert out.dtype == torch.float64
    # The float64 buffers hold float32-rounded values, so this is float32's agreement (measured 1.1e-4).
    torch.testing.assert_close(out, reference(waves), atol=1e-3, rtol=0)
    module.to("meta")
    assert {b.device.type for b in module.buffers()} == {"meta"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_matches_kaldi_fbank_on_cuda():
    waves = torch.cat([clips("noise"), sweep(1.0)[None], clips("near_silence")])
    out = BatchedFbank(CFG).cuda()(waves.cuda()).cpu()
    ref = reference(waves)
    # cuFFT rounds differently; the log magnifies that only in bands far below the frame's loudest,
    # which hold float32 rounding noise (a 1-ulp change of the window: <= 1e-4 within 60 dB of the
    # peak, up to 1.4e-2 beyond 100 dB in the sweep).
    loud = ref.amax(dim=1, keepdim=True) - ref < 6 * math.log(10)  # within 60 dB of the frame's peak
    torch.testing.assert_close(out[loud], ref[loud], atol=1e-3, rtol=0)
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=0)
    # asit.features.fbank runs where its wave is (the HEAR API computes features on the model's device).
    one = fbank(waves[0].cuda(), CFG)
    assert one.device.type == "cuda"
    torch.testing.assert_close(one.cpu()[loud[0]], ref[0][loud[0]], atol=1e-3, rtol=0)


def test_autocast_does_not_reach_the_front_end(fbank_module):
    waves = torch.cat([clips("noise"), clips("near_silence")])
    expected = fbank_module(waves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fbank_module(waves)
        unguarded = fbank_module._log_mel(waves - waves.mean(dim=-1, keepdim=True))
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    # What the opt-out prevents: the same computation with a bf16 mel projection (measured 3.7e-2).
    assert (unguarded.float() - expected).abs().max() > 1e-2


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100])
def test_frame_counting_agrees_with_kaldi_at_every_rate(rate):
    """The window is kaldi's whole samples (275 at 11025 Hz, not 276): frames_in, clip_fbank's padding
    and the transform all count as torchaudio's kaldi.fbank does."""
    from asit.features import clip_fbank

    cfg = FrontEndConfig(sample_rate=rate)
    for n in (cfg.window_samples - 1, cfg.window_samples, cfg.window_samples + 1, rate // 3, rate):
        wave = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(n))
        expected = 0 if n < cfg.window_samples else torchaudio.compliance.kaldi.fbank(
            wave[None], sample_frequency=rate, num_mel_bins=128, window_type="hanning", htk_compat=True,
            use_energy=False, dither=0.0).shape[0]
        assert cfg.frames_in(n) == expected, n
        assert clip_fbank(wave, cfg).shape[1] == max(1, expected), n
