"""MSID: the multi-scale identity encoder of Face2Diffusion (paper §3.2).

A ViT-S/8 on 112x112 ArcFace-aligned faces. The CLS token is tapped after blocks
3, 6, 9 and 12 (0-based 2, 5, 8, 11); each tap goes through its own BatchNorm1d
(eval statistics) + LayerNorm neck and the four are concatenated to 1536 dims.

Attribute names are timm's VisionTransformer names, i.e. the keys of the official
`msid.pt`, so `load_state_dict(strict=True)` needs no remapping and no timm.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import F2DError

IMAGE_SIZE = 112
PATCH_SIZE = 8
WIDTH = 384
DEPTH = 12
HEADS = 12
MLP_HIDDEN = 1536
TAPS = (2, 5, 8, 11)
FEATURE_DIM = WIDTH * len(TAPS)  # 1536


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, WIDTH, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, 196, 384), row-major (h, w)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        B, N, C = x.shape
        # qkv rows are [q; k; v], head h owns rows h*32 .. h*32+31 of each
        q, k, v = self.qkv(x).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    def forward_first(self, x):
        """forward(x)[:, :1]: only the first (CLS) token attends; keys and values still come from all."""
        B, N, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:C], b[:C]).reshape(B, 1, HEADS, C // HEADS).transpose(1, 2)
        k, v = F.linear(x, w[C:], b[C:]).reshape(B, N, 2, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, 1, C))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, MLP_HIDDEN)
        self.fc2 = nn.Linear(MLP_HIDDEN, WIDTH)

    def forward(self, x):
        h = self.fc1(x)
        # The exact (erf) GELU, as timm's nn.GELU(). In place where autograd does not need h: a
        # second (B*197, 1536) buffer per block can make the allocator hand memory back to the OS and
        # fault it in again: 2-17% of an encode at batch 8 on 2 cores, by allocator state (RESULTS.md).
        h = F.gelu(h) if torch.is_grad_enabled() and h.requires_grad else torch.ops.aten.gelu_(h)
        return self.fc2(h)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.mlp = Mlp()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_cls(self, x):
        """forward(x)[:, :1], computed for the CLS row alone (about 1/6 of the block's work)."""
        cls = x[:, :1] + self.attn.forward_first(self.norm1(x))
        return cls + self.mlp(self.norm2(cls))


class MSIDEncoder(nn.Module):
    """(B, 3, 112, 112) RGB in [-1, 1] -> (B, 1536) identity features."""

    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1, WIDTH))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        # timm's final norm: in msid.pt, so kept for strict loading, but F2D never applies it
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
        # per-tap necks; LayerNorm here has PyTorch's default eps 1e-5, not the ViT's 1e-6
        self.norms = nn.ModuleDict({f"layer_{t}": nn.Sequential(nn.BatchNorm1d(WIDTH), nn.LayerNorm(WIDTH))
                                    for t in TAPS})

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"MSID expects aligned faces shaped (B, 3, 112, 112), got {tuple(pixels.shape)}")
        x = self.tokens(pixels)
        taps = []
        # blocks after the last tap cannot matter, and of the last tapped block only the CLS row does
        for i, block in enumerate(self.blocks[: TAPS[-1] + 1]):
            x = block(x) if i < TAPS[-1] else block.forward_cls(x)
            if i in TAPS:
                taps.append(self.norms[f"layer_{i}"](x[:, 0]))
        return torch.cat(taps, dim=1)


def to_pixels(aligned) -> torch.Tensor:
    """Aligned uint8 face(s) (112,112,3) or (B,112,112,3) -> (B, 3, 112, 112) float32 in [-1, 1], RGB."""
    a = np.asarray(aligned)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or a.dtype != np.uint8:
        raise F2DError(f"expected aligned uint8 faces shaped (112, 112, 3) or (B, 112, 112, 3), got "
                       f"{a.dtype} {a.shape}. Align the face first (align_face) or pass 112x112 RGB crops.")
    # same float64 arithmetic as the official preprocessing, then float32
    x = (a.astype(np.float64) / 255.0 - 0.5) / 0.5
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
