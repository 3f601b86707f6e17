"""The encoder's precision: fp32 unless a faster dtype's tokens stay within the tolerance of fp32."""
import pytest
import torch

from f2d_core.identity.precision import cast_encoder, choose_dtype, probe_pixels, token_error


def test_the_cpu_keeps_fp32_by_default(encoder):
    assert choose_dtype(encoder, "cpu") == torch.float32


def test_a_candidate_within_the_tolerance_is_chosen(encoder):
    # bf16 moves the recipe model's tokens by a few 1e-2
    assert choose_dtype(encoder, "cpu", tol=0.5, candidates=(torch.bfloat16,)) == torch.bfloat16


def test_a_candidate_beyond_the_tolerance_falls_back_to_fp32(encoder):
    assert choose_dtype(encoder, "cpu", tol=1e-4, candidates=(torch.bfloat16,)) == torch.float32


@pytest.mark.parametrize("faster", [torch.bfloat16, torch.float32])
def test_timing_picks_the_faster_of_the_accepted_candidates_and_fp32(encoder, monkeypatch, faster):
    from f2d_core.identity import precision
    monkeypatch.setattr(precision, "_seconds", lambda enc, pixels: 1.0 if enc.dtype == faster else 2.0)
    assert choose_dtype(encoder, "cpu", tol=0.5, candidates=(torch.bfloat16,), time_it=True) == faster


def test_a_cast_copy_leaves_the_original_alone_and_still_returns_float32(encoder):
    bf16 = cast_encoder(encoder, torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and encoder.dtype == torch.float32
    assert cast_encoder(encoder, torch.float32) is encoder
    probe = probe_pixels(2)
    s1, s2 = bf16.face_tokens(bf16.identity_features(probe))
    assert s1.dtype == s2.dtype == torch.float32 and s1.shape == (2, 768)
    reference = torch.cat(encoder.face_tokens(encoder.identity_features(probe)), 1)
    assert 1e-4 < token_error(bf16, reference, probe) < 0.2  # really bf16, and only a little off


def test_the_probe_batch_is_fixed():
    assert torch.equal(probe_pixels(3), probe_pixels(3))
    assert probe_pixels(3).abs().max() <= 1
