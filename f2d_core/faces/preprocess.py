"""What the ONNX face models are fed, computed with numpy alone: resized images and input blobs.

insightface prepares its inputs with OpenCV; these functions give the same numbers:
- `resize`: OpenCV's INTER_AREA when shrinking (each output pixel is the mean of the source
  area it covers, edge pixels weighted by their covered fraction) and its INTER_LINEAR when
  enlarging (bilinear, half-pixel centres, edges clamped), in float32 then rounded to levels.
  Measured against OpenCV 5.1 on noise: shrinking is equal, or 1 level off on about 0.01% of
  the values at uneven factors (OpenCV sums horizontally first; that order here was 2-3x slower);
  enlarging is within 1 level on about 13%, as OpenCV's bilinear resize is 11-bit fixed point.
- `to_blob`: (x - mean) * (1 / std), HWC -> NCHW, float32, exactly OpenCV's dnn.blobFromImages
  (for crops already at the model's input size).
Both passes of the separable resize run over strips of output rows, so temporaries stay small.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import F2DError

_STRIP = 32  # output rows per step: its buffers stay in cache instead of faulting in fresh pages
_ITEM12 = np.dtype((np.void, 12))  # one float32 RGB pixel, to transpose whole pixels at once


def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(source index, weight), each (n_out, taps), of an area-average shrink along one axis."""
    scale = n_in / n_out
    start = np.arange(n_out) * scale
    end = np.minimum(start + scale, n_in)
    index = np.floor(start).astype(np.intp)[:, None] + np.arange(int(np.ceil(scale)) + 1)
    weight = np.clip(np.minimum(index + 1, end[:, None]) - np.maximum(index, start[:, None]), 0.0, None)
    weight /= weight.sum(axis=1, keepdims=True)
    used = weight.any(axis=0)  # the last tap is empty when the scale is an integer
    return np.minimum(index, n_in - 1)[:, used], weight[:, used].astype(np.float32)


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(source index, weight), each (n_out, 2), of bilinear resampling along one axis: output pixel
    centres mapped onto the source ((x + 0.5) * scale - 0.5), clamped to the first and last pixel."""
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    first = np.floor(src).astype(np.intp)
    frac = src - first
    return (np.stack([first, np.minimum(first + 1, n_in - 1)], axis=1),
            np.stack([1.0 - frac, frac], axis=1).astype(np.float32))


def _taps(n_in, n_out):
    return area_taps(n_in, n_out) if n_out < n_in else linear_taps(n_in, n_out)


def _weighted_rows(src, index, weight, out, scratch):
    """out[i] = sum_k weight[i, k] * src[index[i, k]], rows gathered along the first axis."""
    np.multiply(src[index[:, 0]], weight[:, 0, None, None], out=out)
    for k in range(1, index.shape[1]):
        np.multiply(src[index[:, k]], weight[:, k, None, None], out=scratch)
        out += scratch


def _check(rgb, width, height):
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise F2DError(f"expected an RGB uint8 image shaped (H, W, 3) to resize, got {rgb.dtype} {rgb.shape}")
    if int(width) < 1 or int(height) < 1:
        raise F2DError(f"cannot resize to {width}x{height}: both sides must be at least 1 pixel")


def resized_strips(rgb: np.ndarray, width: int, height: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """The resized image strip by strip: (r0, r1, block) with block (width, r1 - r0, 3) float32,
    output rows r0:r1 transposed, in whole levels. Each axis is area-averaged when it shrinks and
    bilinear otherwise. Shrinking rounds as OpenCV does (ties to even; up at exactly 2x in both
    axes, its fast path), enlarging rounds half up. The block is reused by the next strip."""
    rgb = np.ascontiguousarray(rgb)
    _check(rgb, width, height)
    h, w = rgb.shape[:2]
    rows, cols = _taps(h, height), _taps(w, width)
    half_up = not (height < h and width < w) or (h == 2 * height and w == 2 * width)
    strip = min(_STRIP, height)
    vertical, v_scratch = np.empty((strip, w, 3), np.float32), np.empty((strip, w, 3), np.float32)
    block, h_scratch = np.empty((width, strip, 3), np.float32), np.empty((width, strip, 3), np.float32)
    for r0 in range(0, height, strip):
        r1 = min(r0 + strip, height)
        n = r1 - r0
        _weighted_rows(rgb, rows[0][r0:r1], rows[1][r0:r1], vertical[:n], v_scratch[:n])
        # columns become rows, so the horizontal pass gathers rows too
        columns = np.ascontiguousarray(vertical[:n].view(_ITEM12)[..., 0].T)[..., None].view(np.float32)
        out = block[:, :n]
        _weighted_rows(columns, cols[0], cols[1], out, h_scratch[:, :n])
        if half_up:
            out += 0.5
            np.floor(out, out=out)
        else:
            np.rint(out, out=out)
        yield r0, r1, out


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3): OpenCV's resize with INTER_AREA when shrinking, INTER_LINEAR when
    enlarging (see `resized_strips`)."""
    out = np.empty((int(height), int(width), 3), np.uint8)
    for r0, r1, block in resized_strips(rgb, int(width), int(height)):
        out[r0:r1] = block.transpose(1, 0, 2)
    return out


def to_blob(images, mean: float, std: float) -> np.ndarray:
    """(N, 3, H, W) float32 (x - mean) * (1 / std) of uint8 RGB images of one size, bit for bit
    OpenCV's dnn.blobFromImages(images, 1 / std, (W, H), (mean,) * 3, swapRB=False)."""
    stack = np.stack([np.asarray(im) for im in images])
    if stack.ndim != 4 or stack.shape[3] != 3 or stack.dtype != np.uint8:
        raise F2DError(f"expected RGB uint8 images shaped (H, W, 3), got {stack.dtype} {stack.shape[1:]}")
    blob = stack.transpose(0, 3, 1, 2).astype(np.float32)  # the copy is the cast
    blob -= np.float32(mean)
    blob *= np.float32(1.0 / std)
    return blob
