"""Writing trained weights in the official layouts: mapping.pt / msid.pt (a plain state_dict
pickled by torch.save, the official keys in the official order, fp32) and the same tensors
as .safetensors. Both load unchanged with f2d_core.load_encoder and the nodes."""
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
