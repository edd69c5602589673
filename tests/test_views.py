import numpy as np
import pytest
import torch

from asit.features import FrontEndConfig, check_frontend, fbank, frontend_metadata, normalise
from asit.sources import AudioItem, list_audio
from asit.synthetic import ensure_synthetic_dataset
from asit.sampler import GlobalBatchSampler
from asit.views import PretrainViews, ViewsConfig, crop_features, make_crops, random_crop
from asit.runtime import resolve_precision


@pytest.mark.parametrize("seconds, frames", [(6.0, 592), (1.0, 96), (10.0, 992)])
def test_frame_count_is_derived_from_the_crop_and_fits_the_patches(seconds, frames):
    cfg, views = FrontEndConfig(), ViewsConfig(crop_seconds=seconds)
    assert views.num_frames(cfg, multiple=16) == frames
    wave = torch.randn(views.crop_samples(cfg)) * 0.1
    assert fbank(wave, cfg).shape == (128, cfg.frames_in(views.crop_samples(cfg)))


def test_normalisation_is_ast_s():
    cfg = FrontEndConfig(mean=-4.0, std=2.0)
    assert normalise(torch.tensor([0.0, -4.0]), cfg).tolist() == [1.0, 0.0]


def test_short_clips_are_zero_padded_at_the_end():
    wave = torch.ones(1000)
    crop = random_crop(wave, 16000, np.random.default_rng(0))
    assert crop.shape == (16000,) and crop[:1000].eq(1).all() and crop[1000:].eq(0).all()


def test_two_views_are_different_crops_of_the_same_clip():
    wave = torch.randn(5 * 16000) * 0.1
    crops = make_crops(wave, FrontEndConfig(), ViewsConfig(crop_seconds=1.0, time_roll_p=0.0), np.random.default_rng(3))
    views = crop_features(crops, FrontEndConfig(), 96)
    assert views.shape == (2, 1, 128, 96)
    assert not torch.equal(views[0], views[1])


def test_front_end_mismatch_names_what_differs():
    saved = frontend_metadata(FrontEndConfig(sample_rate=32000), 592)
    with pytest.raises(ValueError, match="sample_rate: checkpoint 32000 vs config 16000"):
        check_frontend(saved, FrontEndConfig(), "ckpt.pt")
    # The frame count is the model's input length, not part of the front end's settings.
    check_frontend(frontend_metadata(FrontEndConfig(), 192), FrontEndConfig(), "ckpt.pt")
    # A checkpoint of an older asit also recorded its crop settings: not part of the input either.
    check_frontend({**frontend_metadata(FrontEndConfig(), 96), "crop_seconds": 2.0}, FrontEndConfig(), "ckpt.pt")


def test_views_depend_on_clip_and_epoch_only(tmp_path):
    items = list_audio(ensure_synthetic_dataset(tmp_path, num_clips=4, seconds=2.0))
    data = PretrainViews(items, FrontEndConfig(), ViewsConfig(crop_seconds=1.0), seed=0)
    a, b = data[(2, 0)], data[(2, 0)]
    assert torch.equal(a["views"], b["views"]) and a["index"] == 2 and a["failed"] == 0
    assert not torch.equal(a["views"], data[(2, 1)]["views"])


def test_unreadable_file_is_replaced_by_the_next_and_counted(tmp_path):
    good = list_audio(ensure_synthetic_dataset(tmp_path, num_clips=2, seconds=1.0))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    data = PretrainViews([AudioItem(str(bad)), *good], FrontEndConfig(), ViewsConfig(crop_seconds=1.0), seed=0)
    sample = data[(0, 0)]
    assert sample["failed"] == 1 and sample["index"] == 0


def test_processes_share_out_exactly_the_single_process_batches():
    one = list(GlobalBatchSampler(50, 8, 0, 1, seed=1, stop_step=12))
    ranks = [list(GlobalBatchSampler(50, 4, r, 2, seed=1, stop_step=12)) for r in (0, 1)]
    assert len(one) == 12 and all(len(b) == 8 for b in one)
    for step, batch in enumerate(one):
        assert sorted(batch) == sorted(ranks[0][step] + ranks[1][step])
    epochs = [b[0][1] for b in one]
    assert epochs == [0] * 6 + [1] * 6  # 50 // 8 = 6 steps per epoch, the rest dropped
    assert len({i for b in one[:6] for i, _ in b}) == 48  # no clip twice within an epoch


def test_sampler_resumes_mid_run_where_it_left_off():
    full = list(GlobalBatchSampler(40, 4, 0, 1, seed=0, stop_step=25))
    assert list(GlobalBatchSampler(40, 4, 0, 1, seed=0, stop_step=25, start_step=13)) == full[13:]


def test_too_little_data_for_one_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(5, 4, 0, 2, seed=0, stop_step=1)


def test_precision_choice_per_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    # bf16 on a CPU only where its matmuls are native (the flags given here, not this machine's)
    assert resolve_precision("auto", cpu, frozenset({"avx512_bf16"})) is torch.bfloat16
    assert resolve_precision("auto", cpu, frozenset({"avx2", "fma"})) is None
    assert resolve_precision("fp32", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", gpu) is torch.float16  # older GPUs: fp16 with a grad scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", gpu) is torch.bfloat16
