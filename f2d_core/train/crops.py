"""The image crops a training sample is cut into, from one face's landmarks.

- the Stable Diffusion crop (`sd_crop_matrix`): FFHQ's alignment (Karras et al. 2019,
  `recreate_aligned_images` of NVlabs/ffhq-dataset), the preprocessing of the faces the
  paper trains on. From the eye centres and mouth corners: a square centred a little below
  the eyes, rotated with the eye line, of side max(4·|eye-to-eye|, 3.6·|eye-to-mouth|),
  resized to the SD resolution (512). Already FFHQ-aligned photos come out (nearly)
  unchanged.
- the MSID crop: the engine's ArcFace 112×112 alignment (`f2d_core.faces.align`), exactly as at
  inference.
- the expression crop: Deep3DFaceRecon's own 224×224 crop (`f2d_core.identity.expression`).

FFHQ pads outside the photo by reflection and blurs the padding; we reflect without the
blur. Large reductions are made by an area resize first, as FFHQ's "shrink" step does.
"""
from __future__ import annotations

import cv2
import numpy as np


def ffhq_quad(landmarks5) -> np.ndarray:
    """(4, 2) corners (top-left, bottom-left, bottom-right, top-right) of FFHQ's crop square,
    from 5 points ordered eye (image left), eye (image right), nose, mouth left, mouth right."""
    lm = np.asarray(landmarks5, np.float64)
    eye_left, eye_right, mouth_left, mouth_right = lm[0], lm[1], lm[3], lm[4]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not norm > 1e-6:
        raise ValueError(f"degenerate face landmarks for the FFHQ crop: {lm.tolist()}")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def sd_crop_matrix(landmarks5, size: int) -> np.ndarray:
    """2x3 affine matrix from source pixels to the size x size FFHQ crop (pixel centres at
    integers, as cv2.warpAffine expects)."""
    q = ffhq_quad(landmarks5)
    # landmarks are pixel-centre coordinates; FFHQ maps quad + 0.5 (continuous) onto the square
    src = (q[[0, 1, 3]] + 0.5).astype(np.float32)
    dst = np.array([[0, 0], [0, size], [size, 0]], np.float32)
    a = cv2.getAffineTransform(src, dst).astype(np.float64)
    # shift both sides by half a pixel: dst_pix = A (src_pix + 0.5) + b - 0.5
    a[:, 2] += a[:, :2] @ [0.5, 0.5] - 0.5
    return a


def warp(image: np.ndarray, matrix: np.ndarray, size: int, interpolation=cv2.INTER_LINEAR,
         border=cv2.BORDER_REFLECT) -> np.ndarray:
    """Warp `image` by a 2x3 source->crop matrix into size x size; an area pre-shrink first
    when the crop reduces the image by more than 2x (no aliasing)."""
    matrix = np.asarray(matrix, np.float64)[:2]
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    shrink = int(np.floor(0.5 / scale)) if scale > 0 else 1
    if shrink > 1 and min(image.shape[:2]) // shrink >= 8:
        h, w = image.shape[:2]
        small = cv2.resize(image, (w // shrink, h // shrink), interpolation=cv2.INTER_AREA)
        sx, sy = w / (w // shrink), h / (h // shrink)
        # a small-image pixel centre p_s sits at source (p_s + 0.5) * s - 0.5
        to_source = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        matrix = (np.vstack([matrix, [0, 0, 1]]) @ to_source)[:2]
        image = small
    return cv2.warpAffine(image, matrix, (size, size), flags=interpolation, borderMode=border)


def transform_points(points, matrix) -> np.ndarray:
    """(N, 2) points through a 2x3 (or 3x3) affine matrix."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)[:2]
    return p @ m[:, :2].T + m[:, 2]


def crop_time_ids(matrix, shape, size: int, flipped: bool = False) -> np.ndarray:
    """SDXL's size and crop conditioning of one training crop (SDXL paper §2.2, diffusers
    `add_time_ids`): (original height, original width, crop top, crop left, target height,
    target width), whole pixels.

    SDXL was trained on photos resized by a factor s and cropped; the crop's top-left corner,
    measured in the resized photo, is the crop conditioning. Our crops are a similarity transform
    of the photo (`matrix`, source -> crop), so: s is its scale, the corner is where the crop's
    top-left corner lies in the photo, times s, and 0 where the crop reaches past the photo (the
    reflected border). A flipped sample is the crop of the mirrored photo: its left is measured
    from the photo's other side. Original size = the photo's size, target size = the crop's."""
    h, w = shape[:2]
    m = np.asarray(matrix, np.float64)[:2]
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    # the crop's continuous corner (-0.5, -0.5 in pixel-centre coordinates) back in the photo, continuous
    corner = np.linalg.solve(m[:, :2], np.array([-0.5, -0.5]) - m[:, 2]) + 0.5
    left, top = corner * scale
    if flipped:
        left = w * scale - size - left
    return np.array([h, w, max(0.0, round(top)), max(0.0, round(left)), size, size], np.float32)
