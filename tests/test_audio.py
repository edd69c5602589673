import numpy as np
import pytest
import soundfile as sf
import torch

from asit.audio import AudioError, load_audio

from conftest import SHARED_DATA


def tone(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_int16_pcm_is_scaled_to_unit_range(tmp_path):
    path = tmp_path / "pcm.wav"
    pcm = np.array([0, 16384, -32768, 32767, -16384], dtype=np.int16)
    sf.write(path, pcm, 16000, subtype="PCM_16")

    wave = load_audio(path, 16000)

    assert wave.dtype == torch.float32 and wave.ndim == 1
    torch.testing.assert_close(wave, torch.from_numpy(pcm / 32768.0).float())


def test_stereo_is_mixed_to_channel_mean(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = tone(440, 0.1, 16000, 0.6), tone(1000, 0.1, 16000, 0.2)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")

    wave = load_audio(path, 16000)

    torch.testing.assert_close(wave, torch.from_numpy((left + right) / 2))


def test_resampling_doubles_length_and_keeps_frequency(tmp_path):
    path = tmp_path / "8k.wav"
    sf.write(path, tone(440, 1.0, 8000), 8000, subtype="PCM_16")

    wave = load_audio(path, 16000)

    assert wave.shape == (16000,)
    spectrum = torch.fft.rfft(wave).abs()
    peak_hz = spectrum.argmax().item() * 16000 / len(wave)
    assert abs(peak_hz - 440) <= 1


def test_dc_offset_is_kept(tmp_path):
    path = tmp_path / "dc.wav"
    sf.write(path, np.full(100, 0.25, dtype=np.float32), 16000, subtype="FLOAT")

    assert torch.allclose(load_audio(path, 16000), torch.tensor(0.25))


def test_samples_beyond_full_scale_are_clamped(tmp_path):
    path = tmp_path / "hot.wav"
    sf.write(path, np.array([0.5, 1.5, -2.0], dtype=np.float32), 16000, subtype="FLOAT")

    assert load_audio(path, 16000).tolist() == [0.5, 1.0, -1.0]


def _write_garbage(path):
    path.write_bytes(b"this is not a wav file" * 10)


def _write_empty(path):
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)


def _write_nan(path):
    sf.write(path, np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")


def _write_inf(path):
    sf.write(path, np.array([0.1, np.inf, 0.2], dtype=np.float32), 16000, subtype="FLOAT")


def _write_silence(path):
    sf.write(path, np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")


def _write_antiphase(path):
    x = tone(440, 0.1, 16000)
    sf.write(path, np.stack([x, -x], axis=1), 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    "write, reason",
    [
        (_write_garbage, "cannot decode"),
        (_write_empty, "empty"),
        (_write_nan, "NaN"),
        (_write_inf, "infinite"),
        (_write_silence, "silent"),
        (_write_antiphase, "silent"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, write, reason):
    path = tmp_path / "bad_file.wav"
    write(path)

    with pytest.raises(AudioError, match=reason) as err:
        load_audio(path, 16000)
    assert str(err.value).startswith(f"{path}: ")


def test_missing_file_raises_audio_error(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match="not found") as err:
        load_audio(path, 16000)
    assert str(err.value).startswith(f"{path}: ")


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_real_recording_loads_at_16k():
    path = SHARED_DATA / "fsdd" / "recordings" / "0_george_0.wav"
    if not path.exists():
        pytest.skip(f"FSDD recording not available at {path}")
    info = sf.info(path)
    assert info.samplerate == 8000

    wave = load_audio(path, 16000)

    assert wave.shape == (info.frames * 2,)
    assert wave.abs().max() > 0.01
