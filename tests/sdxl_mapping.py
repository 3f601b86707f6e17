"""An F2D-SDXL mapping file in the agreed format, written here with safetensors directly (not with
the trainer's exporter): MappingNetwork(token_dim=2048)'s keys in the official order, fp32, and the
metadata f2d_kind, f2d_family, f2d_widths, f2d_trigger, f2d_msid_sha256, f2d_training.
Random weights (seeded): a stand-in until a trained F2D-SDXL mapping exists."""
from __future__ import annotations

import json
import math
from collections import OrderedDict

import torch
from safetensors.torch import save_file

from f2d_core.models.mapping import MappingNetwork

METADATA = {"f2d_kind": "mapping", "f2d_family": "sdxl", "f2d_widths": "768,1280", "f2d_trigger": "f l",
            "f2d_msid_sha256": "",
            "f2d_training": json.dumps({"base": "random weights for tests", "resolution": 1024})}


def sdxl_mapping_state_dict(seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Seeded random weights (N(0, 1/fan_in), biases small, null_exp ~ N(0, 1)) in state_dict order."""
    with torch.device("meta"):
        keys = MappingNetwork(token_dim=2048).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in keys.items():
        scale = 1.0 if k == "null_exp" else (1 / math.sqrt(v.shape[1]) if v.ndim == 2 else 0.02)
        out[k] = torch.randn(v.shape, generator=g) * scale
    return out


def write_sdxl_mapping(path, seed: int = 0, metadata: dict | None = None, state_dict: dict | None = None):
    sd = state_dict if state_dict is not None else sdxl_mapping_state_dict(seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={**METADATA, **(metadata or {})})
    return path
