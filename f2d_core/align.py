"""Face alignment exactly as the official code does it (spec §1.4-1.5).

68 iBUG landmarks -> 5 points -> similarity fit to the ArcFace 112x112 template
(Umeyama least squares, no reflection, estimated in float32 like scikit-image on
float32 points) -> bilinear warp with a black border -> RGB pixels in [-1, 1].
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import F2DError
from .images import to_rgb_uint8

ALIGNED_SIZE = 112
# insightface's arcface_dst: eye (image-left), eye (image-right), nose tip, mouth corners
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def landmarks68_to_5(landmarks68) -> np.ndarray:
    """iBUG-68 -> 5 points: eye centres as 6-point means, nose tip 30, mouth corners 48 and 54."""
    l68 = np.asarray(landmarks68, dtype=np.float32)
    if l68.shape != (68, 2):
        raise F2DError(f"expected 68 (x, y) landmarks shaped (68, 2), got {l68.shape}")
    return np.stack([l68[36:42].mean(axis=0), l68[42:48].mean(axis=0), l68[30], l68[48], l68[54]])


def similarity_matrix(landmarks5, template=ARCFACE_TEMPLATE) -> np.ndarray:
    """3x3 similarity (rotation, uniform scale, translation) mapping landmarks5 onto template.

    Umeyama's least-squares solution with the reflection guard. Means, covariance and
    SVD are computed in the points' float32 precision and the rest in float64, which
    is what scikit-image's SimilarityTransform.estimate does for float32 input.
    """
    src = np.asarray(landmarks5, dtype=np.float32)
    dst = np.asarray(template, dtype=np.float32)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise F2DError(f"expected {len(dst)} (x, y) landmarks, got shape {src.shape}")
    if not np.isfinite(src).all():
        raise F2DError("face landmarks contain NaN or infinite values")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_d, dst_d = src - src_mean, dst - dst_mean
    A = dst_d.T @ src_d / len(src)
    d = np.ones(2)
    if np.linalg.det(A) < 0:
        d[1] = -1  # a reflection is never a valid face pose
    U, S, V = np.linalg.svd(A)
    if np.count_nonzero(S > S.max() * 2 * np.finfo(float).eps) < 2:
        raise F2DError(f"face landmarks are degenerate (all on one line or one point): {src.tolist()}")
    T = np.eye(3)
    T[:2, :2] = U @ np.diag(d) @ V
    scale = 1.0 / src_d.var(axis=0).sum() * (S @ d)
    T[:2, 2] = dst_mean - scale * (T[:2, :2] @ src_mean)
    T[:2, :2] *= scale
    return T


def warp(image, matrix, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Bilinear warp of an RGB uint8 image by a 3x3 affine matrix, black outside."""
    import cv2
    # the official warpPerspective(..., INTER_AREA) is bilinear for warps and equals this for affine M
    return cv2.warpAffine(image, np.asarray(matrix, dtype=np.float64)[:2], (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align_face(image, landmarks5, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """(aligned uint8 112x112x3 RGB, 3x3 matrix) for a face given by its 5 points."""
    rgb = to_rgb_uint8(image, name)
    matrix = similarity_matrix(landmarks5)
    return warp(rgb, matrix), matrix


def to_pixels(aligned) -> torch.Tensor:
    """Aligned uint8 face(s) (112,112,3) or (B,112,112,3) -> (B, 3, 112, 112) float32 in [-1, 1], RGB."""
    a = np.asarray(aligned)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (ALIGNED_SIZE, ALIGNED_SIZE, 3) or a.dtype != np.uint8:
        raise F2DError(f"expected aligned uint8 faces shaped (112, 112, 3) or (B, 112, 112, 3), got "
                       f"{a.dtype} {a.shape}. Align the face first (align_face) or pass 112x112 RGB crops.")
    # same float64 arithmetic as the official preprocessing, then float32
    x = (a.astype(np.float64) / 255.0 - 0.5) / 0.5
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
