"""F2DEncoder: the MSID encoder and the mapping network loaded from the official files (or an
F2D-SDXL mapping: the encoder then knows its base model family and gives SDXL-wide words)."""
from __future__ import annotations

import os
from functools import cached_property

import torch
from torch import nn

from ..models.families import SD1, Family
from ..weights.checkpoint import load_checkpoint, load_mapping
from .bounds import EXPRESSION_LIMIT, FEATURE_LIMIT, TOKEN_LIMIT, require_finite
from ..models.mapping import MappingNetwork
from ..weights.files import file_sha256
from ..models.msid import MSIDEncoder


def _build(module_cls, state_dict, device, dtype, **kwargs) -> nn.Module:
    # built on the meta device and filled by assignment: no wasted random init
    with torch.device("meta"):
        module = module_cls(**kwargs)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


class F2DEncoder(nn.Module):
    """Aligned faces -> MSID identity features -> the two identity word embeddings S1*, S2*.

    `family`: the base model whose text encoders the mapping network's words are for (SD1.x: 768
    values per word; SDXL: 768 + 1280, split per encoder by `family.split`)."""

    def __init__(self, msid: MSIDEncoder, mapping: MappingNetwork, msid_path: str = "", mapping_path: str = "",
                 family: Family = SD1, mapping_metadata: dict | None = None):
        super().__init__()
        if mapping.token_dim != family.token_width:
            raise ValueError(f"a mapping network with {mapping.token_dim}-value words is not {family.label}'s "
                             f"({family.token_width})")
        self.msid = msid
        self.mapping = mapping
        self.msid_path = os.fspath(msid_path)
        self.mapping_path = os.fspath(mapping_path)
        self.family = family
        self.mapping_metadata = dict(mapping_metadata or {})  # f2d_trigger, f2d_training, ... ({} for mapping.pt)

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
        """(B, 1536) features [+ (B, 64) expression, (B,) mask] -> (S1*, S2*), each (B, family.token_width)
        float32 (SD1.x: 768)."""
        features = torch.as_tensor(features)
        expression = None if expression is None else torch.as_tensor(expression)
        require_finite([  # before the cast: fp16 would turn 1e38 into inf and hide what was given
            ("identity features", features, FEATURE_LIMIT,
             "They come from Encode Face or a saved face: encode the photos again (if that repeats, download "
             "msid.pt again or choose precision fp32 in the loader)."),
            ("expression", expression, EXPRESSION_LIMIT,
             "Give 64 expression coefficients of Deep3DFaceRecon's scale (|x| up to about 10), or lower the "
             "Expression node's strength.")])
        cast = dict(device=self.device, dtype=self.dtype)
        expression = None if expression is None else expression.to(**cast)
        mask = None if mask is None else torch.as_tensor(mask).to(**cast)
        s1, s2 = self.mapping(features.to(**cast), expression, mask)
        s1, s2 = s1.float(), s2.float()
        fix = (f"Its inputs were in range, so {os.path.basename(self.mapping_path) or 'the mapping file'} is damaged "
               "or the precision overflowed: download mapping.pt again, or choose precision fp32 in the loader.")
        require_finite([("identity token S1* from the mapping network", s1, TOKEN_LIMIT, fix),
                        ("identity token S2* from the mapping network", s2, TOKEN_LIMIT, fix)])
        return s1, s2

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, expression=None, mask=None):
        """Pixels -> (features (B, 1536), S1*, S2* (B, family.token_width)), float32: both steps in one call."""
        features = self.identity_features(pixels)
        return (features, *self.face_tokens(features, expression, mask))


def load_encoder(msid_path, mapping_path, device="cpu", dtype=torch.float32) -> F2DEncoder:
    """Load the official msid.pt / mapping.pt (or their .safetensors), or an F2D-SDXL mapping, into an
    F2DEncoder in eval mode; its family comes from the mapping file."""
    msid = _build(MSIDEncoder, load_checkpoint(msid_path, "msid"), device, dtype)
    mapping_file = load_mapping(mapping_path)
    mapping = _build(MappingNetwork, mapping_file.state_dict, device, dtype,
                     token_dim=mapping_file.family.token_width)
    return F2DEncoder(msid, mapping, msid_path, mapping_path, mapping_file.family, mapping_file.metadata)
