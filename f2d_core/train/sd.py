"""Stable Diffusion parts for training: UNet, VAE, text encoders, noise schedule, per base family.

Read from local files only, never from the network:
- a single-file checkpoint (`.safetensors`, `.ckpt`) in the original layout, as every
  model and fine-tune is distributed (SD1.x: LDM `cond_stage_model.*`; SDXL, e.g.
  `sd_xl_base_1.0.safetensors`: `conditioner.embedders.0.transformer.*` = CLIP-L in HF
  names, `conditioner.embedders.1.model.*` = OpenCLIP bigG): the models are built from the
  family's architecture below (facts: layer counts and widths, no code) and the weights are
  renamed with diffusers' own conversion functions (`diffusers.loaders.single_file_utils`);
- or a diffusers-format folder (unet/, vae/, text_encoder/[, text_encoder_2/], scheduler/ and
  optionally tokenizer/), loaded with `from_pretrained(local_files_only=True)`.
Needs diffusers (requirements-train.txt); node users never install it.
"""
from __future__ import annotations

import logging
import os
import types
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError
from ..models import families
from ..models.families import Family
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
SD1_TEXT = families.CLIP_L.clip_config()  # CLIP ViT-L/14, as models/families.py holds it
# the training noise schedule of every SD1.x model (scaled-linear betas, epsilon prediction)
SD1_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", steps_offset=1, clip_sample=False, set_alpha_to_one=False)
SD1 = {"unet": SD1_UNET, "vae": SD1_VAE, "text_encoder": SD1_TEXT, "scheduler": SD1_SCHEDULER}

# SDXL base 1.0 and the checkpoints built on it (Pony, Illustrious, NoobAI fine-tunes), as diffusers
# configs: UNet 2.6 B with 2048-wide cross-attention and the "text_time" embedding of the pooled
# bigG output (1280) + 6 size/crop time ids x 256 = 2816; SD's VAE with scale 0.13025; the same
# training noise schedule as SD1.x. Text encoders from the family (models/families.py).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20], use_linear_projection=True, cross_attention_dim=2048,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    downsample_padding=1, mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5)
SDXL_VAE = dict(SD1_VAE, sample_size=1024, scaling_factor=0.13025)
SDXL = {"unet": SDXL_UNET, "vae": SDXL_VAE, "text_encoder": families.CLIP_L_SDXL.clip_config(),
        "text_encoder_2": families.CLIP_G.clip_config(), "scheduler": SD1_SCHEDULER}
ARCHITECTURES = {"sd1": SD1, "sdxl": SDXL}
# the model folders / single-file prefixes of each family's text encoders, in the family's stream order
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class SDParts:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    scheduler_config: dict
    tokenizer: object = None          # transformers CLIPTokenizer when one was found (one BPE for every stream)
    source: str = ""
    configs: dict = field(default_factory=dict)
    family: Family = families.SD1
    text_encoder_2: torch.nn.Module | None = None   # SDXL's OpenCLIP bigG (CLIPTextModelWithProjection)

    @property
    def text_encoders(self) -> dict:
        """{stream key: text encoder} in the family's order (SD1.x: {"l"}; SDXL: {"l", "g"})."""
        models = (self.text_encoder, self.text_encoder_2)
        return {s.key: m for s, m in zip(self.family.streams, models)}

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
        """Move to `device`, no gradients for any weight. UNet and VAE in `dtype`; the text encoders
        stay fp32 (S* is written into their embeddings and must not be rounded to 16 bits). The cast
        comes first, so the GPU never holds an fp32 copy of a 16-bit model."""
        texts = [(m, torch.float32) for m in self.text_encoders.values()]
        for m, dt in [(self.unet, dtype), (self.vae, dtype)] + texts:
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


def _describe_foreign(sd: dict, family: Family = families.SD1) -> str | None:
    """What the file is when it is not a checkpoint of `family`, else None."""
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if not has("model.diffusion_model."):
        return "not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)"
    if has("cond_stage_model.model."):
        return "an SD 2.x checkpoint (OpenCLIP text encoder)"
    if family.name == "sd1" and has("conditioner.embedders.1."):
        return "an SDXL checkpoint (train it with --base sdxl)"
    if family.name == "sdxl":
        if has("cond_stage_model.transformer."):
            return "an SD1.x checkpoint (train it without --base sdxl)"
        if not has("conditioner.embedders.1.model.") or not has("conditioner.embedders.0.transformer."):
            return ("not an SDXL base checkpoint (no conditioner.embedders.0.transformer.* CLIP-L and "
                    "conditioner.embedders.1.model.* OpenCLIP bigG weights; an SDXL refiner has only bigG)")
    return None


def _build(cls, config: dict, sd: dict, what: str, path: str, family: Family = families.SD1):
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    want = model.state_dict()
    missing, unexpected = want.keys() - sd.keys(), sd.keys() - want.keys()
    wrong = [k for k in want.keys() & sd.keys() if tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or wrong:
        raise CheckpointError(
            f"{path}: its {what} does not match the {family.label} architecture ({len(missing)} weights missing, "
            f"e.g. {sorted(missing)[:2]}; {len(wrong)} with other shapes, e.g. {sorted(wrong)[:2]}). Face2Diffusion "
            f"trains on {_ARCH_NAMES[family.name]}-architecture checkpoints only.")
    if unexpected:
        log.info("%s: %d extra %s weights ignored", path, len(unexpected), what)
    model.load_state_dict({k: sd[k] for k in want}, strict=True, assign=True)
    return model


_ARCH_NAMES = {"sd1": "SD 1.4/1.5", "sdxl": "SDXL base 1.0"}
_EXAMPLES = {"sd1": "e.g. v1-5-pruned-emaonly.safetensors or an SD1.5 fine-tune",
             "sdxl": "e.g. sd_xl_base_1.0.safetensors or an SDXL fine-tune"}


def load_single_file(path: str, configs: dict | None = None, family: str | Family = "sd1") -> SDParts:
    """A single-file checkpoint of `family` (SD1.x LDM layout, or SDXL's) -> SDParts (fp32, CPU).
    `configs`: the architecture (default: the family's full size; the tests pass tiny ones)."""
    d = require("diffusers", "Loading Stable Diffusion for training")
    from diffusers.loaders import single_file_utils as conv
    fam = family if isinstance(family, Family) else families.family(family)
    configs = configs or ARCHITECTURES[fam.name]
    sd = _read(path)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: no weights found in this file.")
    foreign = _describe_foreign(sd, fam)
    if foreign:
        raise CheckpointError(f"{path}: this is {foreign}; Face2Diffusion {fam.label} training needs an "
                              f"{fam.label} checkpoint ({_EXAMPLES[fam.name]}).")
    ema = sum(k.startswith("model_ema.") for k in sd) > 100
    unet_sd = conv.convert_ldm_unet_checkpoint(sd, configs["unet"], extract_ema=ema)
    unet = _build(d.UNet2DConditionModel, configs["unet"], unet_sd, "UNet", path, fam)
    vae_sd = conv.convert_ldm_vae_checkpoint(sd, configs["vae"])
    vae = _build(d.AutoencoderKL, configs["vae"], vae_sd, "VAE", path, fam)
    # CLIP-L: SD1.x's cond_stage_model.transformer.* or SDXL's conditioner.embedders.0.transformer.*, HF names
    text = clip_text_model(conv.convert_ldm_clip_checkpoint(sd), configs["text_encoder"], path)
    text_2 = None
    if "text_encoder_2" in configs:
        # OpenCLIP bigG -> CLIPTextModelWithProjection (fused qkv split, text_projection transposed); the
        # converter reads only the width from its model argument, when the file has no text_projection
        hidden = configs["text_encoder_2"]["hidden_size"]
        width = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=hidden))
        g_sd = conv.convert_open_clip_checkpoint(width, sd, prefix="conditioner.embedders.1.model.")
        text_2 = clip_text_model(g_sd, configs["text_encoder_2"], path, projection=True)
    if ema:
        log.info("%s holds EMA weights; the UNet uses them (what inference uses)", path)
    return SDParts(unet, vae, text, dict(configs["scheduler"]), source=path, configs=configs, family=fam,
                   text_encoder_2=text_2)


def load_folder(path: str, family: str | Family = "sd1") -> SDParts:
    """A diffusers-format model folder of `family` -> SDParts (fp32, CPU)."""
    d = require("diffusers", "Loading Stable Diffusion for training")
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    fam = family if isinstance(family, Family) else families.family(family)
    texts = TEXT_ENCODER_NAMES[:len(fam.streams)]
    need = ("unet", "vae") + texts
    absent = [n for n in need if not os.path.isdir(os.path.join(path, n))]
    if absent:
        raise CheckpointError(f"{path}: not a diffusers {fam.label} model folder (no {', '.join(absent)}/ inside). "
                              f"Give an {fam.label} .safetensors checkpoint or a folder with "
                              f"{', '.join(n + '/' for n in need)}.")
    kw = dict(local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False)
    unet = d.UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = d.AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    text = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), local_files_only=True)
    text_2 = None
    if len(texts) > 1:
        text_2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(path, "text_encoder_2"),
                                                             local_files_only=True)
    sched = dict(SD1_SCHEDULER)
    if os.path.isfile(os.path.join(path, "scheduler", "scheduler_config.json")):
        import json
        with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
            sched.update({k: v for k, v in json.load(f).items() if not k.startswith("_")})
    tokenizer = None
    if _is_tokenizer(os.path.join(path, "tokenizer")):
        tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
    width = getattr(unet.config, "cross_attention_dim", None)
    if width != fam.token_width:
        other = {f.token_width: f for f in families.FAMILIES.values()}.get(width)
        hint = f" (it is an {other.label} model: train it with --base {other.name})" if other else ""
        raise CheckpointError(f"{path}: the UNet's cross-attention is {width}-wide; Face2Diffusion {fam.label} "
                              f"training needs an {fam.label} model ({fam.token_width}){hint}.")
    return SDParts(unet, vae, text, sched, tokenizer, source=path, family=fam, text_encoder_2=text_2)


def load_sd(path, tokenizer_dir=None, family: str | Family = "sd1") -> SDParts:
    """A model of `family` (sd1, sdxl) from a single-file checkpoint or a diffusers folder, with a
    tokenizer when one is given or found (see find_tokenizer)."""
    path = os.fspath(path)
    fam = family if isinstance(family, Family) else families.family(family)
    if os.path.isdir(path):
        parts = load_folder(path, fam)
    elif os.path.isfile(path):
        if not path.lower().endswith(CHECKPOINT_SUFFIXES):
            raise CheckpointError(f"{path}: expected an {fam.label} checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
                                  "or a diffusers model folder.")
        parts = load_single_file(path, family=fam)
    else:
        raise CheckpointError(f"{path}: not found. Give --sd the path of an {fam.label} checkpoint, e.g. "
                              f"ComfyUI/models/checkpoints/{_EXAMPLES[fam.name].split()[1]}.")
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
