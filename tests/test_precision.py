"""The encoder's precision: fp32 (the official code's) unless fp16/bf16 is asked for explicitly."""
import torch

from f2d_core import load_encoder


def pixels(batch=2):
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_the_encoder_loads_in_fp32_by_default(encoder):
    assert encoder.dtype == torch.float32
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}


def test_bf16_is_an_explicit_choice_whose_outputs_are_still_float32_and_close(encoder, official_weights):
    bf16 = load_encoder(official_weights["msid"], official_weights["mapping"], dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and {p.dtype for p in bf16.msid.parameters()} == {torch.bfloat16}
    features, s1, s2 = bf16.encode(pixels())
    assert features.dtype == s1.dtype == s2.dtype == torch.float32 and s1.shape == (2, 768)
    _, r1, r2 = encoder.encode(pixels())
    error = float((torch.cat([s1, s2], 1) - torch.cat([r1, r2], 1)).abs().max())
    assert 1e-4 < error < 0.2  # really bf16, and only a little off
