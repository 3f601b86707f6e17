"""A random SDXL-shaped checkpoint for host tests, generated at test time (never committed).

ComfyUI detects it as `Segmind_Vega` (an SDXL-family class: model_base.SDXL, SDXL's latent
format, SDXLTokenizer + SDXLClipModel) and runs it like any SDXL model; its images are noise.
- UNet: Vega's transformer depths per input block ([0, 0, 1, 1, 2, 2], which is what detection
  matches on, with 320 model channels, 2048-wide linear cross-attention and the 2816-wide ADM
  input of pooled + size/crop time ids) at one width (channel_mult 1, 1, 1), one transformer on
  the output side and in the middle: about 60 M parameters instead of 745 M.
- Text encoders: full size, because ComfyUI builds clip_l and clip_g from its own configs (CLIP
  ViT-L/14 123 M and OpenCLIP ViT-bigG/14 695 M parameters), with seeded random weights that the
  tests rebuild with `text_encoder_weights` (transformers' key names) to give a reference.
- VAE: SD's KL-f8, full size, as in every SDXL checkpoint.
Shapes and key names come from ComfyUI's own classes on the meta device, the text encoders'
checkpoint names from ComfyUI's own saving conversion (`process_clip_state_dict_for_saving`:
clip_l as conditioner.embedders.0.transformer.*, clip_g in OpenCLIP layout under
conditioner.embedders.1.model.*). Values are seeded per key (weights N(0, 1/fan_in), norms 1,
biases 0), stored as fp16 safetensors (about 1.9 GB, cached like the SD1.5 one)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .tiny_sd15 import VAE_DDCONFIG, VAE_PREFIX, _random, write_checkpoint

BUILDER_VERSION = "1"  # bump when the recipe below changes
UNET_PREFIX = "model.diffusion_model."
DETECTED_AS = "Segmind_Vega"
UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, context_dim=2048,
    num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1], transformer_depth=[0, 0, 1, 1, 2, 2],
    transformer_depth_output=[0, 0, 0, 0, 0, 0, 1, 0, 0], transformer_depth_middle=1,
    use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, adm_in_channels=2816,
    num_classes="sequential", use_checkpoint=False, use_temporal_resblock=False, use_temporal_attention=False)
STREAMS = ("l", "g")  # ComfyUI's SDXLClipModel.clip_l, .clip_g


def _comfy_classes():
    import comfy.sdxl_clip
    import comfy.supported_models
    return comfy.supported_models.Segmind_Vega(UNET_CONFIG), comfy.sdxl_clip.SDXLClipModel


def layout() -> dict:
    """{key: (shape, dtype)} of the UNet and VAE weights, from ComfyUI's classes on meta."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config, _ = _comfy_classes()
    with torch.device("meta"):
        unet = config.get_model({}, device="meta").diffusion_model
        vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    out = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae)):
        for k, v in module.state_dict().items():
            out[prefix + k] = (tuple(v.shape), v.dtype)
    return out


def text_encoder_layout() -> dict:
    """{stream: {transformers key: shape}} of ComfyUI's SDXL clip_l and clip_g (built on meta)."""
    import torch

    _, clip_model = _comfy_classes()
    with torch.device("meta"):
        model = clip_model(device="meta", dtype=torch.float16)
    out = {s: {} for s in STREAMS}
    for k, v in model.state_dict().items():
        stream, rest = k.split(".", 1)
        if rest.startswith("transformer."):  # logit_scale is not a weight the text side uses
            out[stream[len("clip_"):]][rest[len("transformer."):]] = tuple(v.shape)
    # SDXL checkpoints carry no clip_l projection (ComfyUI drops it when saving): only clip_g's
    # pooled output conditions the UNet
    del out["l"]["text_projection.weight"]
    return out


def text_encoder_weights(seed: int = 0) -> dict:
    """{stream: {transformers CLIPTextModel(WithProjection) key: fp16 tensor}}, seeded per key."""
    return {s: {k: _random(f"clip_{s}.{k}", shape, seed) for k, shape in keys.items()}
            for s, keys in text_encoder_layout().items()}


def build(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint to `path` (atomically) and return it."""

    config, _ = _comfy_classes()
    sd = {k: _random(k, shape, seed) for k, (shape, _) in layout().items()}
    text = text_encoder_weights(seed)
    hf = {f"clip_{s}.transformer.{k}": v for s, weights in text.items() for k, v in weights.items()}
    del text
    sd.update(config.process_clip_state_dict_for_saving(hf))
    del hf
    return write_checkpoint(path, sd, "random SDXL-shaped test checkpoint, not a model", BUILDER_VERSION)


def cache_key(seed: int = 0) -> str:
    """Changes whenever the file would: builder version, ComfyUI's layouts, seed."""
    shapes = {k: [list(s), str(d)] for k, (s, d) in layout().items()}
    blob = json.dumps([BUILDER_VERSION, UNET_CONFIG, VAE_DDCONFIG, shapes, text_encoder_layout(), seed],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached(cache_dir: Path, seed: int = 0) -> Path:
    """The checkpoint from `cache_dir`, built there first if no file for this key exists.
    Older versions in the cache are removed when a new one is written."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"tiny_sdxl-{cache_key(seed)}.safetensors"
    if not path.is_file():
        build(path, seed)
        for old in cache_dir.glob("tiny_sdxl-*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)
    return path
