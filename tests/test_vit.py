import pytest
import torch

from asit.runtime import autocast
from asit.vit import WeightShapeError, adapt_state_dict, build_vit, grid_of, resample_pos_embed, set_attention


def coordinate_grid(f: int, t: int, prefix: int = 1) -> torch.Tensor:
    """A [1, prefix + f*t, 2] positional embedding whose patch entries are their own (f, t) position;
    prefix entries are -1, -2, ..."""
    ff, tt = torch.meshgrid(torch.arange(f, dtype=torch.float32), torch.arange(t, dtype=torch.float32), indexing="ij")
    patches = torch.stack([ff, tt], dim=-1).reshape(1, f * t, 2)
    prefix_rows = -torch.arange(1, prefix + 1, dtype=torch.float32)[None, :, None].expand(1, prefix, 2)
    return torch.cat([prefix_rows, patches], dim=1)


def as_grid(pos: torch.Tensor, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    return pos[0, prefix:].reshape(*grid, -1)  # [f, t, D]


def test_unchanged_grid_is_identity():
    pos = torch.randn(1, 2 + 12 * 9, 8)
    assert torch.equal(resample_pos_embed(pos, (12, 9), (12, 9), num_prefix_tokens=2), pos)


def test_cut_keeps_the_centre_of_the_frequency_axis_exactly():
    out = as_grid(resample_pos_embed(coordinate_grid(8, 6), (8, 6), (4, 6)), (4, 6))
    assert out.shape == (4, 6, 2)
    assert torch.equal(out[..., 0], torch.tensor([2.0, 3, 4, 5])[:, None].expand(4, 6))  # rows 2..5 of 0..7
    assert torch.equal(out[..., 1], torch.arange(6.0)[None].expand(4, 6))  # time untouched


def test_cut_keeps_the_centre_of_the_time_axis_exactly():
    out = as_grid(resample_pos_embed(coordinate_grid(3, 10), (3, 10), (3, 5)), (3, 5))
    assert torch.equal(out[..., 1], torch.tensor([3.0, 4, 5, 6, 7])[None].expand(3, 5))  # 10 // 2 - 5 // 2 = 3
    assert torch.equal(out[..., 0], torch.arange(3.0)[:, None].expand(3, 5))


def test_growing_time_interpolates_along_time_only():
    out = as_grid(resample_pos_embed(coordinate_grid(4, 6), (4, 6), (4, 11)), (4, 11))
    assert out.shape == (4, 11, 2)
    # The frequency coordinate is constant along time, so it stays exactly so.
    torch.testing.assert_close(out[..., 0], torch.arange(4.0)[:, None].expand(4, 11))
    # Time is stretched: monotone, within the old range, and spanning more of it.
    t = out[0, :, 1]
    assert (t.diff() >= 0).all() and t[0] >= 0 and t[-1] <= 5 and len(t.unique()) > 6


def test_growing_frequency_interpolates_along_frequency_only():
    out = as_grid(resample_pos_embed(coordinate_grid(3, 5), (3, 5), (7, 5)), (7, 5))
    torch.testing.assert_close(out[..., 1], torch.arange(5.0)[None].expand(7, 5))
    f = out[:, 0, 0]
    assert (f.diff() >= 0).all() and f[0] >= 0 and f[-1] <= 2


def test_shrinking_by_interpolation_spans_the_whole_axis():
    out = as_grid(resample_pos_embed(coordinate_grid(8, 4), (8, 4), (4, 4), shrink="interpolate"), (4, 4))
    f = out[:, 0, 0]
    assert f[0] < 2 and f[-1] > 5  # a cut would keep 2..5


def test_prefix_tokens_are_untouched():
    pos = coordinate_grid(8, 6, prefix=2) + torch.randn(1, 2 + 48, 2)
    out = resample_pos_embed(pos, (8, 6), (12, 3), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 36, 2)
    assert torch.equal(out[:, :2], pos[:, :2])


def test_a_grid_that_does_not_match_the_embedding_is_refused():
    with pytest.raises(ValueError, match="48 patch positions"):
        resample_pos_embed(coordinate_grid(8, 6), (8, 5), (8, 6))


@pytest.fixture(scope="module")
def ast_vit():
    return build_vit("tiny", (128, 100), patch_size=16, patch_stride=10, dist_token=True)  # grid 12 x 9


def test_one_prefix_source_gets_a_distillation_token_copied_from_the_class_token(ast_vit):
    source = build_vit("tiny", (128, 96), patch_size=16)  # grid 8 x 6, class token only
    state = {k: v + torch.randn_like(v) for k, v in source.state_dict().items()}

    out = adapt_state_dict(state, ast_vit, "src", old_grid=(8, 6))

    assert torch.equal(out["reg_token"], state["cls_token"])
    assert torch.equal(out["pos_embed"][:, 1], state["pos_embed"][:, 0])
    assert torch.equal(out["pos_embed"][:, 0], state["pos_embed"][:, 0])
    expected = resample_pos_embed(state["pos_embed"], (8, 6), grid_of(ast_vit))[:, 1:]
    torch.testing.assert_close(out["pos_embed"][:, 2:], expected)
    ast_vit.load_state_dict(out)  # every tensor fits


def test_deit_distillation_token_is_kept(ast_vit):
    state = {k.replace("reg_token", "dist_token"): torch.randn_like(v) for k, v in ast_vit.state_dict().items()}
    out = adapt_state_dict(state, ast_vit, "deit")
    assert torch.equal(out["reg_token"], state["dist_token"])


def test_rgb_patch_embedding_is_averaged_into_one_channel():
    vit = build_vit("tiny", (32, 32))
    state = dict(vit.state_dict())
    rgb = torch.stack([torch.full((192, 16, 16), c) for c in (1.0, 2.0, 6.0)], dim=1)  # [D, 3, 16, 16]
    state["patch_embed.proj.weight"] = rgb

    out = adapt_state_dict(state, vit, "rgb")

    assert out["patch_embed.proj.weight"].shape == (192, 1, 16, 16)
    assert torch.equal(out["patch_embed.proj.weight"], torch.full((192, 1, 16, 16), 3.0))


def test_a_patch_kernel_of_another_size_is_an_error_naming_tensor_and_shapes(ast_vit):
    state = dict(build_vit("tiny", (128, 100), patch_size=16, dist_token=True).state_dict())
    state["patch_embed.proj.weight"] = torch.zeros(192, 1, 14, 14)
    shapes = r"patch_embed\.proj\.weight has shape \(192, 1, 14, 14\), the model expects \(192, 1, 16, 16\)"
    with pytest.raises(WeightShapeError, match=shapes):
        adapt_state_dict(state, ast_vit, "vit14", old_grid=(8, 6))


def test_another_width_is_an_error_naming_the_tensor(ast_vit):
    small = build_vit("small", (128, 100), patch_size=16, patch_stride=10, dist_token=True)
    with pytest.raises(WeightShapeError, match=r"small-src: tensor cls_token has shape \(1, 1, 384\)"):
        adapt_state_dict(small.state_dict(), ast_vit, "small-src")


def test_unknown_non_square_source_grid_is_an_error(ast_vit):
    state = build_vit("tiny", (128, 96)).state_dict()  # 8 x 6 patches, grid not given
    with pytest.raises(WeightShapeError, match="48 patch positions.*square"):
        adapt_state_dict(state, ast_vit, "src")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_attention_kernels_compute_the_same_function(dtype):
    vit = build_vit("tiny", (128, 96)).eval()
    x = torch.randn(2, 1, 128, 96)
    out = {}
    for kind in ("fused", "math"):
        set_attention(vit, kind, torch.device("cpu"), dtype)
        assert all(blk.attn.fused_attn == (kind == "fused") for blk in vit.blocks)
        with torch.no_grad(), autocast(torch.device("cpu"), dtype):
            out[kind] = vit.forward_features(x).float()
    tol = 1e-5 if dtype is None else 0.05  # bf16 rounds each kernel differently
    assert (out["fused"] - out["math"]).abs().max() < tol * out["math"].abs().max()


def test_auto_attention_is_unfused_only_for_reduced_precision_on_cpus():
    vit = build_vit("tiny", (32, 32))
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for device, dtype, fused in ((gpu, torch.bfloat16, True), (gpu, None, True), (cpu, None, True),
                                 (cpu, torch.bfloat16, False), (cpu, torch.float16, False)):
        set_attention(vit, "auto", device, dtype)
        assert all(blk.attn.fused_attn == fused for blk in vit.blocks), (device, dtype)
    with pytest.raises(ValueError, match="attention"):
        set_attention(vit, "flash", cpu, None)


@pytest.mark.parametrize("stride", [16, 10])  # pretraining's patches, and AST's overlapping ones
def test_patch_projection_is_the_convolution_it_replaces(stride):
    from asit.vit import PatchProjection

    torch.manual_seed(0)
    proj, x = PatchProjection(1, 24, kernel_size=16, stride=stride), torch.randn(3, 1, 128, 96)
    expected = torch.nn.functional.conv2d(x, proj.weight, proj.bias, stride=stride)
    assert proj(x).shape == expected.shape
    assert torch.allclose(proj(x), expected, atol=1e-5)
    # The gradient of the weights too: pretraining trains them through this path.
    proj(x).square().sum().backward()
    grad = proj.weight.grad.clone()
    proj.weight.grad = None
    torch.nn.functional.conv2d(x, proj.weight, proj.bias, stride=stride).square().sum().backward()
    assert torch.allclose(grad, proj.weight.grad, rtol=1e-4, atol=1e-3)


def test_reconstruction_head_is_a_transposed_convolution_back_to_pixels():
    from einops import rearrange

    from asit.heads import ReconstructionHead

    torch.manual_seed(0)
    head, tokens = ReconstructionHead(32, 16, (8, 6), hidden_dim=64, bottleneck_dim=16), torch.randn(2, 48, 32)
    grid = rearrange(head.mlp(tokens), "b (f t) c -> b c f t", f=8)
    expected = torch.nn.functional.conv_transpose2d(grid, head.to_pixels.weight, head.to_pixels.bias, stride=16)
    assert head(tokens).shape == (2, 1, 128, 96)
    assert torch.allclose(head(tokens), expected, atol=1e-5)
