import math

import pytest
import torch

from asit.losses import ASiTLoss, DistillationLoss, LossConfig, reconstruction_loss, swap_views
from asit.model import ModelConfig, build_network, ema_update

SMALL_HEADS = dict(arch="tiny", head_hidden_dim=64, head_bottleneck_dim=256, global_out_dim=512, local_out_dim=128)
INPUT = (128, 32)  # 8 x 2 tokens


def networks(**loss_switches):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL_HEADS)
    use = dict(use_rec=True, use_local=True, use_global=True) | loss_switches
    student = build_network(cfg, INPUT, teacher=False, **use)
    teacher = build_network(cfg, INPUT, teacher=True, **use)
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("rec_head.")})
    return cfg, student, teacher


def forward_losses(loss_cfg: LossConfig, cfg, student, teacher):
    torch.manual_seed(1)
    clean = torch.randn(4, 1, *INPUT)  # rows: [view 0 of clips a, b; view 1 of clips a, b]
    corrupted = clean.clone()
    pixel_mask = torch.zeros_like(clean, dtype=torch.bool)
    pixel_mask[..., :64, :] = True
    corrupted[pixel_mask] = 0
    select = torch.zeros(4, 16, dtype=torch.bool)
    select[:, :8] = True  # the tokens of the top 64 mel bins
    criterion = ASiTLoss(loss_cfg, cfg.global_out_dim, cfg.local_out_dim)
    with torch.no_grad():
        t = teacher(clean, select)
    s = student(corrupted, select)
    return criterion(s, t, clean, pixel_mask, teacher_temp=0.04), s, t, criterion


def test_distillation_losses_start_near_ln_k():
    cfg, student, teacher = networks()
    losses, *_ = forward_losses(LossConfig(), cfg, student, teacher)
    # The paper's 256-d bottleneck: prototypes are random unit vectors, nearly orthogonal to any
    # embedding, so at initialisation the student is close to uniform over K.
    assert losses["global"].item() == pytest.approx(math.log(cfg.global_out_dim), rel=0.05)
    assert losses["local"].item() == pytest.approx(math.log(cfg.local_out_dim), rel=0.05)


def test_teacher_gets_no_gradient_and_student_does():
    cfg, student, teacher = networks()
    teacher.requires_grad_(False)
    losses, *_ = forward_losses(LossConfig(), cfg, student, teacher)
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for n, p in student.backbone.named_parameters())


def test_ema_update_matches_its_formula():
    _, student, teacher = networks()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, momentum=0.9)
    s = student.state_dict()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * s[k])
    assert not any(k.startswith("rec_head") for k in teacher.state_dict())


def test_centre_update_matches_its_formula():
    loss = DistillationLoss(out_dim=6, student_temp=0.1, center_momentum=0.9)
    loss.center.fill_(0.5)
    teacher = torch.randn(10, 6)
    loss(torch.randn(10, 6), teacher, teacher_temp=0.04)
    torch.testing.assert_close(loss.center, 0.9 * 0.5 + 0.1 * teacher.mean(0, keepdim=True))


def test_distillation_is_cross_entropy_of_centred_sharpened_teacher():
    loss = DistillationLoss(out_dim=5, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.arange(5.0)[None] / 10)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    expected = -(torch.softmax((t - loss.center) / 0.04, -1) * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()
    torch.testing.assert_close(loss(s, t, teacher_temp=0.04)["loss"], expected)


def test_global_loss_pairs_views_across():
    x = torch.arange(4)[:, None]  # rows: view 0 of a, b; view 1 of a, b
    assert swap_views(x).flatten().tolist() == [2, 3, 0, 1]


def test_with_copies_each_copy_pairs_its_own_views_across():
    x = torch.arange(8).view(8, 1)  # copy 0: views 0, 0, 1, 1; copy 1: the same
    assert swap_views(x, copies=2).flatten().tolist() == [2, 3, 0, 1, 6, 7, 4, 5]


def test_reconstruction_loss_reads_corrupted_pixels_only():
    clean = torch.zeros(1, 1, 2, 2)
    rec = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    mask = torch.tensor([[[[True, False], [False, True]]]])
    assert reconstruction_loss(rec, clean, mask).item() == pytest.approx((1 + 7) / 2)
    assert reconstruction_loss(rec, clean, None).item() == pytest.approx(16 / 4)


@pytest.mark.parametrize("off", ["rec", "local", "global"])
def test_switching_a_loss_off_removes_its_term_and_its_head(off):
    switches = {"rec": "use_rec", "local": "use_local", "global": "use_global"}
    cfg, student, teacher = networks(**{switches[off]: False})
    loss_cfg = LossConfig(**{f"w_{off}": 0.0, "w_rec": 2.0 if off != "rec" else 0.0})
    losses, s, _, criterion = forward_losses(loss_cfg, cfg, student, teacher)
    head = {"rec": student.rec_head, "local": student.local_head, "global": student.global_head}[off]
    assert head is None and off not in losses and off not in s
    weights = {"rec": loss_cfg.w_rec, "local": loss_cfg.w_local, "global": loss_cfg.w_global}
    total = sum(weights[k] * losses[k] for k in ("rec", "local", "global") if k != off)
    torch.testing.assert_close(losses["loss"], total)


def test_all_losses_off_is_an_error():
    with pytest.raises(ValueError, match="every term"):
        LossConfig(w_rec=0, w_local=0, w_global=0)


def test_batchnorm_head_passes_on_what_differs_between_clips():
    # Embeddings that share a large common part, as a barely trained class token does: without batch
    # norm the head's outputs are almost one point for every clip (the teacher's centred targets are
    # then uniform); with it, the differences between clips reach the prototypes.
    from asit.heads import DINOHead

    torch.manual_seed(0)
    x = torch.randn(1, 192) * 10 + torch.randn(64, 192)
    spread = {}
    for bn in (False, True):
        head = DINOHead(192, 256, hidden_dim=128, bottleneck_dim=32, batchnorm=bn)
        z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
        spread[bn] = z.std(dim=0).norm().item()
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == bn
    assert spread[True] > 5 * spread[False]


def test_a_batchnorm_head_given_one_input_names_the_settings_to_change():
    from asit.heads import DINOHead

    head = DINOHead(192, 256, hidden_dim=128, bottleneck_dim=32, batchnorm=True)
    assert head(torch.randn(2, 192)).shape == (2, 256)
    with pytest.raises(ValueError, match="head_batchnorm=false"):
        head(torch.randn(1, 192))
    assert DINOHead(192, 256, hidden_dim=128, bottleneck_dim=32)(torch.randn(1, 192)).shape == (1, 256)
