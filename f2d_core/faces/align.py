"""Face alignment exactly as the official code does it (spec §1.4-1.5).

68 iBUG landmarks -> 5 points -> similarity fit to the ArcFace 112x112 template
(Umeyama least squares, no reflection, estimated in float32 like scikit-image on
float32 points) -> bilinear warp with a black border. MSID's pixel convention is in
models/msid.py (`to_pixels`).
"""
from __future__ import annotations

import numpy as np

from ..errors import F2DError
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


_WARP_ROWS = 32  # output rows per step: small temporaries are reused, large ones fault in fresh pages


def warp(image, matrix, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Bilinear warp of an RGB uint8 image by an affine matrix (3x3, or OpenCV's 2x3) into a
    size x size crop, black outside.

    What OpenCV's warpAffine(INTER_LINEAR, BORDER_CONSTANT 0) computes, in exact float
    arithmetic instead of its 1/32-pixel fixed point: the official crop is matched within
    1 level on a few pixels, and no OpenCV release can move it (5.1 changed its rounding).
    """
    src = np.asarray(image)
    if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
        raise F2DError(f"expected an RGB uint8 image shaped (H, W, 3), got {src.dtype} {src.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((2, 3), (3, 3)):
        raise F2DError(f"expected a 2x3 or 3x3 affine matrix, got shape {m.shape}")
    inverse = np.linalg.inv(np.vstack([m[:2], [0.0, 0.0, 1.0]]))
    h, w = src.shape[:2]
    pixels = np.ascontiguousarray(src).reshape(h * w, 3)

    def rgb(weight):  # one weight per pixel -> one per value: same-shape products are 5x faster
        return np.repeat(weight[..., None], 3, axis=2)

    def tap(y, x, weight, all_inside):  # weight * the source pixel, or 0: the black border outside
        if all_inside:
            return np.take(pixels, y * w + x, axis=0).astype(np.float64) * rgb(weight)
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        value = np.take(pixels, np.where(inside, y * w + x, 0), axis=0).astype(np.float64)
        return value * rgb(weight * inside)

    out = np.empty((size, size, 3), np.uint8)
    xs = np.arange(size, dtype=np.float64)[None, :]
    for r0 in range(0, size, _WARP_ROWS):
        ys = np.arange(r0, min(r0 + _WARP_ROWS, size), dtype=np.float64)[:, None]
        sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
        sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
        x0, y0 = np.floor(sx), np.floor(sy)
        fx, fy = sx - x0, sy - y0
        x0, y0 = x0.astype(np.intp), y0.astype(np.intp)
        inside = x0.min() >= 0 and y0.min() >= 0 and x0.max() + 1 < w and y0.max() + 1 < h
        top = tap(y0, x0, 1 - fx, inside) + tap(y0, x0 + 1, fx, inside)
        bottom = tap(y0 + 1, x0, 1 - fx, inside) + tap(y0 + 1, x0 + 1, fx, inside)
        value = np.floor(top * rgb(1 - fy) + bottom * rgb(fy) + 0.5)
        out[r0:r0 + len(ys)] = np.clip(value, 0, 255)
    return out


def align_face(image, landmarks5, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """(aligned uint8 112x112x3 RGB, 3x3 matrix) for a face given by its 5 points."""
    rgb = to_rgb_uint8(image, name)
    matrix = similarity_matrix(landmarks5)
    return warp(rgb, matrix), matrix
