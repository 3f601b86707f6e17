"""Training the mapping network f_map (paper §3.3-3.4, §4.1), for a base model family (SD1.x, SDXL).

Only the two mapping MLPs and null_exp learn; MSID, the expression regressor, the face
parser and all of Stable Diffusion are frozen. One step, per sample:

    features = MSID(ArcFace crop)                      frozen
    exp      = f_exp(Deep3DFaceRecon crop)             frozen; null_exp with probability 0.2 (Eq. 4)
    S1*, S2* = f_map(features ++ exp)                  trained
    z_0      = VAE(SD crop) · scale, z_t = noised z_0 at a uniform t, ε the noise
    ε_S      = UNet(z_t, t, CLIP("a photo of f l" with S* injected as at inference))
    ε_class  = UNet(z_t, t, CLIP("a photo of a person"))           no gradient
    loss     = CGDR (Eq. 7) with the face mask M, or the ablations Eq. 1 / Eq. 8 (losses.py)

The family (`--base`, models/families.py) is data: the width of S* (SD1.x 768; SDXL 768 + 1280,
one part per text encoder), which encoders and hidden layers make the conditioning, and, for
SDXL, bigG's pooled output and the size/crop time ids of each sample's real crop, which the
UNet takes besides (`added_cond_kwargs`). The step is the same code for every family.

Defaults are the paper's: batch 32, lr 1e-5, horizontal flip only, 100k iterations.

Every random draw of a sample (VAE sampling, noise, timestep, expression dropout, the
mapping's dropout) is seeded by (seed, sample number), and f_map runs sample by sample, so
a sample's loss does not depend on its micro-batch or rank: a run on 8 GPUs, on 1 GPU with
accumulation, or resumed on another number of GPUs, is the same run up to float rounding.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from ..errors import F2DError
from ..models import families
from ..weights.files import file_sha256

from . import runtime
from .conditioning import CLASS_PROMPT, TRAIN_PROMPT, TRIGGER, PromptEncoder
from .data import to_msid_pixels
from .loop import BaseTrainer
from .losses import LOSSES, diffusion_loss, expression_keep_mask
from .parsing import FACE_CLASSES
from .state import sample_generator, sample_seed, step_seed

log = logging.getLogger(__name__)


@dataclass
class MappingConfig:
    data: str = ""
    sd: str = ""
    msid: str = ""
    out: str = ""
    expression: str | None = None
    parsing: str | None = None
    detector: str | None = None
    landmarks: str | None = None
    tokenizer: str | None = None
    init_mapping: str | None = None
    steps: int = 100_000
    batch_size: int = 32
    micro_batch_size: int | None = None    # < batch_size: gradient accumulation
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 0.0             # 0: no clipping
    loss: str = "cgdr"
    expression_dropout: float = 0.2
    base: str = "sd1"                      # the base model family: sd1, sdxl (models/families.py)
    resolution: int | None = None          # None: the family's (SD1.x 512, SDXL 1024)
    crop: str = "ffhq"
    flip: bool = True
    prompt: str = TRAIN_PROMPT
    class_prompt: str = CLASS_PROMPT
    mask_classes: tuple = FACE_CLASSES
    precision: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    workers: int = 4
    seed: int = 0
    save_every: int = 1000
    snapshot_every: int = 10_000
    sample_every: int = 1000
    sample_prompts: tuple = ("a photo of f l", "a painting of f l in a garden")
    sample_faces: int = 2
    sample_steps: int = 30
    sample_cfg: float = 7.0
    progress: bool = True

    def check(self):
        try:
            fam = families.family(self.base)
        except ValueError as e:
            raise F2DError(f"--base: {e}") from None
        if self.resolution is None:
            self.resolution = fam.resolution
        if self.loss not in LOSSES:
            raise F2DError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise F2DError("--steps and --batch-size must be positive")
        if self.resolution % 8:
            raise F2DError(f"--resolution must be a multiple of 8, got {self.resolution}")
        micro = self.micro_batch_size or self.batch_size
        if micro < 1 or self.batch_size % micro:
            raise F2DError(f"--batch-size {self.batch_size} must be a multiple of --micro-batch-size {micro}")


# settings that must not change when a run is resumed (its exactness depends on them); the
# micro-batch size and the number of ranks may change (per-sample draws)
RESUME_KEYS = ("base", "batch_size", "seed", "loss", "resolution", "crop", "flip", "prompt",
               "class_prompt", "expression_dropout", "lr", "weight_decay", "warmup_steps")


@dataclass
class Components:
    """Everything a step needs besides the mapping network (tests and the benchmark build these directly)."""
    parts: object                        # sd.SDParts
    msid: torch.nn.Module
    expression: object = None            # expression.ExpressionEncoder or None (null_exp for every sample)
    parser: object = None                # parsing.FaceParser or None (landmark masks)


class PerSampleMapping(torch.nn.Module):
    """f_map one sample at a time, each with its own dropout seed: a sample's S* then depends on
    that sample alone, not on the micro-batch or rank it is in. (The MLPs are tiny next to the
    UNet; this is the module DDP wraps.)"""

    def __init__(self, mapping: torch.nn.Module):
        super().__init__()
        self.mapping = mapping

    def forward(self, features, expression, keep, seeds):
        s1, s2 = [], []
        for i, seed in enumerate(seeds):
            _seed_dropout(seed, features.device)
            a, b = self.mapping(features[i:i + 1], None if expression is None else expression[i:i + 1],
                                None if keep is None else keep[i:i + 1])
            s1.append(a)
            s2.append(b)
        return torch.cat(s1), torch.cat(s2)


def _seed_dropout(seed: int, device: torch.device):
    """Seed the generator nn.Dropout draws from on `device` (only that device's)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class MappingTrainer(BaseTrainer):
    resume_keys = RESUME_KEYS

    def __init__(self, cfg: MappingConfig, components: Components | None = None, dataset=None):
        cfg.check()
        self.family = families.family(cfg.base)
        self.setup_runtime(cfg)
        self.title = f"mapping ({cfg.loss})" if self.family.name == "sd1" else \
            f"{self.family.label} mapping ({cfg.loss})"
        with self.ranks.guard("loading the models"):  # every rank loads its own copy of the frozen models
            if components is None:
                self._check_paths()
            self.c = components or self._load_components()
            if self.c.parts.family != self.family:
                raise F2DError(f"the models are {self.c.parts.family.label}, but the run is for --base {cfg.base}")
            self.parts = self.c.parts.freeze(self.device, runtime.frozen_dtype(self.device, self.precision))
            if cfg.gradient_checkpointing:
                self.parts.unet.enable_gradient_checkpointing()
            self.c.msid.to(self.device, torch.float32).eval().requires_grad_(False)
        self.dataset = dataset if dataset is not None else self._load_dataset()
        if self.c.expression is None:
            log.warning("no expression model (--expression): every sample uses the learned null_exp, i.e. "
                        "expression dropout with probability 1; the expression input of the mapping stays untrained")
        if self.c.parser is None and cfg.loss != "reconstruction":
            log.info("no face-parsing network (--parsing): face masks are drawn from the landmarks")
        with self.ranks.guard("loading --init-mapping"):
            self.mapping = self._init_mapping().to(self.device).train()
        self.trainable = {"mapping": self.mapping}
        self.wrap(PerSampleMapping(self.mapping))
        self.setup_optimizer(self.mapping.parameters())
        self.noise = self.parts.noise_scheduler()
        self.prompt = self.prompt_encoder(cfg.prompt)
        self.class_prompt = self.prompt_encoder(cfg.class_prompt)
        if not self.prompt.has_trigger:
            raise F2DError(f"--prompt {cfg.prompt!r} does not contain the trigger 'f l' (where S* goes), e.g. "
                           "'a photo of f l'.")
        with torch.no_grad(), self.autocast():
            self.class_cond, self.class_pooled = self.class_prompt.encode()

    @cached_property
    def msid_sha256(self) -> str:
        """sha256 of the MSID file, for the exported mapping's metadata (hashed when first written)."""
        return file_sha256(self.cfg.msid) if self.cfg.msid and os.path.isfile(self.cfg.msid) else ""

    def prompt_encoder(self, prompt: str) -> PromptEncoder:
        return PromptEncoder(self.parts.text_encoders, prompt, self.parts.tokenizer, family=self.family)

    # ---- setup ------------------------------------------------------------------------------
    def _check_paths(self):
        """Every given file and folder exists: checked before hours of loading or detection."""
        cfg, missing = self.cfg, []
        for flag, path, folder in (("--data", cfg.data, True), ("--sd", cfg.sd, None), ("--msid", cfg.msid, False),
                                   ("--expression", cfg.expression, False), ("--parsing", cfg.parsing, False),
                                   ("--detector", cfg.detector, True), ("--landmarks", cfg.landmarks, False),
                                   ("--tokenizer", cfg.tokenizer, True), ("--init-mapping", cfg.init_mapping, False)):
            if path and not (os.path.exists(path) if folder is None else
                             os.path.isdir(path) if folder else os.path.isfile(path)):
                missing.append(f"{flag} {path}")
        if missing:
            raise F2DError("not found: " + "; ".join(missing) + ". Check the paths.")

    def _load_components(self) -> Components:
        from ..weights.checkpoint import load_checkpoint
        from ..models.msid import MSIDEncoder

        from .sd import load_sd
        cfg = self.cfg
        with torch.device("meta"):
            msid = MSIDEncoder()
        msid.load_state_dict(load_checkpoint(cfg.msid, "msid"), strict=True, assign=True)
        parts = load_sd(cfg.sd, cfg.tokenizer, self.family)
        expression = parser = None
        if cfg.expression:
            from .expression import load_expression
            expression = load_expression(cfg.expression, self.device)
        if cfg.parsing and cfg.loss != "reconstruction":
            from .parsing import load_parser
            parser = load_parser(cfg.parsing, self.device, cfg.mask_classes)
        return Components(parts, msid, expression, parser)

    def _load_dataset(self):
        from .data import FaceDataset, build_index
        cfg = self.cfg
        detector = None
        with self.ranks.guard("loading the face detector"):
            if cfg.detector:
                from ..faces.detect import load_detector
                detector = load_detector(cfg.detector, device="cpu")
        records = build_index(cfg.data, detector, cfg.landmarks, os.path.join(cfg.out, "faces.json"),
                              ranks=self.ranks)
        log.info("%d training faces in %s", len(records), cfg.data)
        return FaceDataset(cfg.data, records, cfg.resolution, self.c.expression is not None, cfg.crop)

    def _init_mapping(self):
        from ..models.mapping import MappingNetwork
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.cfg.seed, -1))
            # PyTorch's default init, null_exp = 0 as the official module; one output per word for all encoders
            mapping = MappingNetwork(token_dim=self.family.token_width)
        path = self.cfg.init_mapping
        if path:
            from ..errors import CheckpointError
            from ..weights.checkpoint import load_mapping
            found = load_mapping(path)  # the nodes' reader: the family from the shapes, checked against metadata
            if found.family.name != self.family.name:
                raise CheckpointError(
                    f"{path}: this mapping is for {found.family.label} checkpoints, not {self.family.label}. Give a "
                    f"mapping trained with --base {self.family.name}, or leave out --init-mapping.")
            mapping.load_state_dict(found.state_dict, strict=True)
        return mapping

    # ---- data -------------------------------------------------------------------------------
    def batches(self, start_step: int):
        """This rank's micro-batches from optimizer step `start_step` on (endless)."""
        return self.loader(self.dataset, start_step, self.cfg.flip)

    # ---- one step -----------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, batch, gens: list):
        """Frozen parts: latents, identity features, expression, latent-size face mask."""
        dev, vae = self.device, self.parts.vae
        pixels = batch["sd"].to(dev).float() / 127.5 - 1.0
        with self.autocast():
            dist = vae.encode(pixels.to(vae.dtype)).latent_dist
        eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens]).to(dev)
        latents = (dist.mean.float() + dist.std.float() * eps) * self.parts.latent_scale
        features = self.c.msid(to_msid_pixels(batch["id"]).to(dev))
        expression = self.c.expression(batch["exp"]).to(dev) if self.c.expression is not None else None
        mask = None
        if self.cfg.loss != "reconstruction":
            mask = self.c.parser.face_mask(batch["sd"]) if self.c.parser is not None else batch["mask"]
            mask = F.interpolate(mask.to(dev).float(), latents.shape[2:], mode="area")
        return latents, features, expression, mask

    def loss(self, batch, step: int, micro: int = 0) -> torch.Tensor:
        """The loss of one micro-batch of this rank; each sample's randomness from (seed, sample number)."""
        samples = self.sample_numbers(step, micro, len(batch["index"]))
        gens = [sample_generator(self.cfg.seed, k) for k in samples]  # per sample: VAE eps, noise, t, dropout
        latents, features, expression, mask = self._encode(batch, gens)
        dev, steps = self.device, self.noise.config.num_train_timesteps
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(dev)
        t = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in gens]).to(dev)
        keep = torch.cat([expression_keep_mask(1, self.cfg.expression_dropout, g) for g in gens]).to(dev)
        z_t = self.noise.add_noise(latents, noise, t)
        time_ids = batch["time_ids"].to(dev) if self.family.time_ids else None
        target = noise if self.parts.prediction_type == "epsilon" else self.noise.get_velocity(latents, noise, t)
        dropout_seeds = [sample_seed(self.cfg.seed, k) ^ 0x5DEECE66D for k in samples]
        s1, s2 = self.model(features, expression, keep if expression is not None else None, dropout_seeds)
        b = latents.shape[0]
        unet = self.parts.unet
        with self.autocast():
            cond, pooled = self.prompt.identity(s1, s2)
            pred = unet(z_t.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype),
                        added_cond_kwargs=self._added(pooled, time_ids)).sample
            class_pred = None
            if self.cfg.loss == "cgdr":
                with torch.no_grad():
                    ctx = self.class_cond.expand(b, -1, -1).to(unet.dtype)
                    added = self._added(None if self.class_pooled is None else self.class_pooled.expand(b, -1),
                                        time_ids)
                    class_pred = unet(z_t.to(unet.dtype), t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        return diffusion_loss(self.cfg.loss, pred.float(), target.float(), class_pred, mask)

    def _added(self, pooled, time_ids):
        """The UNet's extra conditioning: SDXL's pooled bigG output and the sample's time ids; None for SD1.x."""
        if not self.family.time_ids:
            return None
        dtype = self.parts.unet.dtype
        return {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}

    # ---- saving --------------------------------------------------------------------------------
    def export(self):
        """SD1.x: mapping.pt and .safetensors in the official layout; other families: mapping_<family>.safetensors in
        the F2D family format (export.save_family_mapping), the training settings in its metadata."""
        from .export import save_family_mapping, save_official
        out = self.cfg.out

        def write(folder, stem=None, metadata=None):
            if self.family.name == "sd1":
                return save_official(self.mapping, "mapping", folder, stem, metadata=metadata)
            # mapping_sdxl.safetensors: the name the README and the SDXL workflow give, beside the SD1 mapping.pt
            return save_family_mapping(self.mapping, self.family, folder, stem or f"mapping_{self.family.name}",
                                       trigger=TRIGGER,
                                       msid_sha256=self.msid_sha256, training=self.training_settings())
        write(out, metadata={"step": self.step})
        if self.cfg.snapshot_every and self.step % self.cfg.snapshot_every == 0:
            snaps = os.path.join(out, "checkpoints")
            os.makedirs(snaps, exist_ok=True)
            write(snaps, f"mapping_step{self.step:07d}")

    def training_settings(self) -> dict:
        """What the exported file says about how it was trained."""
        cfg = self.cfg
        return {"base": cfg.base, "base_checkpoint": os.path.basename(os.path.normpath(cfg.sd)) if cfg.sd else "",
                "msid": os.path.basename(cfg.msid) if cfg.msid else "", "step": self.step, "steps": cfg.steps,
                "resolution": cfg.resolution, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "weight_decay": cfg.weight_decay, "warmup_steps": cfg.warmup_steps, "max_grad_norm": cfg.max_grad_norm,
                "loss": cfg.loss, "loss_weights": "CGDR Eq. 7: face mask M on the noise, 1 - M on the class prediction"
                if cfg.loss == "cgdr" else "", "expression_dropout": cfg.expression_dropout,
                "expression_model": self.c.expression is not None, "face_parsing": self.c.parser is not None,
                "prompt": cfg.prompt, "class_prompt": cfg.class_prompt, "crop": cfg.crop, "flip": cfg.flip,
                "precision": self.precision, "seed": cfg.seed, "world_size": self.ranks.world}

    # ---- samples ---------------------------------------------------------------------------------
    @torch.no_grad()
    def write_samples(self):
        from PIL import Image

        from .sampling import generate, grid
        cfg = self.cfg
        n = min(cfg.sample_faces, len(self.dataset))
        if n < 1 or not cfg.sample_prompts:
            return None
        items = [self.dataset[(i, False)] for i in range(n)]
        feats = self.c.msid(to_msid_pixels(torch.stack([it["id"] for it in items])).to(self.device))
        self.mapping.eval()
        try:
            s1, s2 = self.mapping(feats)  # null_exp: the inference setting
            uncond, uncond_pooled = self.prompt_encoder("").encode()
            rows = [[it["sd"].permute(1, 2, 0).numpy()] for it in items]
            for p in cfg.sample_prompts:
                with self.autocast():
                    cond, pooled = self.prompt_encoder(p).identity(s1, s2)
                imgs = generate(self.parts, cond, uncond, cfg.resolution, cfg.sample_steps, cfg.sample_cfg,
                                seed=cfg.seed, autocast=self.autocast(), pooled=pooled, uncond_pooled=uncond_pooled)
                for r, im in zip(rows, imgs):
                    r.append(im)
        finally:
            self.mapping.train()
        folder = os.path.join(cfg.out, "samples")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"step{self.step:07d}.png")
        Image.fromarray(grid(rows)).save(path)
        return path

    def periodic(self, last: bool):
        every = self.cfg.sample_every
        if every and (self.step % every == 0 or last):
            self.write_samples()
