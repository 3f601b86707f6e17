"""Face parsing (BiSeNet) for the face masks of CGDR: the paper's mask source.

The network is the one of zllrunning/face-parsing.PyTorch, written here from its
description with the same attribute names, so its public checkpoint `79999_iter.pth`
(trained on CelebAMask-HQ, 19 classes) loads strictly and unchanged: a ResNet-18 context
path with attention refinement at 1/16 and 1/32, a feature fusion module at 1/8 and
three output heads (only the main one is used at inference). Input: RGB, ImageNet mean
and std, 512×512 (what it was trained at); output: per-pixel class logits.

Classes (CelebAMask-HQ order): 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye,
6 eye_g (glasses), 7 l_ear, 8 r_ear, 9 ear_r (earring), 10 nose, 11 mouth, 12 u_lip,
13 l_lip, 14 neck, 15 neck_l (necklace), 16 cloth, 17 hair, 18 hat.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 19
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
# the face: skin, brows, eyes, glasses, ears, nose, mouth, lips (no hair, neck, clothes, hat, jewellery)
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13)
PARSING_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, ks=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


# The ResNet-18 blocks are written out rather than taken from torchvision.models for the reason in
# models/deep3d.py (no torchvision that imports beside the CPU torch the tests pin).
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(r + (x if self.downsample is None else self.downsample(x)))


class Resnet18(nn.Module):
    """(B, 3, H, W) -> features at 1/8, 1/16, 1/32."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x):
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        att = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))
        return feat * att


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        avg = self.conv_avg(f32.mean((2, 3), keepdim=True))
        f32 = self.arm32(f32) + avg  # broadcast = nearest upsampling of a 1x1 map
        f32_up = self.conv_head32(F.interpolate(f32, f16.shape[2:], mode="nearest"))
        f16 = self.arm16(f16) + f32_up
        f16_up = self.conv_head16(F.interpolate(f16, f8.shape[2:], mode="nearest"))
        return f8, f16_up, f32_up


class FeatureFusion(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], 1))
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * att + feat


class Head(nn.Module):
    def __init__(self, cin, mid, n_classes):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """(B, 3, H, W) normalised RGB -> (B, 19, H, W) logits of the main head."""

    def __init__(self, n_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, n_classes)
        # auxiliary heads: in the checkpoint, unused at inference
        self.conv_out16 = Head(128, 64, n_classes)
        self.conv_out32 = Head(128, 64, n_classes)

    def forward(self, x):
        f8, f16_up, _ = self.cp(x)
        out = self.conv_out(self.ffm(f8, f16_up))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


class FaceParser:
    """Face masks from RGB crops with a BiSeNet."""

    def __init__(self, net: BiSeNet, classes=FACE_CLASSES, size: int = PARSING_SIZE):
        self.net = net.eval().requires_grad_(False)
        self.classes = tuple(int(c) for c in classes)
        self.size = int(size)

    @property
    def device(self):
        return self.net.cp.resnet.conv1.weight.device

    @torch.no_grad()
    def face_mask(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 RGB -> (B, 1, H, W) float mask, 1 where the class is a face class."""
        h, w = images.shape[2:]
        x = images.to(self.device, torch.float32) / 255.0
        if (h, w) != (self.size, self.size):
            x = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
        labels = self.net((x - mean) / std).argmax(1, keepdim=True)
        mask = torch.isin(labels, torch.tensor(self.classes, device=labels.device)).float()
        if (h, w) != (self.size, self.size):
            mask = F.interpolate(mask, (h, w), mode="nearest")
        return mask


def load_parser(path, device="cpu", classes=FACE_CLASSES, size: int = PARSING_SIZE) -> FaceParser:
    """zllrunning/face-parsing.PyTorch's 79999_iter.pth (or the same weights as .safetensors)."""
    import os

    from ..weights.checkpoint import read_state_dict
    from ..errors import CheckpointError
    sd = read_state_dict(path)
    with torch.device("meta"):
        net = BiSeNet()
    want = net.state_dict()
    for k in want.keys() - sd.keys():  # checkpoints from torch < 0.4.1 lack these counters
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0, dtype=torch.long)
    missing, unexpected = want.keys() - sd.keys(), sd.keys() - want.keys()
    wrong = [k for k in want.keys() & sd.keys() if tuple(sd[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{os.fspath(path)}: not the BiSeNet face-parsing checkpoint this trainer reads (79999_iter.pth of "
            f"zllrunning/face-parsing.PyTorch): {len(missing)} keys missing (e.g. {sorted(missing)[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]}), {len(wrong)} with other shapes. "
            "Use that file, or leave --parsing out to fall back to landmark masks.")
    net.load_state_dict(sd, strict=True, assign=True)
    return FaceParser(net.to(device=device, dtype=torch.float32), classes, size)
