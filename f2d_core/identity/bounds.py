"""Numbers entering the engine from outside (pasted vectors, identity files, reference photos):
finite, and within bounds that real data stays far inside.

A NaN, an infinity or a value such as 1e38 does not fail loudly on its own: the mapping network
turns it into NaN tokens, CLIP into NaN conditioning and the sampler into a black image. Each
bound is about 20x the largest value the real data shows, so only broken or forged inputs meet it:
- MSID features are LayerNorm outputs (per-tap std 0.04-1.4 in the official demo features,
  largest |x| 4.3, ../shared/faces/README.md; a LayerNorm over 384 values cannot exceed
  sqrt(383) = 19.6 before its affine scale);
- expression coefficients (Deep3DFaceRecon's, and the learned null_exp) are O(1): |x| < ~10,
  and the Expression node's strength (at most 2) extrapolates them at most 3x;
- S1*/S2* are word embeddings for CLIP, whose token embeddings are O(0.1) per element; the
  mapping network's outputs with the parity recipe's weights stay under 2.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import F2DError

FEATURE_LIMIT = 100.0
EXPRESSION_LIMIT = 100.0
TOKEN_LIMIT = 100.0


def require_finite(checks: Sequence[tuple[str, torch.Tensor | None, float, str]]) -> None:
    """checks: (what, values, limit, fix) each; F2DError for the first whose values hold a NaN, an
    infinity or |x| > limit, naming `what` and ending with `fix`. None values are skipped. One
    device sync for all of them (face_tokens runs this on the GPU)."""
    checks = [c for c in checks if c[1] is not None and c[1].numel()]
    if not checks:
        return
    # amax propagates NaN and inf, so one number per tensor answers all three questions
    peaks = [values.detach().abs().amax().float() for _, values, _, _ in checks]
    peaks = torch.stack([p.to(peaks[0].device) for p in peaks]).tolist()
    for (what, values, limit, fix), peak in zip(checks, peaks):
        if peak <= limit:
            continue
        values = values.detach()
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise F2DError(f"{what}: {bad} of {values.numel()} values are NaN or infinite. {fix}")
        raise F2DError(f"{what}: holds a value of {peak:.3g}, far outside the range of real data "
                       f"(|x| <= {limit:g}). {fix}")
