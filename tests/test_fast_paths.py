"""The shortcuts taken for speed compute what the plain forms compute (fp32, atol 1e-5)."""
import numpy as np
import torch
import torch.nn.functional as F

from f2d_core.faces.images import to_rgb_uint8
from f2d_core.models.msid import TAPS, Block, Mlp, MSIDEncoder


def probe_pixels(batch: int, seed: int = 0) -> torch.Tensor:
    """Face-sized inputs in [-1, 1]."""
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_the_last_tapped_block_computes_only_the_cls_row_but_the_same_value():
    torch.manual_seed(0)
    block = Block().eval()
    x = torch.randn(3, 197, 384)
    with torch.inference_mode():
        close(block.forward_cls(x), block(x)[:, :1])


def test_msid_equals_running_every_block_in_full():
    torch.manual_seed(0)
    msid = MSIDEncoder().eval()
    for norm in msid.norms.values():
        norm[0].running_var.uniform_(0.5, 1.5)
    pixels = probe_pixels(2)
    with torch.inference_mode():
        x, taps = msid.tokens(pixels), []
        for i, block in enumerate(msid.blocks):
            x = block(x)
            if i in TAPS:
                taps.append(msid.norms[f"layer_{i}"](x[:, 0]))
        close(msid(pixels), torch.cat(taps, 1))


def test_encode_is_features_then_tokens_in_one_call(encoder, parity):
    E, _ = parity
    features, s1, s2 = encoder.encode(E["input.pixel_values"])
    close(features, encoder.identity_features(E["input.pixel_values"]))
    t1, t2 = encoder.face_tokens(features)
    close(s1, t1)
    close(s2, t2)


def test_the_in_place_gelu_computes_what_f_gelu_computes_and_leaves_the_input_alone():
    torch.manual_seed(0)
    mlp = Mlp()
    x = torch.randn(2, 197, 384)
    before = x.clone()
    with torch.no_grad():
        want = mlp.fc2(F.gelu(mlp.fc1(x)))  # timm's Mlp: fc1, nn.GELU() (erf), fc2
    with torch.inference_mode():
        close(mlp(x), want)
    with torch.no_grad():
        close(mlp(x), want)
    close(mlp.requires_grad_(False)(x), want)  # grad mode on, but nothing to differentiate
    assert torch.equal(x, before)


def test_with_autograd_the_gelu_is_out_of_place_and_its_gradient_is_f_gelus():
    torch.manual_seed(0)
    mlp = Mlp()
    x = torch.randn(2, 5, 384, requires_grad=True)
    mlp(x).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    mlp.fc2(F.gelu(mlp.fc1(x))).square().sum().backward()
    close(got, x.grad)


def test_gradients_still_flow_through_msid():
    torch.manual_seed(0)
    model = MSIDEncoder().eval()
    pixels = probe_pixels(1).requires_grad_()
    model(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_float_images_convert_exactly_as_clip_scale_round():
    rng = np.random.default_rng(0)
    img = rng.random((64, 48, 3), dtype=np.float32) * 1.4 - 0.2  # some values outside 0..1
    img[0, :4, 0] = np.array([0.5, 1.5, 2.5, 254.5], np.float32) / 255  # ties round to even
    want = np.rint(np.clip(img, 0, 1) * np.float32(255)).astype(np.uint8)
    assert np.array_equal(to_rgb_uint8(img), want)
    assert np.array_equal(to_rgb_uint8(torch.from_numpy(img)[None]), want)
    assert np.array_equal(to_rgb_uint8(img.astype(np.float64)), want)
