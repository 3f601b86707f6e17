"""The training losses on tensors small enough to check by hand (paper Eq. 1, 3, 4, 7, 8)."""
import math

import numpy as np
import pytest
import torch

from f2d_core.train.losses import (ArcFaceHead, cgdr_loss, diffusion_loss, expression_keep_mask,
                                   masked_reconstruction_loss, reconstruction_loss)
from f2d_core.train.msid_eval import auc


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]  # (1, 1, h, w)


PRED = t([[0.5, 1.0], [2.0, 3.0]])
NOISE = t([[1.0, -1.0], [0.0, 2.0]])
CLASS = t([[9.0, 0.0], [9.0, 4.0]])
MASK = t([[1.0, 0.0], [1.0, 0.0]])  # left column is face


def test_cgdr_is_the_noise_on_the_face_and_the_class_prediction_elsewhere():
    # face (left column):       (1 - 0.5)² + (0 - 2)² = 0.25 + 4 = 4.25   (the 9s of CLASS do not count)
    # background (right column): (0 - 1)² + (4 - 3)² = 1 + 1 = 2        (the -1 and 2 of NOISE do not count)
    assert cgdr_loss(PRED, NOISE, CLASS, MASK).item() == pytest.approx((4.25 + 2) / 4)


def test_cgdr_with_a_soft_mask_weights_both_targets():
    m = torch.full_like(MASK, 0.25)
    face = ((NOISE - PRED) ** 2).sum().item()   # 0.25 + 4 + 4 + 1
    back = ((CLASS - PRED) ** 2).sum().item()   # 72.25 + 1 + 49 + 1
    assert cgdr_loss(PRED, NOISE, CLASS, m).item() == pytest.approx((0.25 * face + 0.75 * back) / 4)


def test_cgdr_with_a_binary_mask_is_the_mse_to_the_composite_target():
    g = torch.Generator().manual_seed(0)
    pred, noise, cls = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    composite = mask * noise + (1 - mask) * cls
    torch.testing.assert_close(cgdr_loss(pred, noise, cls, mask), ((composite - pred) ** 2).mean())


def test_no_gradient_flows_into_the_class_prediction():
    pred, cls = PRED.clone().requires_grad_(), CLASS.clone().requires_grad_()
    cgdr_loss(pred, NOISE, cls, MASK).backward()
    assert cls.grad is None and pred.grad is not None
    # d/dpred of mean((target - pred)²) = 2 (pred - target) / n, target = noise on the face, class elsewhere
    target = MASK * NOISE + (1 - MASK) * CLASS
    torch.testing.assert_close(pred.grad, 2 * (PRED - target) / 4)


def test_plain_reconstruction_eq1_and_masked_eq8():
    assert reconstruction_loss(PRED, NOISE).item() == pytest.approx((0.25 + 4 + 4 + 1) / 4)
    assert masked_reconstruction_loss(PRED, NOISE, MASK).item() == pytest.approx((0.25 + 4) / 4)
    assert diffusion_loss("masked", PRED, NOISE, mask=MASK).item() == pytest.approx((0.25 + 4) / 4)
    assert diffusion_loss("reconstruction", PRED, NOISE).item() == pytest.approx(2.3125)


def test_a_mask_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="latent resolution"):
        cgdr_loss(PRED, NOISE, CLASS, torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown loss"):
        diffusion_loss("l1", PRED, NOISE)


def test_expression_dropout_rate_over_many_draws():
    g = torch.Generator().manual_seed(1)
    keep = expression_keep_mask(200_000, 0.2, g)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert abs((1 - keep.mean().item()) - 0.2) < 0.005  # ±0.005 is ~5.6 standard errors
    assert expression_keep_mask(1000, 0.0, g).min() == 1 and expression_keep_mask(1000, 1.0, g).max() == 0
    with pytest.raises(ValueError):
        expression_keep_mask(4, 1.5, g)


def test_dropped_samples_get_null_exp_in_the_mapping():
    from f2d_core.models.mapping import MappingNetwork
    torch.manual_seed(0)
    m = MappingNetwork().eval()
    with torch.no_grad():
        m.null_exp.normal_()
    feats, exp = torch.randn(2, 1536), torch.randn(2, 64)
    keep = torch.tensor([0.0, 1.0])
    s1, s2 = m(feats, exp, keep)
    n1, n2 = m(feats)                       # null_exp for both
    e1, e2 = m(feats, exp)                  # the expression for both
    torch.testing.assert_close(s1[0], n1[0])
    torch.testing.assert_close(s2[1], e2[1])
    assert not torch.allclose(s1[1], n1[1])


def test_arcface_adds_the_angular_margin_to_the_target_class_only():
    head = ArcFaceHead(2, 2, scale=64.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))  # class directions e0, e1 (norms ignored)
    theta = 0.6
    f = torch.tensor([[math.cos(theta), math.sin(theta)]]) * 7.0
    logits = head.logits(f, torch.tensor([0]))
    torch.testing.assert_close(logits, torch.tensor([[64 * math.cos(theta + 0.5), 64 * math.sin(theta)]]))
    loss = head(f, torch.tensor([0]))
    assert loss.item() == pytest.approx(-torch.log_softmax(logits, 1)[0, 0].item())


def test_arcface_past_pi_minus_m_uses_the_linear_fallback():
    head = ArcFaceHead(2, 2, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    theta = math.pi - 0.2  # θ + m would pass π, where cos(θ + m) turns back up
    f = torch.tensor([[math.cos(theta), math.sin(theta)]])
    want = 64 * (math.cos(theta) - math.sin(0.5) * 0.5)
    assert head.logits(f, torch.tensor([0]))[0, 0].item() == pytest.approx(want, rel=1e-5)


def test_auc_counts_pairs_and_ties():
    assert auc([0.9, 0.4], [0.5, 0.1]) == pytest.approx(0.75)   # 3 of 4 pairs ordered right
    assert auc([1, 2], [0, 0]) == 1.0 and auc([0], [1]) == 0.0
    assert auc([0.5, 0.5], [0.5]) == 0.5
    rng = np.random.default_rng(0)
    assert 0.45 < auc(rng.normal(size=4000), rng.normal(size=4000)) < 0.55
