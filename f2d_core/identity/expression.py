"""Expression from a reference photo: Deep3DFaceRecon's coefficient regressor (paper §3.3, Fig. 8).

The paper's f_exp is the 3D face reconstruction network of Deng et al. 2019; the public
PyTorch port (sicxu/Deep3DFaceRecon_pytorch) releases it as `epoch_20.pth`, whose
`net_recon` entry this module loads unchanged. The network is a ResNet-50 (torchvision
v1.5 layout, BatchNorm in eval) whose global-pooled 2048-d feature goes through seven
1x1-conv heads: 80 identity, 64 expression, 80 texture, 3 angles, 27 lighting, 2 + 1
translation = 257 coefficients. The 64 expression coefficients are the mapping
network's expression input.

Its input is its own crop, not the ArcFace one: 5 points (y flipped up) are fitted to a
3D template by a scaled orthographic least-squares fit, the whole photo is rescaled by
102 / scale with PIL bicubic, and a 224x224 window around the fitted centre is cut out;
pixels are RGB in [0, 1], no mean or std.

The authors of Face2Diffusion did not publish how they normalised these coefficients
for training, so reference expressions are experimental (see README).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..models.deep3d import EXP_SLICE, ReconNet
from ..weights.checkpoint import load_checkpoint
from ..errors import F2DError, NoFaceError
from ..faces.images import as_list, to_rgb_uint8
from .bounds import EXPRESSION_LIMIT, require_finite
from .picking import MIN_FACE_PX, CropSpec, pick_faces

# the Expression node has one reference input: a batch of photos must already share a size
REFERENCE_BATCH_FIX = ("Batch only photos of the same size as the first (or crop them alike first), or give one "
                       "reference photo.")

RECON_SIZE = 224
RESCALE_FACTOR = 102.0
FULL_RESIZE_LIMIT = 16_000_000  # pixels of the rescaled photo; larger ones are resampled in a window
# 5 points of BFM/similarity_Lm3D_all.mat (68 x 3, float32) reduced as load_lm3d does: eye corner
# means (36/39, 42/45), nose tip 30, mouth corners 48 and 54; x right, y up, z towards the camera
LM3D_TEMPLATE = np.array([
    [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
    [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
    [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
    [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
    [0.24846619367599487, -0.38128235936164856, 0.22235769033432007]], dtype=np.float32)


# ---- input crop ---------------------------------------------------------------------------

def recon_points(face) -> np.ndarray:
    """(5, 2) points for the crop: Deep3DFaceRecon's own 68 -> 5 reduction (eye corner means, nose
    tip 30, mouth corners 48/54) when the face has 68 landmarks, else the detector's 5 keypoints.
    Both are ordered eye (image left), eye (image right), nose, mouth left, mouth right."""
    if face.landmarks68 is None:
        return np.asarray(face.landmarks5, np.float32)
    l68 = np.asarray(face.landmarks68, np.float32)
    return np.stack([l68[[36, 39]].mean(0), l68[[42, 45]].mean(0), l68[30], l68[48], l68[54]])


def fit_template(points_y_up: np.ndarray) -> tuple[float, float, float]:
    """(tx, ty, scale) of the scaled orthographic projection of LM3D_TEMPLATE that best fits the
    points (least squares, x and y rows solved independently, y pointing up)."""
    X = np.concatenate([LM3D_TEMPLATE.astype(np.float64), np.ones((5, 1))], axis=1)
    kx = np.linalg.lstsq(X, points_y_up[:, 0].astype(np.float64), rcond=None)[0]
    ky = np.linalg.lstsq(X, points_y_up[:, 1].astype(np.float64), rcond=None)[0]
    return float(kx[3]), float(ky[3]), float((np.linalg.norm(kx[:3]) + np.linalg.norm(ky[:3])) / 2)


def _resize_crop(im, w: int, h: int, left: int, top: int) -> np.ndarray:
    """im.resize((w, h), BICUBIC).crop((left, top, left + 224, top + 224)), black outside.

    Bit-exact when the resized photo has at most FULL_RESIZE_LIMIT pixels. Beyond that (a small
    face in a large photo) only the window is resampled, from the matching source box: PIL then
    computes its filter positions from a shifted origin, which moves a few pixels by 1-2 levels,
    instead of allocating the huge resized photo.
    """
    n = RECON_SIZE
    if w * h <= FULL_RESIZE_LIMIT:
        return np.array(im.resize((w, h), Image.BICUBIC).crop((left, top, left + n, top + n)))
    crop = np.zeros((n, n, 3), np.uint8)
    x0, x1, y0, y1 = max(left, 0), min(left + n, w), max(top, 0), min(top + n, h)
    if x1 > x0 and y1 > y0:
        sx, sy = im.width / w, im.height / h
        box = (x0 * sx, y0 * sy, min(x1 * sx, im.width), min(y1 * sy, im.height))
        part = im.resize((x1 - x0, y1 - y0), Image.BICUBIC, box=box)
        crop[y0 - top:y1 - top, x0 - left:x1 - left] = np.asarray(part)
    return crop


def align_for_recon(image, landmarks5, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """(224x224x3 uint8 RGB crop, 3x3 matrix from source pixels to crop pixels) as Deep3DFaceRecon
    prepares a photo (util/preprocess.py align_img with target_size=224, rescale_factor=102)."""
    rgb = to_rgb_uint8(image, name)
    h0, w0 = rgb.shape[:2]
    pts = np.asarray(landmarks5, np.float32)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise F2DError(f"{name}: expected 5 finite (x, y) face landmarks, got shape {pts.shape}")
    up_pts = np.stack([pts[:, 0], np.float32(h0 - 1) - pts[:, 1]], axis=1)  # their y axis points up
    tx, ty, fit = fit_template(up_pts)
    if not fit > 1e-6:
        raise F2DError(f"{name}: the face landmarks are degenerate (all at one point): {pts.tolist()}")
    s = RESCALE_FACTOR / fit
    w, h = int(w0 * s), int(h0 * s)  # the size the whole photo is resized to (truncated, as theirs)
    if w < 1 or h < 1:
        raise F2DError(f"{name}: the face is too large for its crop (scale {s:.4f}); use a wider photo.")
    left = int(w / 2 - RECON_SIZE / 2 + (tx - w0 / 2) * s)
    top = int(h / 2 - RECON_SIZE / 2 + (h0 / 2 - ty) * s)
    crop = _resize_crop(Image.fromarray(rgb), w, h, left, top)
    # PIL samples output pixel X at source (X + 0.5) * w0 / w - 0.5 (pixel centres at integers)
    sx, sy = w0 / w, h0 / h
    matrix = np.array([[1 / sx, 0.0, 0.5 / sx - 0.5 - left], [0.0, 1 / sy, 0.5 / sy - 0.5 - top], [0, 0, 1]])
    return crop, matrix


def to_recon_pixels(crops) -> torch.Tensor:
    """Crop(s) (224,224,3) or (B,224,224,3) uint8 -> (B, 3, 224, 224) float32 RGB in [0, 1]."""
    a = np.asarray(crops)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (RECON_SIZE, RECON_SIZE, 3) or a.dtype != np.uint8:
        raise F2DError(f"expected Deep3DFaceRecon crops, uint8 (224, 224, 3) or (B, 224, 224, 3), got "
                       f"{a.dtype} {a.shape}. Crop the face first (align_for_recon).")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float() / 255.0


DEEP3D_CROP = CropSpec(
    RECON_SIZE, lambda rgb, face, name: align_for_recon(rgb, recon_points(face), name)[0],
    "{name}: without a face detector, expression images must be 224x224 Deep3DFaceRecon crops, but this one is "
    "{width}x{height}. Choose an insightface detector pack so the face is found and cropped.")


# ---- loading and use ----------------------------------------------------------------------

class ExpressionRegressor:
    """Photos -> Deep3DFaceRecon coefficients; `expression` gives the mapping network's 64-d input."""

    def __init__(self, net: ReconNet, path: str = "", batch_size: int = 16):
        self.net = net.eval().requires_grad_(False)
        self.path = os.fspath(path)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.net.final_layers[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.final_layers[0].weight.dtype

    def crops(self, images, detector=None, policy="largest", names=None, on_no_face="error",
              min_face_px=MIN_FACE_PX, progress=None, check_interrupt=None):
        """(crops uint8 (N, 224, 224, 3), one info dict per crop, skipped: [info]). detector: a
        detect.FaceDetector, or None when the images already are 224x224 Deep3DFaceRecon crops.
        The faces are picked as the identity pipeline picks them (picking.pick_faces: the same
        blank, saturated, no-face and min_face_px checks), errors prefixed "Expression reference: "."""
        batched = [k > 0 for k in range(images.shape[0])] if getattr(images, "ndim", 0) == 4 else None
        images = as_list(images)
        if not images:
            raise F2DError("no expression reference image was given; connect at least one photo.")
        names = list(names) if names else [f"expression image {i + 1} of {len(images)}" for i in range(len(images))]
        try:
            picked = pick_faces(images, detector, DEEP3D_CROP, policy, on_no_face, names, min_face_px, progress,
                                check_interrupt, batched, REFERENCE_BATCH_FIX)
        except NoFaceError as e:
            raise NoFaceError(f"Expression reference: {e}") from None
        return np.stack(picked.crops), picked.faces, picked.skipped

    @torch.inference_mode()
    def predict(self, crops) -> torch.Tensor:
        """224x224 crop(s) -> (N, 257) float32 coefficients on the CPU."""
        pixels = to_recon_pixels(crops)
        outs = [self.net(pixels[i:i + self.batch_size].to(self.device, self.dtype)).float().cpu()
                for i in range(0, len(pixels), self.batch_size)]
        return torch.cat(outs)

    def coefficients(self, images, detector=None, policy="largest", names=None, on_no_face="error",
                     **kw) -> torch.Tensor:
        """(N, 257) coefficients, one row per image with a face (see `crops` for the arguments)."""
        return self.predict(self.crops(images, detector, policy, names, on_no_face, **kw)[0])

    def expression(self, images, detector=None, policy="largest", names=None, on_no_face="error",
                   **kw) -> torch.Tensor:
        """(N, 64) expression coefficients; a reference for several photos is their mean over N."""
        return self.coefficients(images, detector, policy, names, on_no_face, **kw)[:, EXP_SLICE]


def load_expression_model(path, device="cpu", dtype=torch.float32) -> ExpressionRegressor:
    """Deep3DFaceRecon's epoch_20.pth (its `net_recon` entry), a bare state_dict or a .safetensors."""
    sd = load_checkpoint(path, "deep3d")
    with torch.device("meta"):
        net = ReconNet()
    net.load_state_dict(sd, strict=True, assign=True)
    return ExpressionRegressor(net.to(device=device, dtype=dtype), path)


def expression_from_strength(null_exp, reference, strength: float, name: str = "reference expression") -> torch.Tensor:
    """null_exp + strength * (reference - null_exp): 0 gives null_exp and 1 the reference, both
    exactly (torch.lerp), above 1 extrapolates. reference: (64,) or (B, 64); name: what the user
    calls it, for the messages."""
    null_exp, reference = torch.as_tensor(null_exp), torch.as_tensor(reference)
    if reference.shape[-1] != null_exp.shape[-1]:
        raise F2DError(f"the {name} has {reference.shape[-1]} values, null_exp {null_exp.shape[-1]}")
    if not np.isfinite(float(strength)):
        raise F2DError(f"expression strength must be a finite number, got {strength}")
    fix = ("Expression coefficients (Deep3DFaceRecon's 64, like the learned null_exp) lie within about +-10: "
           "paste them as Deep3DFaceRecon gives them; from a reference photo, download epoch_20.pth again.")
    require_finite([(name, reference, EXPRESSION_LIMIT, fix)])
    reference = reference.to(null_exp)
    out = torch.lerp(null_exp.expand_as(reference), reference, float(strength))
    require_finite([(f"the {name} at strength {float(strength):g}", out, EXPRESSION_LIMIT,
                     "Lower the strength (1 = the expression as given).")])
    return out
