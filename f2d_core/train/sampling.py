"""Sample images during training: the official inference settings on the training models.

Euler-Ancestral (as the official script), classifier-free guidance with the empty prompt,
a fixed seed, so samples from different steps are comparable.
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def generate(parts, cond: torch.Tensor, uncond: torch.Tensor, size: int, steps: int = 30, cfg: float = 7.0,
             seed: int = 0, autocast=None, pooled=None, uncond_pooled=None) -> np.ndarray:
    """cond (B, 77, W), uncond (1, 77, W) -> (B, size, size, 3) uint8 images. SDXL: with the pooled
    outputs (B, P), (1, P) and the time ids of an uncropped size² image (ComfyUI's defaults)."""
    from .deps import require
    d = require("diffusers", "Sampling")
    import contextlib
    unet, vae = parts.unet, parts.vae
    device, dtype = unet.device, unet.dtype
    sched = d.EulerAncestralDiscreteScheduler.from_config(parts.scheduler_config)
    sched.set_timesteps(steps, device=device)
    g = torch.Generator().manual_seed(seed)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    b = cond.shape[0]
    lat = torch.randn((b, unet.config.in_channels, size // factor, size // factor), generator=g)
    lat = lat.to(device) * sched.init_noise_sigma
    context = torch.cat([uncond.expand(b, -1, -1), cond]).to(device, dtype)
    added = None
    if pooled is not None:
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype).expand(2 * b, -1)
        added = {"text_embeds": torch.cat([uncond_pooled.expand(b, -1), pooled]).to(device, dtype),
                 "time_ids": time_ids}
    with autocast or contextlib.nullcontext():
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([lat, lat]), t)
            eps_u, eps_c = unet(x.to(dtype), t, encoder_hidden_states=context,
                                  added_cond_kwargs=added).sample.float().chunk(2)
            # a CPU generator: diffusers draws the ancestral noise on the CPU, the same on every device
            lat = sched.step(eps_u + cfg * (eps_c - eps_u), t, lat, generator=g).prev_sample
        img = vae.decode((lat / vae.config.scaling_factor).to(dtype)).sample.float()
    return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of equally sized HWC uint8 images -> one image."""
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
