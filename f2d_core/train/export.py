"""Writing trained weights in the official layouts: mapping.pt / msid.pt (a plain state_dict
pickled by torch.save, the official keys in the official order, fp32) and the same tensors
as .safetensors. Both load unchanged with f2d_core.load_encoder and the nodes.

Mappings for other base families (SDXL) have no official file: they are written as one
.safetensors with the same keys, wider outputs and metadata that says what they are
(`save_family_mapping`, the F2D-SDXL format shared with the nodes' reader)."""
from __future__ import annotations

import os
from collections import OrderedDict

import torch


def official_state_dict(module: torch.nn.Module, kind: str) -> "OrderedDict[str, torch.Tensor]":
    """The module's weights in the key order of the official file, fp32 (integer buffers kept), on the CPU."""
    from ..weights.checkpoint import expected_shapes
    want = expected_shapes(kind)
    sd = module.state_dict()
    if set(sd) != set(want):
        raise ValueError(f"{type(module).__name__} does not have the official {kind} layout")
    return OrderedDict((k, (sd[k].detach().float() if sd[k].is_floating_point() else sd[k].detach()).cpu().clone()
                        .contiguous()) for k in want)


def save_official(module: torch.nn.Module, kind: str, out_dir: str, stem: str | None = None,
                  metadata: dict | None = None) -> tuple[str, str]:
    """Write OUT/<stem>.pt and OUT/<stem>.safetensors atomically; returns both paths."""
    from safetensors.torch import save_file
    sd = official_state_dict(module, kind)
    stem = stem or kind
    pt, st = os.path.join(out_dir, stem + ".pt"), os.path.join(out_dir, stem + ".safetensors")
    torch.save(sd, pt + ".tmp")
    os.replace(pt + ".tmp", pt)
    save_file(dict(sd), st + ".tmp", metadata={"f2d_kind": kind, **{k: str(v) for k, v in (metadata or {}).items()}})
    os.replace(st + ".tmp", st)
    return pt, st


def family_metadata(family, trigger: str, msid_sha256: str = "", training: dict | None = None) -> dict:
    """The metadata of an F2D mapping file for `family` (models/families.py): what it is, for which
    base model, the width of each text encoder's part, the trigger, the MSID it was trained with and
    the training settings (a JSON object)."""
    import json
    widths = ",".join(str(s.width) for s in family.streams)
    return {"f2d_kind": "mapping", "f2d_family": family.name, "f2d_widths": widths,
            "f2d_trigger": trigger, "f2d_msid_sha256": msid_sha256 or "",
            "f2d_training": json.dumps(training or {}, sort_keys=True)}


def save_family_mapping(module: torch.nn.Module, family, out_dir: str, stem: str | None = None, trigger: str = "f l",
                        msid_sha256: str = "", training: dict | None = None) -> str:
    """Write OUT/<stem>.safetensors atomically: the mapping's tensors under the official keys (safetensors
    stores them by name), fp32, each word `family.token_width` wide (SDXL: 768 + 1280 = 2048), with
    `family_metadata`. Written with safetensors directly (the format is shared with the node's reader)."""
    from safetensors.torch import save_file
    sd = official_state_dict(module, "mapping")
    rows = sd["i2t_first.fc_out.weight"].shape[0]
    if rows != family.token_width:
        raise ValueError(f"the mapping outputs {rows} values per word, {family.label} needs {family.token_width}")
    st = os.path.join(out_dir, (stem or "mapping") + ".safetensors")
    save_file(dict(sd), st + ".tmp", metadata=family_metadata(family, trigger, msid_sha256, training))
    os.replace(st + ".tmp", st)
    return st
