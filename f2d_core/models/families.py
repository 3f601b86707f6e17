"""Base model families as data: what F2D needs to know of a Stable Diffusion text side.

Like ComfyUI's `supported_models.py`, a family is a small record over one shared pipeline,
never a copied module. F2D's identity is two word embeddings per text encoder; a family
says which encoders there are (ComfyUI's token-list keys `l`, `g`), their widths, which hidden
layer conditions the UNet, which one gives the pooled output, and the training resolution.

SD1.x: CLIP ViT-L/14 (768), last layer after the final LayerNorm (paper, official code).
SDXL: CLIP ViT-L/14 (768) and OpenCLIP ViT-bigG/14 (1280), both the penultimate layer without
the final LayerNorm, concatenated to 2048 per token; bigG's projected pooled output and the
size/crop time ids (SDXL paper §2.2; ComfyUI `sdxl_clip.py`, diffusers `encode_prompt`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextStream:
    key: str                 # ComfyUI token-list key and checkpoint name: "l" (clip_l) or "g" (clip_g)
    width: int               # token embedding width
    layers: int              # transformer blocks
    heads: int
    intermediate: int        # MLP width
    hidden_act: str          # transformers CLIPTextConfig.hidden_act
    hidden_layer: int        # which hidden state conditions the UNet: -1 last, -2 penultimate
    final_norm: bool         # whether the final LayerNorm is applied to that hidden state
    pad_token: int           # ComfyUI pads clip_l with EOS (49407), clip_g with 0
    projection_dim: int = 0  # text_projection width (pooled output), 0 when the family does not use it

    def clip_config(self) -> dict:
        """transformers CLIPTextConfig keyword arguments for this encoder at full size."""
        return dict(vocab_size=49408, hidden_size=self.width, intermediate_size=self.intermediate,
                    num_hidden_layers=self.layers, num_attention_heads=self.heads, max_position_embeddings=77,
                    hidden_act=self.hidden_act, layer_norm_eps=1e-5, projection_dim=self.projection_dim or self.width)


@dataclass(frozen=True)
class Family:
    name: str                          # "sd1", "sdxl": the value written into F2D files
    label: str                         # for messages: "SD1.x", "SDXL"
    streams: tuple[TextStream, ...]    # in the order their features are concatenated
    pooled: str | None                 # stream whose (projected) pooled output the UNet takes, if any
    resolution: int                    # native training resolution
    time_ids: bool                     # SDXL's original/crop/target size conditioning

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.streams)

    @property
    def token_width(self) -> int:
        """Width of one identity word as the mapping network outputs it: all streams side by side."""
        return sum(s.width for s in self.streams)

    def stream(self, key: str) -> TextStream:
        for s in self.streams:
            if s.key == key:
                return s
        raise KeyError(f"{self.label} has no {key!r} text encoder (it has {', '.join(self.keys)})")

    def split(self, word):
        """One mapping output (..., token_width) -> {key: (..., width)} per stream, in order."""
        out, start = {}, 0
        for s in self.streams:
            out[s.key] = word[..., start:start + s.width]
            start += s.width
        return out


CLIP_L = TextStream("l", 768, 12, 12, 3072, "quick_gelu", hidden_layer=-1, final_norm=True, pad_token=49407)
# SDXL's clip_l: the same ViT-L/14, read at the penultimate layer
CLIP_L_SDXL = TextStream("l", 768, 12, 12, 3072, "quick_gelu", hidden_layer=-2, final_norm=False, pad_token=49407)
CLIP_G = TextStream("g", 1280, 32, 20, 5120, "gelu", hidden_layer=-2, final_norm=False, pad_token=0,
                    projection_dim=1280)

SD1 = Family("sd1", "SD1.x", (CLIP_L,), pooled=None, resolution=512, time_ids=False)
SDXL = Family("sdxl", "SDXL", (CLIP_L_SDXL, CLIP_G), pooled="g", resolution=1024, time_ids=True)

FAMILIES = {f.name: f for f in (SD1, SDXL)}


def family(name: str) -> Family:
    try:
        return FAMILIES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown base model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_for_keys(keys) -> Family | None:
    """The family whose text encoders are exactly `keys` (ComfyUI token-list keys), if any."""
    keys = set(keys)
    for f in FAMILIES.values():
        if set(f.keys) == keys:
            return f
    return None
