"""MSID pre-training (paper §3.2, Eq. 3): a face-recognition ViT trained with the ArcFace
loss on its *concatenated* multi-scale feature.

The encoder is the engine's MSIDEncoder (ViT-S/8 at 112, taps after blocks 3, 6, 9, 12,
each through its BatchNorm + LayerNorm neck), trained from scratch or from --init. The
four 384-d taps are concatenated to 1536 dims and classified by an ArcFace head (s = 64,
m = 0.5, ArcFace's defaults), so every depth has to separate identities, not only the
last. Data: one folder per person, ArcFace-aligned 112×112 crops (or photos plus a
detector). The paper's batch 1024 and learning rate 1e-3 are the defaults; the optimizer
(AdamW, weight decay 0.1), warm-up and cosine decay are insightface's ViT recipe, which
the paper does not contradict. Output: msid.pt in the official layout (+ .safetensors).

Under torchrun each rank normalises its own micro-batches in the BatchNorm necks and rank
0's running statistics are saved (as insightface's DDP recipe), so a run continues only on
the same number of ranks.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..errors import F2DError

from .loop import BaseTrainer
from .losses import ArcFaceHead

log = logging.getLogger(__name__)


@dataclass
class MSIDConfig:
    data: str = ""
    out: str = ""
    detector: str | None = None
    landmarks: str | None = None
    init: str | None = None
    steps: int = 100_000
    batch_size: int = 1024
    micro_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    schedule: str = "cosine"
    max_grad_norm: float = 5.0
    scale: float = 64.0
    margin: float = 0.5
    flip: bool = True
    precision: str = "auto"
    device: str = "auto"
    workers: int = 8
    seed: int = 0
    save_every: int = 1000
    progress: bool = True

    def check(self):
        if self.schedule not in ("cosine", "constant"):
            raise F2DError(f"--schedule must be cosine or constant, got {self.schedule!r}")
        micro = self.micro_batch_size or self.batch_size
        if self.steps < 1 or micro < 1 or self.batch_size % micro:
            raise F2DError(f"--batch-size {self.batch_size} must be a positive multiple of --micro-batch-size {micro}")


class EncoderWithHead(torch.nn.Module):
    """MSID and its ArcFace head as one module (what DDP wraps): crops -> the Eq. 3 loss. The
    encoder runs under `autocast`, the head in fp32."""

    def __init__(self, msid: torch.nn.Module, head: ArcFaceHead, autocast):
        super().__init__()
        self.msid, self.head, self.autocast = msid, head, autocast

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            features = self.msid(pixels)
        return self.head(features.float(), labels)


def init_vit(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """timm's ViT initialisation: truncated normal (std 0.02) for linear layers and the position
    and class embeddings, zero biases, unit norms."""
    g = torch.Generator().manual_seed(seed)

    def trunc(t):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=g).clamp_(-2, 2) * 0.02)

    for name, p in model.named_parameters():
        if name in ("cls_token", "pos_embed") or (p.ndim >= 2):
            trunc(p)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.ones_(p)
    return model


class MSIDTrainer(BaseTrainer):
    resume_keys = ("batch_size", "micro_batch_size", "seed", "flip", "scale", "margin", "schedule", "lr",
                   "weight_decay", "warmup_steps")
    title = "MSID (multi-scale ArcFace)"
    world_size_fixed_because = ("MSID's BatchNorm necks normalise each rank's micro-batches and keep rank 0's "
                                "running statistics, so on another number of ranks the run would not continue "
                                "the same way.")

    def __init__(self, cfg: MSIDConfig, dataset=None, num_classes: int | None = None):
        from ..models.msid import FEATURE_DIM, MSIDEncoder
        cfg.check()
        self.setup_runtime(cfg)
        if self.micro < 2:
            per = f" over {self.ranks.world} ranks" if self.ranks.distributed else ""
            raise F2DError(f"--batch-size {cfg.batch_size}{per} with --micro-batch-size {self.micro} puts "
                           f"{self.micro} sample in each forward pass, but MSID's BatchNorm necks need at least 2: "
                           "give a larger --batch-size or --micro-batch-size.")
        if cfg.schedule == "cosine":  # the decay is spread over --steps: it cannot change mid-run
            self.resume_keys = self.resume_keys + ("steps",)
        if dataset is None:
            with self.ranks.guard("reading the identity folders"):
                paths, labels, names = self._identities()
            dataset, num_classes = self._load_dataset(paths, labels, names)
        self.dataset, self.num_classes = dataset, int(num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.msid = init_vit(MSIDEncoder(), cfg.seed)
            self.head = ArcFaceHead(FEATURE_DIM, self.num_classes, cfg.scale, cfg.margin)
        with self.ranks.guard("loading --init"):
            if cfg.init:
                from ..weights.checkpoint import load_checkpoint
                self.msid.load_state_dict(load_checkpoint(cfg.init, "msid"), strict=True)
        self.msid.to(self.device).train()
        # timm's final LayerNorm is in the official file but no tap reads it: it gets no gradient, so
        # neither AdamW (weight decay) nor DDP touches it
        self.msid.norm.requires_grad_(False)
        self.head.to(self.device).train()
        self.trainable = {"msid": self.msid, "head": self.head}
        self.wrap(EncoderWithHead(self.msid, self.head, self.autocast))
        self.setup_optimizer(self.params(), cfg.schedule)

    def _identities(self):
        from .data import identity_folders
        cfg = self.cfg
        paths, labels, names = identity_folders(cfg.data)
        self._detector = None
        if cfg.detector:
            from ..faces.detect import load_detector
            self._detector = load_detector(cfg.detector, device="cpu")
        return paths, labels, names

    def _load_dataset(self, paths, labels, names):
        from .data import AlignedFaceDataset, FaceRecord, build_index
        cfg = self.cfg
        if cfg.detector or cfg.landmarks:
            records = build_index(cfg.data, self._detector, cfg.landmarks, os.path.join(cfg.out, "faces.json"),
                                  labels=labels, ranks=self.ranks)
        else:  # aligned 112x112 crops, the usual face-recognition data layout
            records = [FaceRecord(p, None, None, labels[p]) for p in paths]
        log.info("%d faces of %d people in %s", len(records), len(names), cfg.data)
        return AlignedFaceDataset(cfg.data, records), len(names)

    def batches(self, start_step: int):
        return self.loader(self.dataset, start_step, self.cfg.flip)

    def loss(self, batch, step: int, micro: int = 0) -> torch.Tensor:
        from .data import to_msid_pixels
        crops, labels = batch
        return self.model(to_msid_pixels(crops).to(self.device), labels.to(self.device))

    def export(self):
        from .export import save_official
        save_official(self.msid, "msid", self.cfg.out, metadata={"step": self.step})
