"""The training losses of Face2Diffusion, as plain tensor functions (paper §3.1-3.4, §4.3).

Notation: `pred` is the UNet's prediction for the noisy latent z_t with the identity prompt
("a photo of f l" with S* injected), `target` what it should predict (the added noise ε for
SD1.x's epsilon parameterisation, or the velocity for v-prediction models), `class_pred`
the prediction for the same z_t and t with the class prompt ("a photo of a person"), and
`mask` the face mask M at latent resolution, 1 on the face and 0 elsewhere (soft values
in between at the border). All losses are means over every element of the batch, so
their values are comparable with each other.

    Eq. 1  reconstruction      L = mean((ε - ε_θ(z_t, t, c))²)
    Eq. 8  masked (ablation)   L = mean(M ⊙ (ε - ε_θ(z_t, t, c))²)
    Eq. 7  CGDR                L = mean(M ⊙ (ε - ε_θ(z_t, t, c))²
                                        + (1 - M) ⊙ (sg[ε_θ(z_t, t, c_class)] - ε_θ(z_t, t, c))²)

CGDR (class-guided denoising regularisation) asks the identity prompt to denoise the face
like the photo and everything else like the class prompt would, so S* carries no
background. For a binary mask it is the plain MSE to the composite target
M ⊙ ε + (1 - M) ⊙ ε_class. The class prediction is a target: no gradient flows into it.
"""
from __future__ import annotations

import torch

LOSSES = ("cgdr", "reconstruction", "masked")


def _check(pred, target, mask=None):
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is not None:
        if mask.ndim != pred.ndim or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] \
                or mask.shape[1] not in (1, pred.shape[1]):
            raise ValueError(f"mask {tuple(mask.shape)} does not fit the latents {tuple(pred.shape)}: "
                             "expected (B, 1, h, w) at latent resolution")


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: the plain latent-diffusion loss, mean((target - pred)²)."""
    _check(pred, target)
    return (target.float() - pred.float()).pow(2).mean()


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 8: the reconstruction loss inside the face mask only, mean(M ⊙ (target - pred)²)."""
    _check(pred, target, mask)
    return (mask.float() * (target.float() - pred.float()).pow(2)).mean()


def cgdr_loss(pred: torch.Tensor, target: torch.Tensor, class_pred: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """Eq. 7: target inside the mask, the class prompt's (stop-gradient) prediction outside it."""
    _check(pred, target, mask)
    _check(pred, class_pred)
    m, pred = mask.float(), pred.float()
    face = m * (target.float() - pred).pow(2)
    background = (1 - m) * (class_pred.detach().float() - pred).pow(2)
    return (face + background).mean()


def diffusion_loss(kind: str, pred, target, class_pred=None, mask=None) -> torch.Tensor:
    """Dispatch on `kind` in LOSSES (the CLI's --loss)."""
    if kind == "reconstruction":
        return reconstruction_loss(pred, target)
    if kind == "masked":
        return masked_reconstruction_loss(pred, target, mask)
    if kind == "cgdr":
        return cgdr_loss(pred, target, class_pred, mask)
    raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")


def expression_keep_mask(batch: int, drop_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Eq. 4's expression dropout: (B,) float, 0 where the sample's expression is replaced by
    null_exp (probability `drop_prob`), 1 where it is kept. The mapping network mixes
    exp * mask + null_exp * (1 - mask)."""
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"expression dropout probability must be in [0, 1], got {drop_prob}")
    return (torch.rand(batch, generator=generator) >= drop_prob).float()


class ArcFaceHead(torch.nn.Module):
    """ArcFace (Deng et al. 2019) additive angular margin classifier, used by the MSID
    pre-training on the concatenated multi-scale feature (Eq. 3):

        logit_j = s · cos(θ_j + m·[j = y]),  cos θ_j = <f/|f|, W_j/|W_j|>,  L = CE(logits, y)

    Past θ > π - m, where cos(θ + m) stops decreasing, the target logit is
    s · (cos θ - m sin m) instead (insightface's convention), so the loss stays monotone."""

    def __init__(self, dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_classes, dim))
        torch.nn.init.normal_(self.weight, std=0.01)
        self.scale, self.margin = float(scale), float(margin)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features.float(), dim=1) @ \
            torch.nn.functional.normalize(self.weight.float(), dim=1).t()

    def logits(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import math
        cos = self.cosine(features).clamp(-1.0, 1.0)
        target = cos.gather(1, labels[:, None])
        sin = (1.0 - target.pow(2)).clamp_min(0.0).sqrt()
        m = self.margin
        with_margin = target * math.cos(m) - sin * math.sin(m)  # cos(θ + m)
        with_margin = torch.where(target > math.cos(math.pi - m), with_margin, target - math.sin(math.pi - m) * m)
        return self.scale * cos.scatter(1, labels[:, None], with_margin)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits(features, labels), labels)
