"""Training the mapping network f_map (paper §3.3-3.4, §4.1).

Only the two mapping MLPs and null_exp learn; MSID, the expression regressor, the face
parser and all of Stable Diffusion are frozen. One step, per sample:

    features = MSID(ArcFace crop)                      frozen
    exp      = f_exp(Deep3DFaceRecon crop)             frozen; null_exp with probability 0.2 (Eq. 4)
    S1*, S2* = f_map(features ++ exp)                  trained
    z_0      = VAE(SD crop) · 0.18215, z_t = noised z_0 at a uniform t, ε the noise
    ε_S      = UNet(z_t, t, CLIP("a photo of f l" with S* injected as at inference))
    ε_class  = UNet(z_t, t, CLIP("a photo of a person"))           no gradient
    loss     = CGDR (Eq. 7) with the face mask M, or the ablations Eq. 1 / Eq. 8 (losses.py)

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

import torch
import torch.nn.functional as F

from ..errors import F2DError

from . import runtime
from .conditioning import CLASS_PROMPT, TRAIN_PROMPT, PromptEncoder
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
    resolution: int = 512
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
RESUME_KEYS = ("batch_size", "seed", "loss", "resolution", "crop", "flip", "prompt",
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
        self.setup_runtime(cfg)
        self.title = f"mapping ({cfg.loss})"
        with self.ranks.guard("loading the models"):  # every rank loads its own copy of the frozen models
            if components is None:
                self._check_paths()
            self.c = components or self._load_components()
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
        tok = self.parts.tokenizer
        self.prompt = PromptEncoder(self.parts.text_encoder, cfg.prompt, tok)
        self.class_prompt = PromptEncoder(self.parts.text_encoder, cfg.class_prompt, tok)
        if not self.prompt.has_trigger:
            raise F2DError(f"--prompt {cfg.prompt!r} does not contain the trigger 'f l' (where S* goes), e.g. "
                           "'a photo of f l'.")
        with torch.no_grad(), self.autocast():
            self.class_cond = self.class_prompt.plain().detach()

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
        parts = load_sd(cfg.sd, cfg.tokenizer)
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
            mapping = MappingNetwork()  # PyTorch's default init, null_exp = 0 as the official module
        if self.cfg.init_mapping:
            from ..weights.checkpoint import load_checkpoint
            mapping.load_state_dict(load_checkpoint(self.cfg.init_mapping, "mapping"), strict=True)
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
        target = noise if self.parts.prediction_type == "epsilon" else self.noise.get_velocity(latents, noise, t)
        dropout_seeds = [sample_seed(self.cfg.seed, k) ^ 0x5DEECE66D for k in samples]
        s1, s2 = self.model(features, expression, keep if expression is not None else None, dropout_seeds)
        b = latents.shape[0]
        unet = self.parts.unet
        with self.autocast():
            cond = self.prompt.with_identity(s1, s2)
            pred = unet(z_t.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample
            class_pred = None
            if self.cfg.loss == "cgdr":
                with torch.no_grad():
                    ctx = self.class_cond.expand(b, -1, -1).to(unet.dtype)
                    class_pred = unet(z_t.to(unet.dtype), t, encoder_hidden_states=ctx).sample
        return diffusion_loss(self.cfg.loss, pred.float(), target.float(), class_pred, mask)

    # ---- saving --------------------------------------------------------------------------------
    def export(self):
        from .export import save_official
        out = self.cfg.out
        save_official(self.mapping, "mapping", out, metadata={"step": self.step})
        if self.cfg.snapshot_every and self.step % self.cfg.snapshot_every == 0:
            snaps = os.path.join(out, "checkpoints")
            os.makedirs(snaps, exist_ok=True)
            save_official(self.mapping, "mapping", snaps, f"mapping_step{self.step:07d}")

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
            uncond = PromptEncoder(self.parts.text_encoder, "", self.parts.tokenizer).plain()
            rows = [[it["sd"].permute(1, 2, 0).numpy()] for it in items]
            for p in cfg.sample_prompts:
                with self.autocast():
                    cond = PromptEncoder(self.parts.text_encoder, p, self.parts.tokenizer).with_identity(s1, s2)
                imgs = generate(self.parts, cond, uncond, cfg.resolution, cfg.sample_steps, cfg.sample_cfg,
                                seed=cfg.seed, autocast=self.autocast())
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
