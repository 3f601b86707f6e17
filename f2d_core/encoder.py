"""F2DEncoder: the MSID encoder and the mapping network loaded from the official files."""
from __future__ import annotations

import hashlib
import os
from functools import cached_property

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .mapping import MappingNetwork
from .msid import MSIDEncoder


def _build(module_cls, state_dict, device, dtype) -> nn.Module:
    # built on the meta device and filled by assignment: no wasted random init
    with torch.device("meta"):
        module = module_cls()
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class F2DEncoder(nn.Module):
    """Aligned faces -> MSID identity features -> the two identity word embeddings S1*, S2*."""

    def __init__(self, msid: MSIDEncoder, mapping: MappingNetwork, msid_path: str = "", mapping_path: str = ""):
        super().__init__()
        self.msid = msid
        self.mapping = mapping
        self.msid_path = os.fspath(msid_path)
        self.mapping_path = os.fspath(mapping_path)

    @property
    def device(self) -> torch.device:
        return self.mapping.null_exp.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mapping.null_exp.dtype

    @property
    def null_exp(self) -> torch.Tensor:
        """The learned neutral expression vector (64,), float32."""
        return self.mapping.null_exp.detach().float()

    @cached_property
    def model_hashes(self) -> dict[str, str]:
        """sha256 of the weight files, computed on first use (it reads ~130 MB)."""
        return {os.path.basename(p): file_sha256(p) for p in (self.msid_path, self.mapping_path) if p}

    @torch.inference_mode()
    def identity_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) RGB in [-1, 1] -> (B, 1536) float32 MSID features."""
        return self.msid(pixels.to(self.device, self.dtype)).float()

    @torch.inference_mode()
    def face_tokens(self, features: torch.Tensor, expression=None, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1536) features [+ (B, 64) expression, (B,) mask] -> (S1*, S2*), each (B, 768) float32."""
        cast = dict(device=self.device, dtype=self.dtype)
        expression = None if expression is None else torch.as_tensor(expression).to(**cast)
        mask = None if mask is None else torch.as_tensor(mask).to(**cast)
        s1, s2 = self.mapping(features.to(**cast), expression, mask)
        return s1.float(), s2.float()


def load_encoder(msid_path, mapping_path, device="cpu", dtype=torch.float32) -> F2DEncoder:
    """Load the official msid.pt / mapping.pt (or their .safetensors) into an F2DEncoder in eval mode."""
    msid = _build(MSIDEncoder, load_checkpoint(msid_path, "msid"), device, dtype)
    mapping = _build(MappingNetwork, load_checkpoint(mapping_path, "mapping"), device, dtype)
    return F2DEncoder(msid, mapping, msid_path, mapping_path)
