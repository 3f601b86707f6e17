"""F2D-SDXL mapping files for the tests: seeded random weights (a stand-in until a trained F2D-SDXL
mapping exists) written by the trainer's own exporter (`train.export.save_family_mapping`), so the
nodes' reader is tested on what `python -m f2d_core.train mapping --base sdxl` writes. Files with
other metadata or weights (to test refusals) are written with safetensors directly."""
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
    from pathlib import Path
    if metadata is None and state_dict is None:
        from f2d_core.models.families import SDXL
        from f2d_core.train.export import save_family_mapping
        net = MappingNetwork(token_dim=SDXL.token_width)
        net.load_state_dict(sdxl_mapping_state_dict(seed))
        path = Path(path)
        return save_family_mapping(net, SDXL, str(path.parent), path.name.removesuffix(".safetensors"),
                                   training=json.loads(METADATA["f2d_training"]))
    sd = state_dict if state_dict is not None else sdxl_mapping_state_dict(seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={**METADATA, **(metadata or {})})
    return path
