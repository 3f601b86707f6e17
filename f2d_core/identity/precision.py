"""The encoder's precision: the fastest dtype whose tokens stay within a tolerance of fp32.

The official code runs MSID and the mapping network in fp32, and so do we by default.
On a GPU, fp16 or bf16 is several times faster; `choose_dtype` checks each candidate's
tokens against fp32 on a fixed probe batch and returns the fastest one within `tol`
(fp32 when none is). On the CPU it returns fp32 unless candidates are given: fp16 matmuls
are slow on CPUs, and bf16 moves the tokens by a few 1e-2, more than the default tol.
"""
from __future__ import annotations

import time

import torch

from .encoder import F2DEncoder, _build
from ..models.mapping import MappingNetwork
from ..models.msid import MSIDEncoder

DEFAULT_TOL = 1e-2
CUDA_CANDIDATES = (torch.float16, torch.bfloat16)


def probe_pixels(batch: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed, deterministic batch of face-sized inputs in [-1, 1]: smooth shapes plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 112), torch.linspace(-1, 1, 112), indexing="ij")
    base = torch.stack([xx, yy, 0.5 - (xx ** 2 + yy ** 2)])  # (3, 112, 112)
    gains = torch.rand(batch, 3, 1, 1, generator=g) * 1.5 - 0.75
    noise = torch.randn(batch, 3, 112, 112, generator=g) * 0.15
    return (base * gains + noise).clamp(-1, 1)


def cast_encoder(encoder: F2DEncoder, dtype: torch.dtype, device=None) -> F2DEncoder:
    """A copy of `encoder` with its weights in `dtype` (on `device`, default the encoder's).
    Inputs are cast on the way in and features/tokens come back as float32, as always."""
    device = encoder.device if device is None else torch.device(device)
    if dtype == encoder.dtype and device == encoder.device:
        return encoder
    msid = _build(MSIDEncoder, encoder.msid.state_dict(), device, dtype)
    mapping = _build(MappingNetwork, encoder.mapping.state_dict(), device, dtype)
    return F2DEncoder(msid, mapping, encoder.msid_path, encoder.mapping_path)


def token_error(encoder: F2DEncoder, reference: torch.Tensor, pixels: torch.Tensor) -> float:
    """max |[S1*, S2*] - reference| over a batch of pixels."""
    s1, s2 = encoder.face_tokens(encoder.identity_features(pixels))
    return float((torch.cat([s1, s2], 1).cpu() - reference).abs().max())


def _seconds(encoder: F2DEncoder, pixels: torch.Tensor, repeat: int = 5) -> float:
    x = pixels.to(encoder.device, encoder.dtype)
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    encoder.face_tokens(encoder.identity_features(x))  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        encoder.face_tokens(encoder.identity_features(x))
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def choose_dtype(encoder_fp32: F2DEncoder, device=None, tol: float = DEFAULT_TOL, candidates=None,
                 time_it: bool | None = None) -> torch.dtype:
    """The fastest dtype for `encoder_fp32` on `device` whose tokens are within `tol` of fp32's.

    candidates: dtypes to try (default: fp16 then bf16 on CUDA, none on the CPU).
    time_it: time the accepted candidates against fp32 and return the fastest (default on
    CUDA); otherwise the first accepted candidate is returned.
    """
    device = torch.device(device) if device is not None else encoder_fp32.device
    if candidates is None:
        candidates = CUDA_CANDIDATES if device.type == "cuda" else ()
    if time_it is None:
        time_it = device.type == "cuda"
    reference_encoder = cast_encoder(encoder_fp32, torch.float32, device)
    probe = probe_pixels()
    s1, s2 = reference_encoder.face_tokens(reference_encoder.identity_features(probe))
    reference = torch.cat([s1, s2], 1).cpu()
    accepted = []
    for dtype in candidates:
        encoder = cast_encoder(encoder_fp32, dtype, device)
        if token_error(encoder, reference, probe) <= tol:
            if not time_it:
                return dtype
            accepted.append((_seconds(encoder, probe), dtype))
        del encoder
    if not accepted:
        return torch.float32
    accepted.append((_seconds(reference_encoder, probe), torch.float32))
    return min(accepted, key=lambda t: t[0])[1]
