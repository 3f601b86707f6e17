"""Stable Diffusion 1.x parts for training: UNet, VAE, text encoder, noise schedule.

Read from local files only, never from the network:
- a single-file checkpoint (`.safetensors`, `.ckpt`) in the original LDM layout, as every
  SD1.x model and fine-tune is distributed: the models are built from the SD1.x
  architecture below (facts: layer counts and widths, no code) and the weights are
  renamed with diffusers' own conversion functions (`diffusers.loaders.single_file_utils`);
- or a diffusers-format folder (unet/, vae/, text_encoder/, scheduler/ and optionally
  tokenizer/), loaded with `from_pretrained(local_files_only=True)`.
Needs diffusers (requirements-train.txt); node users never install it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError
from ..text.clip import clip_text_model

from .deps import require

log = logging.getLogger(__name__)

# The SD1.x architecture (SD 1.4 / 1.5 and their fine-tunes), as diffusers configs.
SD1_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
SD1_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu", norm_num_groups=32,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, scaling_factor=0.18215)
SD1_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                projection_dim=768)
# the training noise schedule of every SD1.x model (scaled-linear betas, epsilon prediction)
SD1_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", steps_offset=1, clip_sample=False, set_alpha_to_one=False)
SD1 = {"unet": SD1_UNET, "vae": SD1_VAE, "text_encoder": SD1_TEXT, "scheduler": SD1_SCHEDULER}

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class SDParts:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    scheduler_config: dict
    tokenizer: object = None          # transformers CLIPTokenizer when one was found
    source: str = ""
    configs: dict = field(default_factory=dict)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    def noise_scheduler(self):
        """diffusers DDPMScheduler with the model's training schedule (for add_noise / velocity)."""
        d = require("diffusers", "Training")
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                "trained_betas", "clip_sample", "steps_offset")
        return d.DDPMScheduler(**{k: v for k, v in self.scheduler_config.items() if k in keys})

    def freeze(self, device, dtype) -> "SDParts":
        """Move to `device`, no gradients for any weight. UNet and VAE in `dtype`; the text encoder
        stays fp32 (S* is written into its embeddings and must not be rounded to 16 bits). The cast
        comes first, so the GPU never holds an fp32 copy of a 16-bit model."""
        for m, dt in ((self.unet, dtype), (self.vae, dtype), (self.text_encoder, torch.float32)):
            if next(m.parameters()).dtype != dt:  # (diffusers warns on every dtype cast, so only when needed)
                m.to(dtype=dt)
            m.to(device=device)
            m.eval().requires_grad_(False)
        return self


def _read(path: str) -> dict:
    name = os.path.basename(path)
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - any reader failure means the same to the user
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it is probably truncated. "
                                  "Download the checkpoint again.") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: could not be read as a plain PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}). Old "
            f".ckpt files that pickle Python objects are refused for safety; use the .safetensors version of "
            f"{name}.") from None
    while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return sd


def _describe_foreign(sd: dict) -> str | None:
    if any(k.startswith("conditioner.embedders.1.") for k in sd):
        return "an SDXL checkpoint"
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        return "an SD 2.x checkpoint (OpenCLIP text encoder)"
    if not any(k.startswith("model.diffusion_model.") for k in sd):
        return "not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)"
    return None


def _build(cls, config: dict, sd: dict, what: str, path: str):
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    want = model.state_dict()
    missing, unexpected = want.keys() - sd.keys(), sd.keys() - want.keys()
    wrong = [k for k in want.keys() & sd.keys() if tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or wrong:
        raise CheckpointError(
            f"{path}: its {what} does not match the SD1.x architecture ({len(missing)} weights missing, e.g. "
            f"{sorted(missing)[:2]}; {len(wrong)} with other shapes, e.g. {sorted(wrong)[:2]}). Face2Diffusion "
            "trains on SD 1.4/1.5-architecture checkpoints only.")
    if unexpected:
        log.info("%s: %d extra %s weights ignored", path, len(unexpected), what)
    model.load_state_dict({k: sd[k] for k in want}, strict=True, assign=True)
    return model


def load_single_file(path: str, configs: dict = SD1) -> SDParts:
    """An SD1.x LDM-layout checkpoint -> SDParts (fp32, CPU)."""
    d = require("diffusers", "Loading Stable Diffusion for training")
    from diffusers.loaders import single_file_utils as conv
    sd = _read(path)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: no weights found in this file.")
    foreign = _describe_foreign(sd)
    if foreign:
        raise CheckpointError(f"{path}: this is {foreign}; Face2Diffusion needs an SD 1.x checkpoint "
                              "(e.g. v1-5-pruned-emaonly.safetensors or an SD1.5 fine-tune).")
    ema = sum(k.startswith("model_ema.") for k in sd) > 100
    unet_sd = conv.convert_ldm_unet_checkpoint(sd, configs["unet"], extract_ema=ema)
    unet = _build(d.UNet2DConditionModel, configs["unet"], unet_sd, "UNet", path)
    vae = _build(d.AutoencoderKL, configs["vae"], conv.convert_ldm_vae_checkpoint(sd, configs["vae"]), "VAE", path)
    text = clip_text_model(conv.convert_ldm_clip_checkpoint(sd), configs["text_encoder"], path)
    if ema:
        log.info("%s holds EMA weights; the UNet uses them (what inference uses)", path)
    return SDParts(unet, vae, text, dict(configs["scheduler"]), source=path, configs=configs)


def load_folder(path: str) -> SDParts:
    """A diffusers-format model folder -> SDParts (fp32, CPU)."""
    d = require("diffusers", "Loading Stable Diffusion for training")
    from transformers import CLIPTextModel
    need = ("unet", "vae", "text_encoder")
    absent = [n for n in need if not os.path.isdir(os.path.join(path, n))]
    if absent:
        raise CheckpointError(f"{path}: not a diffusers model folder (no {', '.join(absent)}/ inside). Give an "
                              "SD1.x .safetensors checkpoint or a folder with unet/, vae/, text_encoder/.")
    kw = dict(local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False)
    unet = d.UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = d.AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    text = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), local_files_only=True)
    sched = dict(SD1_SCHEDULER)
    if os.path.isfile(os.path.join(path, "scheduler", "scheduler_config.json")):
        import json
        with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
            sched.update({k: v for k, v in json.load(f).items() if not k.startswith("_")})
    tokenizer = None
    if _is_tokenizer(os.path.join(path, "tokenizer")):
        tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
    if getattr(unet.config, "cross_attention_dim", None) != 768:
        raise CheckpointError(f"{path}: the UNet's cross-attention is {unet.config.cross_attention_dim}-wide; "
                              "Face2Diffusion needs an SD1.x model (768).")
    return SDParts(unet, vae, text, sched, tokenizer, source=path)


def load_sd(path, tokenizer_dir=None) -> SDParts:
    """SD1.x from a single-file checkpoint or a diffusers folder, with a tokenizer when one is
    given or found (see find_tokenizer)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        parts = load_folder(path)
    elif os.path.isfile(path):
        if not path.lower().endswith(CHECKPOINT_SUFFIXES):
            raise CheckpointError(f"{path}: expected an SD1.x checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a "
                                  "diffusers model folder.")
        parts = load_single_file(path)
    else:
        raise CheckpointError(f"{path}: not found. Give --sd the path of an SD1.x checkpoint, e.g. "
                              "ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors.")
    if tokenizer_dir:
        parts.tokenizer = load_tokenizer(tokenizer_dir)
    elif parts.tokenizer is None:
        found = find_tokenizer()
        parts.tokenizer = load_tokenizer(found) if found else None
    return parts


def load_tokenizer(path):
    from transformers import CLIPTokenizer
    path = os.fspath(path)
    if not _is_tokenizer(path):
        raise CheckpointError(f"{path}: not a CLIP tokenizer folder (needs vocab.json and merges.txt, or "
                              "tokenizer.json), e.g. ComfyUI/comfy/sd1_tokenizer.")
    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def _is_tokenizer(path) -> bool:
    has = lambda f: os.path.isfile(os.path.join(path, f))  # noqa: E731
    return (has("vocab.json") and has("merges.txt")) or has("tokenizer.json")


def find_tokenizer() -> str | None:
    """ComfyUI's SD1 tokenizer when this pack sits in ComfyUI/custom_nodes/<pack>/."""
    here = os.path.dirname(os.path.abspath(__file__))
    comfy_root = os.path.abspath(os.path.join(here, "..", "..", "..", ".."))
    cand = os.path.join(comfy_root, "comfy", "sd1_tokenizer")
    return cand if _is_tokenizer(cand) else None
