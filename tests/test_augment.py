import numpy as np
import pytest
import torch

from asit.augment import AugmentConfig, mixup, random_bands, spec_augment


def distinct_batch(b: int, c: int = 8):
    """Clip i is the constant i + 1 and has class i: any mix is readable from the result."""
    x = (torch.arange(b, dtype=torch.float32) + 1).view(b, 1, 1, 1).expand(b, 1, 4, 5).clone()
    y = torch.eye(b, c)
    return x, y


def test_mixup_mixes_inputs_and_targets_with_the_same_lambda():
    x, y = distinct_batch(8)
    mx, my, lam = mixup(x, y, rate=1.0, alpha=10.0, rng=np.random.default_rng(0))
    for i in range(8):
        assert my[i, i] == pytest.approx(float(lam[i]))
        others = [j for j in range(8) if j != i and my[i, j] > 0]
        assert len(others) == 1, "exactly one partner, never the clip itself"
        j = others[0]
        assert my[i, j] == pytest.approx(1 - float(lam[i]))
        assert torch.allclose(mx[i], lam[i] * x[i] + (1 - lam[i]) * x[j])
    assert torch.allclose(my.sum(dim=1), torch.ones(8))  # targets stay distributions


def test_mixup_rate_is_the_fraction_of_clips_mixed_and_lambda_follows_beta():
    x, y = distinct_batch(4000, 4000)
    _, _, lam = mixup(x, y, rate=0.3, alpha=10.0, rng=np.random.default_rng(1))
    mixed = lam < 1
    assert mixed.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert lam[mixed].mean().item() == pytest.approx(0.5, abs=0.02)  # Beta(10, 10) is centred on 1/2
    assert lam[mixed].std().item() == pytest.approx((0.25 / 21) ** 0.5, rel=0.1)


def test_mixup_rate_zero_is_identity():
    x, y = distinct_batch(6)
    mx, my, lam = mixup(x, y, rate=0.0, alpha=10.0, rng=np.random.default_rng(0))
    assert torch.equal(mx, x) and torch.equal(my, y) and torch.equal(lam, torch.ones(6))


def test_spec_augment_hides_one_band_per_axis_within_the_max_widths_and_nothing_else():
    b, f, t, fmax, tmax = 500, 32, 40, 6, 9
    x = torch.randn(b, 1, f, t) + 10  # no zeros of its own
    out = spec_augment(x, fmax, tmax, np.random.default_rng(0))
    hidden = out[:, 0] == 0  # [B, F, T]
    rows = hidden.all(dim=2)  # frequency bins hidden at every frame
    cols = hidden.all(dim=1)  # frames hidden at every bin
    # Everything hidden is explained by the two bands, and everything else is untouched.
    assert torch.equal(hidden, rows[:, :, None] | cols[:, None, :])
    assert torch.equal(out[~hidden[:, None]], x[~hidden[:, None]])
    for widths, mask, limit in ((rows.sum(1), rows, fmax), (cols.sum(1), cols, tmax)):
        assert widths.max() == limit and widths.min() == 0  # the full range 0..max is drawn, no more
        for band in mask[widths > 0]:  # one contiguous band
            on = band.nonzero().flatten()
            assert on[-1] - on[0] + 1 == len(on)


def test_spec_augment_masks_are_the_data_mean_in_normalised_space():
    # 0 in normalised space is the data set's mean, whatever the clip's own values.
    out = spec_augment(torch.full((50, 1, 16, 16), 3.0), 8, 8, np.random.default_rng(2))
    assert set(out.unique().tolist()) <= {0.0, 3.0}


def test_spec_augment_without_masks_is_identity():
    x = torch.randn(3, 1, 8, 8)
    assert spec_augment(x, 0, 0, np.random.default_rng(0)) is x


def test_bands_never_exceed_the_axis():
    bands = random_bands(1000, 5, 50, np.random.default_rng(0))
    assert bands.sum(1).max() == 5 and bands.shape == (1000, 5)


def test_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="mixup"):
        AugmentConfig(mixup=1.5)
    with pytest.raises(ValueError, match="freq_mask"):
        AugmentConfig(freq_mask=-1)
