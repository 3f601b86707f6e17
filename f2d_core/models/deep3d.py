"""Deep3DFaceRecon's coefficient regressor (Deng et al. 2019), the paper's f_exp (§3.3).

A ResNet-50 (torchvision v1.5 layout, BatchNorm in eval) whose global-pooled 2048-d feature
goes through seven 1x1-conv heads: 80 identity, 64 expression, 80 texture, 3 angles,
27 lighting, 2 + 1 translation = 257 coefficients. Attribute names are the keys of
`epoch_20.pth["net_recon"]` (sicxu/Deep3DFaceRecon_pytorch), so it loads strictly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# the 257 outputs in order (models/bfm.py split_coeff); "trans" comes from two heads (tx, ty) and (tz)
COEFFICIENTS = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans", 3))
HEADS = (80, 64, 80, 3, 27, 2, 1)
EXP_SLICE = slice(80, 144)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


# Written out, not torchvision.models.resnet50: PyPI's torchvision is a CUDA build whose ops fail to
# register beside the CPU torch wheel the tests and the CLI run on, and this is the engine's only use.
class ResNet50(nn.Module):
    """torchvision resnet50 without `fc`: (B, 3, H, W) -> (B, 2048, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
            stride = 1 if i == 0 else 2
            layer = [Bottleneck(inplanes, planes, stride)] + [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes * 4

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3), keepdim=True)


class ReconNet(nn.Module):
    """Deep3DFaceRecon's ReconNetWrapper(resnet50, use_last_fc=False): (B, 3, 224, 224) RGB in
    [0, 1] -> (B, 257) coefficients. Attribute names are the keys of epoch_20.pth["net_recon"]."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet50()
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, n, 1) for n in HEADS)

    def forward(self, x):
        x = self.backbone(x)
        return torch.cat([head(x) for head in self.final_layers], dim=1).flatten(1)


def split_coefficients(coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 257) -> {"id": (B, 80), "exp": (B, 64), "tex", "angle", "gamma", "trans"}."""
    out, i = {}, 0
    for name, n in COEFFICIENTS:
        out[name], i = coeffs[:, i:i + n], i + n
    return out
