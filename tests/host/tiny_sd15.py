"""A random SD1.5-shaped checkpoint for host tests, generated at test time (never committed).

ComfyUI detects it as SD15 and runs it like any SD1.5 model; its images are noise.
- UNet: SD1.5's blocks at a single resolution level (320 channels, one res block and one
  transformer per block, the middle block kept): 26 M parameters instead of 860 M. What
  ComfyUI's detection reads is unchanged (320 channels, 768-wide cross-attention, conv
  proj_in, no label_emb), so it is still SD15.
- Text encoder: the CLIP-L weights the caller gives (the parity recipe's), so conditioning
  computed in ComfyUI can be checked against the parity expectations.
- VAE: SD's, full size. ComfyUI's SD1 CLIP and VAE configs are fixed, so neither can shrink.
Shapes and key names come from ComfyUI's own classes built on the meta device; values are
seeded per key (weights N(0, 1/fan_in), norms 1, biases 0), stored as fp16 safetensors."""
from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from pathlib import Path
from typing import Callable

BUILDER_VERSION = "1"  # bump when the recipe below changes
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# the unet_config ComfyUI's detection reads back from these weights
UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, context_dim=768,
    num_res_blocks=[1], channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
    transformer_depth_middle=1, use_linear_in_transformer=False, use_spatial_transformer=True,
    legacy=False, adm_in_channels=None, use_checkpoint=False, use_temporal_resblock=False,
    use_temporal_attention=False)
# the Stable Diffusion autoencoder (KL-f8), as in every SD1.x checkpoint
VAE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def layout() -> dict:
    """{key: (shape, dtype)} of the UNet and VAE weights, from ComfyUI's classes on meta."""
    import torch
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        unet = comfy.supported_models.SD15(UNET_CONFIG).get_model({}, device="meta").diffusion_model
        vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    out = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae)):
        for k, v in module.state_dict().items():
            out[prefix + k] = (tuple(v.shape), v.dtype)
    return out


def _random(key: str, shape: tuple, seed: int):
    import torch

    if len(shape) == 1:  # norm weights and biases
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=torch.float16)
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    w = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return w.to(torch.float16)


def clip_checkpoint_keys(clip_sd: dict) -> dict:
    """CLIPTextModel keys (with or without the `text_model.` prefix) -> checkpoint keys, fp16."""
    import torch

    out = {}
    for k, v in clip_sd.items():
        k = k if k.startswith("text_model.") else "text_model." + k
        out[CLIP_PREFIX + k] = v.to(torch.float16) if v.is_floating_point() else v
    return out


def build(path: Path, clip_sd: dict, seed: int = 0) -> Path:
    """Write the checkpoint to `path` (atomically) and return it."""

    sd = {k: _random(k, shape, seed) for k, (shape, _) in layout().items()}
    sd.update(clip_checkpoint_keys(clip_sd))
    return write_checkpoint(path, sd, "random SD1.5-shaped test checkpoint, not a model", BUILDER_VERSION)


def write_checkpoint(path, sd: dict, what: str, builder_version: str) -> Path:
    """Write a test checkpoint atomically (a per-process temp name: parallel runs share the cache)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
              metadata={"f2d_tests": what, "builder_version": builder_version})
    os.replace(tmp, path)
    return path


def cache_key(clip_id: str, seed: int = 0) -> str:
    """Changes whenever the file would: builder version, ComfyUI's layout, CLIP weights, seed."""
    shapes = {k: [list(s), str(d)] for k, (s, d) in layout().items()}
    blob = json.dumps([BUILDER_VERSION, UNET_CONFIG, VAE_DDCONFIG, shapes, clip_id, seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached(cache_dir: Path, clip_id: str, make_clip_sd: Callable[[], dict], seed: int = 0) -> Path:
    """The checkpoint from `cache_dir`, built there first if no file for this key exists.
    Older versions in the cache are removed when a new one is written."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"tiny_sd15-{cache_key(clip_id, seed)}.safetensors"
    if not path.is_file():
        build(path, make_clip_sd(), seed)
        for old in cache_dir.glob("tiny_sd15-*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)
    return path
