"""The expression input of the mapping network during training (paper §3.3, Eq. 4).

Glue to the engine's expression regressor (`f2d_core.identity.expression`, Deep3DFaceRecon's
ResNet-50, frozen): Deep3DFaceRecon crops -> the 64 expression coefficients, raw (the
paper does not say how they were normalised). Without a regressor every sample uses the
learned null_exp, i.e. expression dropout with probability 1.
"""
from __future__ import annotations

from typing import Protocol

import torch


class ExpressionEncoder(Protocol):
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) uint8 Deep3DFaceRecon crops -> (B, 64) float32 expression coefficients."""


class RegressorExpression:
    """ExpressionEncoder on top of f2d_core.identity.expression's ExpressionRegressor."""

    def __init__(self, regressor):
        from ..models.deep3d import EXP_SLICE
        self.regressor = regressor
        self.slice = EXP_SLICE

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        hwc = crops.permute(0, 2, 3, 1).cpu().numpy()  # the regressor's own preprocessing takes HWC uint8
        return self.regressor.predict(hwc)[:, self.slice].float().clone()


def load_expression(path, device="cpu") -> ExpressionEncoder:
    """Deep3DFaceRecon's epoch_20.pth (or its .safetensors), as the engine loads it."""
    from ..identity.expression import load_expression_model
    return RegressorExpression(load_expression_model(path, device=device))
