"""Host-independent helpers on text-encoder token lists and CONDITIONING.

CONDITIONING is ComfyUI's list of `[cond (1, 77*k, width), {"pooled_output": ..., ...}]` pairs
(width 768 for SD1.x, 2048 for SDXL).
"""
from __future__ import annotations

import torch

from ..errors import F2DError
from ..models.families import Family, family_for_keys

# Which model family a CLIP is, from the keys of its token lists.
_FAMILIES = {
    frozenset({"l"}): "SD1.x",
    frozenset({"g", "l"}): "SDXL",
    frozenset({"h"}): "SD2.x",
    frozenset({"g", "l", "t5xxl"}): "SD3",
    frozenset({"l", "t5xxl"}): "Flux",
}


def clip_family(token_keys) -> str:
    keys = frozenset(token_keys)
    return _FAMILIES.get(keys, f"an unknown text encoder (token lists {sorted(keys)})")


def text_family(token_keys) -> Family:
    """The base model family (SD1.x, SDXL) of a CLIP from the keys of its token lists; anything
    Face2Diffusion has no mapping for gets a plain message."""
    found = family_for_keys(token_keys)
    if found is None:
        raise F2DError(
            f"Face2Diffusion works with SD1.x checkpoints (Stable Diffusion 1.4/1.5 and their fine-tunes) and "
            f"SDXL-family ones (SDXL, SSD-1B, Vega, Pony, Illustrious), but this CLIP belongs to "
            f"{clip_family(token_keys)}. Load one of those checkpoints and connect its CLIP output.")
    return found


def blend_conditioning(identity, reference, strength: float):
    """strength * identity + (1 - strength) * reference, entry by entry (cond and pooled_output);
    the other keys of each entry come from `identity`. Both must have the same structure."""
    s = float(strength)
    if len(identity) != len(reference):
        raise F2DError("cannot blend CONDITIONING with different numbers of entries")
    out = []
    for (c_id, d_id), (c_ref, d_ref) in zip(identity, reference):
        if c_id.shape != c_ref.shape:
            raise F2DError(f"cannot blend conditionings of shapes {tuple(c_id.shape)} and {tuple(c_ref.shape)}")
        d = dict(d_id)
        if torch.is_tensor(d_id.get("pooled_output")) and torch.is_tensor(d_ref.get("pooled_output")):
            d["pooled_output"] = torch.lerp(d_ref["pooled_output"], d_id["pooled_output"], s)
        out.append([torch.lerp(c_ref, c_id, s), d])
    return out
