"""The face recognisers the paper grades identity with (§4.2, E.3), as plain nn.Modules whose
attribute names are the published checkpoints' keys, so their weights load strictly:

- FaceNet: InceptionResnetV1 in the key layout of facenet-pytorch (timesler/facenet-pytorch,
  the paper's [3]) and its VGGFace2 weights `20180402-114759-vggface2.pt`; 512-d embeddings of a
  160x160 RGB crop in (x - 127.5) / 128.
- AdaFace: the IR-50 / IR-101 backbones of the official AdaFace code (mk-minchul/AdaFace, the
  paper's [27]), whose checkpoints hold them under `model.`; 512-d embeddings of a 112x112 BGR
  ArcFace-aligned crop in (x / 255 - 0.5) / 0.5.
- SphereFace: sphere20a of clcarwin/sphereface_pytorch (the paper's [5]) and its published
  `sphere20a_20171020.pth`; the 512-d fc5 output for a 112x96 BGR crop in (x - 127.5) / 128.

Written for this project from the published architectures; only the classifier heads of the
checkpoints (FaceNet's `logits`, AdaFace's `head`, SphereFace's `fc6`) are not built here: the
metric needs the embedding, not the training classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# --- FaceNet: InceptionResnetV1 ----------------------------------------------------------------

class ConvBN(nn.Module):
    """facenet-pytorch's BasicConv2d (keys `conv`, `bn`): conv without bias, BN (TensorFlow's eps), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _chain(*convs) -> nn.Module:
    return convs[0] if len(convs) == 1 else nn.Sequential(*convs)


class Branches(nn.Module):
    """Parallel branches `branch0`, `branch1`, ... concatenated along the channels (Mixed_6a/7a)."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.n = len(branches)
        for i, b in enumerate(branches):
            self.add_module(f"branch{i}", b)

    def forward(self, x):
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n)], 1)


class InceptionResidual(Branches):
    """Block35 / Block17 / Block8: the branches, a 1x1 `conv2d` back to the input width, scaled and
    added to the input, then ReLU (not after the last Block8)."""

    def __init__(self, width: int, branches, scale: float, relu: bool = True):
        super().__init__(*branches)
        self.conv2d = nn.Conv2d(sum(_out_channels(b) for b in branches), width, 1)
        self.scale, self.relu = scale, relu

    def forward(self, x):
        out = x + self.scale * self.conv2d(super().forward(x))
        return F.relu(out) if self.relu else out


def _out_channels(branch: nn.Module) -> int:
    last = branch[-1] if isinstance(branch, nn.Sequential) else branch
    return last.conv.out_channels


def block35(scale=0.17):
    return InceptionResidual(256, [ConvBN(256, 32, 1),
                                   _chain(ConvBN(256, 32, 1), ConvBN(32, 32, 3, padding=1)),
                                   _chain(ConvBN(256, 32, 1), ConvBN(32, 32, 3, padding=1),
                                          ConvBN(32, 32, 3, padding=1))], scale)


def block17(scale=0.10):
    return InceptionResidual(896, [ConvBN(896, 128, 1),
                                   _chain(ConvBN(896, 128, 1), ConvBN(128, 128, (1, 7), padding=(0, 3)),
                                          ConvBN(128, 128, (7, 1), padding=(3, 0)))], scale)


def block8(scale=0.20, relu=True):
    return InceptionResidual(1792, [ConvBN(1792, 192, 1),
                                    _chain(ConvBN(1792, 192, 1), ConvBN(192, 192, (1, 3), padding=(0, 1)),
                                           ConvBN(192, 192, (3, 1), padding=(1, 0)))], scale, relu)


class InceptionResnetV1(nn.Module):
    """FaceNet (Schroff et al. 2015) as facenet-pytorch builds it; forward gives L2-normalised (N, 512)."""

    input_size = 160

    def __init__(self):
        super().__init__()
        self.conv2d_1a = ConvBN(3, 32, 3, stride=2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.conv2d_4b = ConvBN(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*[block35() for _ in range(5)])
        self.mixed_6a = Branches(ConvBN(256, 384, 3, stride=2),
                                 _chain(ConvBN(256, 192, 1), ConvBN(192, 192, 3, padding=1),
                                        ConvBN(192, 256, 3, stride=2)),
                                 nn.MaxPool2d(3, stride=2))
        self.repeat_2 = nn.Sequential(*[block17() for _ in range(10)])
        self.mixed_7a = Branches(_chain(ConvBN(896, 256, 1), ConvBN(256, 384, 3, stride=2)),
                                 _chain(ConvBN(896, 256, 1), ConvBN(256, 256, 3, stride=2)),
                                 _chain(ConvBN(896, 256, 1), ConvBN(256, 256, 3, padding=1),
                                        ConvBN(256, 256, 3, stride=2)),
                                 nn.MaxPool2d(3, stride=2))
        self.repeat_3 = nn.Sequential(*[block8() for _ in range(5)])
        self.block8 = block8(scale=1.0, relu=False)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=1e-3)

    def forward(self, x):
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "conv2d_4b",
                     "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8"):
            x = getattr(self, name)(x)
        x = self.last_bn(self.last_linear(x.mean(dim=(2, 3))))  # global average pool; dropout is off in eval
        return F.normalize(x, dim=1)


# --- AdaFace: IR backbones ----------------------------------------------------------------------

class IRBlock(nn.Module):
    """AdaFace's BasicBlockIR: res_layer (BN, 3x3, BN, PReLU, 3x3 with the stride, BN) plus the
    shortcut (a strided 1x1 conv + BN when the width changes, else subsampling)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.shortcut_layer = (nn.MaxPool2d(1, stride) if cin == cout else
                               nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(cout), nn.PReLU(cout),
                                       nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


IR_UNITS = {50: (3, 4, 14, 3), 101: (3, 13, 30, 3)}  # blocks per stage; AdaFace's "100" layers is IR-101
IR_WIDTHS = (64, 128, 256, 512)


class IRBackbone(nn.Module):
    """AdaFace IR-50 / IR-101 for 112x112 inputs; forward gives L2-normalised (N, 512)."""

    input_size = 112

    def __init__(self, depth: int = 101):
        super().__init__()
        self.depth = depth
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks, cin = [], 64
        for units, width in zip(IR_UNITS[depth], IR_WIDTHS):
            for i in range(units):
                blocks.append(IRBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=False))

    def forward(self, x):
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


# --- SphereFace: sphere20a ----------------------------------------------------------------------

SPHERE_STAGES = ((3, 64), (64, 128), (128, 256), (256, 512))
SPHERE_PAIRS = (1, 2, 4, 1)  # residual units (two 3x3 convs each) after each stage's strided conv


class Sphere20a(nn.Module):
    """sphere20a (Liu et al. 2017) as clcarwin/sphereface_pytorch builds it: per stage a strided
    3x3 conv `convS_1` + PReLU `reluS_1`, then residual pairs (convS_2k, convS_2k+1); fc5 -> 512.
    Input 112 high, 96 wide; forward gives the fc5 features (N, 512), not normalised."""

    input_size = (112, 96)

    def __init__(self):
        super().__init__()
        for s, ((cin, cout), pairs) in enumerate(zip(SPHERE_STAGES, SPHERE_PAIRS), start=1):
            self.add_module(f"conv{s}_1", nn.Conv2d(cin, cout, 3, 2, 1))
            self.add_module(f"relu{s}_1", nn.PReLU(cout))
            for j in range(2, 2 + 2 * pairs):
                self.add_module(f"conv{s}_{j}", nn.Conv2d(cout, cout, 3, 1, 1))
                self.add_module(f"relu{s}_{j}", nn.PReLU(cout))
        self.fc5 = nn.Linear(512 * 7 * 6, 512)

    def _unit(self, s, j, x):
        return getattr(self, f"relu{s}_{j}")(getattr(self, f"conv{s}_{j}")(x))

    def forward(self, x):
        for s, pairs in enumerate(SPHERE_PAIRS, start=1):
            x = self._unit(s, 1, x)
            for j in range(2, 2 + 2 * pairs, 2):
                x = x + self._unit(s, j + 1, self._unit(s, j, x))
        return self.fc5(x.flatten(1))
