import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from asit.gmml import Corruption, GMMLConfig, _plan, corrupt

P = 16


def _views(B, F=128, T=256):
    # Strictly positive, so that zeroed pixels are recognisable.
    return torch.rand(B, 1, F, T, generator=torch.Generator().manual_seed(B)) + 1.0


def _fractions(c: Corruption):
    return c.pixel_mask.float().mean((1, 2, 3))


def _targets(cfg, views, seed, step, ids, view):
    _, _, F, T = views.shape
    return _plan(cfg, F, T, (P, P), seed, step, list(ids), view).target


def _reference_mask(cfg, F, T, seed, step, ids, view):
    """Per-sample loop: paint blocks in drawing order until the target fraction is reached."""
    plan = _plan(cfg, F, T, (P, P), seed, step, list(ids), view)
    masks = np.zeros((len(ids), F, T), dtype=bool)
    for b, m in enumerate(masks):
        for k in range(cfg.max_blocks):
            if m.mean() >= plan.target[b]:
                break
            top, left = plan.top[b, k], plan.left[b, k]
            m[top : top + plan.height[b, k], left : left + plan.width[b, k]] = True
    return torch.from_numpy(masks)


@pytest.mark.parametrize(
    "cfg",
    [
        GMMLConfig(),
        GMMLConfig(p_alien=1.0),
        GMMLConfig(align_to_patches=True),
        # Small blocks: targets are reached after 40 to 150 blocks (every bitset chunk) or never (all blocks used).
        GMMLConfig(p_alien=0.0, zeros_ratio=(0.2, 0.6), min_block_frac=0.05, max_block_frac=0.1, max_blocks=150),
    ],
)
def test_mask_is_smallest_prefix_of_blocks_reaching_target(cfg):
    views = _views(16, 64, 128)
    for step in range(3):
        c = corrupt(views, cfg, P, seed=1, step=step, sample_ids=range(100, 116), view=0)
        expected = _reference_mask(cfg, 64, 128, 1, step, range(100, 116), 0)
        assert torch.equal(c.pixel_mask[:, 0], expected)


def test_fraction_reaches_target_with_bounded_overshoot():
    cfg = GMMLConfig(p_alien=0.5)
    views = _views(64)
    for step in range(4):
        c = corrupt(views, cfg, P, seed=0, step=step, sample_ids=range(64), view=step % 2)
        target = torch.from_numpy(_targets(cfg, views, 0, step, range(64), step % 2)).float()
        frac = _fractions(c)
        assert (frac >= target - 1e-6).all()
        assert (frac < target + cfg.max_block_frac**2 + 1e-6).all()


def test_zeros_and_alien_fractions_follow_their_ratios():
    views = _views(64)
    zeros = torch.cat([_fractions(corrupt(views, GMMLConfig(p_alien=0.0), P, 0, s, range(64), 0)) for s in range(4)])
    bound = 0.7 + 0.3**2
    assert zeros.min() >= 0.5 and zeros.max() < bound
    assert 0.5 < zeros.mean() < 0.7
    assert zeros.std() > 0.03  # the target is drawn per view, not fixed

    alien = torch.cat([_fractions(corrupt(views, GMMLConfig(p_alien=1.0), P, 0, s, range(64), 0)) for s in range(4)])
    assert alien.min() >= 0.3 and alien.max() < 0.3 + 0.3**2
    assert alien.mean() == pytest.approx(0.3, abs=0.03)


def test_blocks_are_not_aligned_to_patches_by_default():
    c = corrupt(_views(8), GMMLConfig(), P, seed=0, step=0, sample_ids=range(8), view=0)
    patchwise = nnf.max_pool2d(c.pixel_mask.float(), P).repeat_interleave(P, 2).repeat_interleave(P, 3).bool()
    assert not torch.equal(c.pixel_mask, patchwise)
    # Some patches are partly corrupted, so the threshold matters.
    frac = nnf.avg_pool2d(c.pixel_mask.float(), P)
    assert ((frac > 0) & (frac < 1)).any()


def test_aligned_blocks_cover_whole_patches():
    cfg = GMMLConfig(align_to_patches=True)
    c = corrupt(_views(16), cfg, P, seed=0, step=0, sample_ids=range(16), view=0)
    mask = c.pixel_mask.float()
    assert torch.equal(nnf.max_pool2d(mask, P), -nnf.max_pool2d(-mask, P))  # max == min within every patch
    any_pixel = nnf.max_pool2d(mask, P).flatten(1).bool()
    assert torch.equal(c.token_mask, any_pixel)
    assert c.token_mask.any()
    plan = _plan(cfg, 128, 256, (P, P), 0, 0, list(range(16)), 0)
    for a in (plan.top, plan.height, plan.left, plan.width):
        assert (a % P == 0).all()
    assert (plan.height >= P).all() and (plan.width >= P).all()


def test_zeros_fill_with_zero_and_keep_the_rest():
    views = _views(16)
    c = corrupt(views, GMMLConfig(p_alien=0.0), P, seed=3, step=0, sample_ids=range(16), view=0)
    assert not c.alien.any()
    assert c.pixel_mask.any()
    assert (c.views[c.pixel_mask] == 0).all()
    assert torch.equal(c.views[~c.pixel_mask], views[~c.pixel_mask])


def test_alien_copies_same_position_pixels_of_another_sample():
    B, F, T = 16, 32, 64
    # Value = (sample + 1) * 4096 + pixel index: encodes both the donor and the position (exact in float32).
    position = torch.arange(F * T, dtype=torch.float32).view(1, 1, F, T)
    views = (torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1) + 1) * 4096 + position
    donors_of_0 = set()
    for step in range(10):
        c = corrupt(views, GMMLConfig(p_alien=1.0), P, seed=0, step=step, sample_ids=range(B), view=1)
        assert c.alien.all()
        assert torch.equal(c.views[~c.pixel_mask], views[~c.pixel_mask])
        for i in range(B):
            got = c.views[i][c.pixel_mask[i]]
            assert got.numel() > 0
            donor = int(got[0] // 4096) - 1
            assert donor != i
            assert torch.equal(got, views[donor][c.pixel_mask[i]])  # one donor, same positions
            if i == 0:
                donors_of_0.add(donor)
    assert len(donors_of_0) > 1  # the donor is drawn, not a fixed neighbour


def test_alien_frequency_follows_p_alien():
    views = _views(100, 32, 32)
    flags = torch.cat([corrupt(views, GMMLConfig(), P, 0, s, range(100), 0).alien for s in range(20)])
    assert flags.float().mean() == pytest.approx(0.5, abs=0.05)
    flags = torch.cat([corrupt(views, GMMLConfig(p_alien=0.0), P, 0, s, range(100), 0).alien for s in range(5)])
    assert not flags.any()


def test_batch_of_one_falls_back_to_zeros():
    views = _views(1)
    for step in range(5):
        c = corrupt(views, GMMLConfig(p_alien=1.0), P, seed=0, step=step, sample_ids=[7], view=0)
        assert not c.alien.any()
        assert (c.views[c.pixel_mask] == 0).all()
        assert 0.5 <= _fractions(c).item() < 0.7 + 0.3**2  # zeros' ratio, not alien's


@pytest.mark.parametrize("threshold", [0.5, 1e-6, 0.25, 1.0])
def test_token_mask_follows_threshold(threshold):
    cfg = GMMLConfig(token_mask_threshold=threshold)
    c = corrupt(_views(16), cfg, P, seed=0, step=0, sample_ids=range(16), view=0)
    frac = nnf.avg_pool2d(c.pixel_mask.float(), P)  # [B, 1, F/P, T/P]
    # flatten(1) of the [F/P, T/P] grid: frequency rows outer, time inner, like PatchEmbed's flatten(2).
    assert c.token_mask.shape == (16, (128 // P) * (256 // P))
    assert torch.equal(c.token_mask, (frac >= threshold).flatten(1))
    if threshold == 1e-6:
        assert torch.equal(c.token_mask, (frac > 0).flatten(1))
    if threshold == 1.0:
        assert torch.equal(c.token_mask, (frac == 1).flatten(1))


def test_deterministic_given_seed_step_ids_view():
    views = _views(8)
    ids = [5, 17, 3, 99, 0, 42, 8, 1]

    def mask(seed=0, step=0, view=0, cfg=GMMLConfig()):
        return corrupt(views, cfg, P, seed=seed, step=step, sample_ids=torch.tensor(ids), view=view)

    a, b = mask(), mask()
    assert torch.equal(a.pixel_mask, b.pixel_mask) and torch.equal(a.views, b.views)
    assert torch.equal(a.alien, b.alien)
    for other in (mask(step=1), mask(seed=1), mask(view=1)):
        assert not torch.equal(a.pixel_mask, other.pixel_mask)
    # Changing max_blocks does not change the draws of the first blocks.
    assert torch.equal(a.pixel_mask, mask(cfg=GMMLConfig(max_blocks=100)).pixel_mask)


def test_mask_independent_of_batch_layout():
    cfg = GMMLConfig(p_alien=0.0)  # donors are local to the batch; everything else must not be
    views = _views(4)
    full = corrupt(views, cfg, P, seed=2, step=9, sample_ids=[10, 11, 12, 13], view=1)
    ac = corrupt(views[[0, 2]], cfg, P, seed=2, step=9, sample_ids=[10, 12], view=1)
    bd = corrupt(views[[1, 3]], cfg, P, seed=2, step=9, sample_ids=[11, 13], view=1)
    assert torch.equal(full.pixel_mask[[0, 2]], ac.pixel_mask)
    assert torch.equal(full.pixel_mask[[1, 3]], bd.pixel_mask)
    assert torch.equal(full.views[[1, 3]], bd.views)
    # Alien kind is drawn per sample too: same flags whatever the batch layout.
    cfg = GMMLConfig(p_alien=0.5)
    full = corrupt(_views(8), cfg, P, 2, 9, range(8), 1).alien
    halves = [corrupt(_views(4), cfg, P, 2, 9, ids, 1).alien for ids in ([0, 2, 4, 6], [1, 3, 5, 7])]
    assert torch.equal(full[[0, 2, 4, 6]], halves[0]) and torch.equal(full[[1, 3, 5, 7]], halves[1])


def test_disabled_is_identity():
    views = _views(4)
    c = corrupt(views, GMMLConfig(enabled=False), P, seed=0, step=0, sample_ids=range(4), view=0)
    assert torch.equal(c.views, views)
    assert c.pixel_mask.shape == views.shape and not c.pixel_mask.any()
    assert c.token_mask.shape == (4, 8 * 16) and not c.token_mask.any()
    assert not c.alien.any()


def test_size_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="patch_size"):
        corrupt(torch.ones(2, 1, 128, 100), GMMLConfig(), P, 0, 0, [0, 1], 0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"zeros_ratio": (0.7, 0.5)}, "zeros_ratio"),
        ({"alien_ratio": (0.3, 1.2)}, "alien_ratio"),
        ({"alien_ratio": (0.3,)}, "alien_ratio"),
        ({"min_block_frac": 0.0}, "min_block_frac"),
        ({"max_block_frac": 1.5}, "max_block_frac"),
        ({"min_block_frac": 0.4, "max_block_frac": 0.3}, "min_block_frac"),
        ({"p_alien": -0.1}, "p_alien"),
        ({"max_blocks": 0}, "max_blocks"),
        ({"token_mask_threshold": 0.0}, "token_mask_threshold"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GMMLConfig(**kwargs)


def test_config_accepts_lists_from_yaml():
    cfg = GMMLConfig(zeros_ratio=[0.4, 0.6], alien_ratio=[0.3, 0.3])
    assert cfg.zeros_ratio == (0.4, 0.6) and cfg.alien_ratio == (0.3, 0.3)
