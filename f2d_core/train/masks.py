"""Face masks from landmarks: the fallback when no face-parsing network is given.

The paper takes the face region M from a face-parsing network (BiSeNet, see parsing.py).
Without one, the mask is a polygon drawn from the landmarks, in source-image pixels,
then warped with the sample's SD crop:
- with 68 iBUG points: the convex hull of the jaw line (0-16) and the eyebrows (17-26),
  the eyebrows raised by a fifth of the brow-to-chin distance so the forehead is inside;
- with 5 points: an ellipse fixed in the ArcFace 112×112 frame (centre (56, 60), semi-axes
  41 × 52 pixels: cheek to cheek, hairline to chin of the aligned template face), mapped
  back to the photo through the inverse of the alignment.
Both cover skin, brows, eyes, nose, mouth and lips, and leave hair, neck and background out,
which is the parsing classes' default. They are coarser than a parsing map at the border.
"""
from __future__ import annotations

import cv2
import numpy as np

TEMPLATE_ELLIPSE = ((56.0, 60.0), (41.0, 52.0))  # centre, semi-axes in the ArcFace 112 frame


def face_polygon(landmarks5, landmarks68=None, points: int = 48) -> np.ndarray:
    """(N, 2) polygon around the face in source-image pixels."""
    if landmarks68 is not None:
        l68 = np.asarray(landmarks68, np.float64)
        brows = l68[17:27]
        lift = (brows.mean(0) - l68[8]) * 0.2
        return cv2.convexHull(np.concatenate([l68[:17], brows + lift]).astype(np.float32))[:, 0].astype(np.float64)
    from ..faces.align import similarity_matrix
    (cx, cy), (ax, ay) = TEMPLATE_ELLIPSE
    a = np.linspace(0, 2 * np.pi, points, endpoint=False)
    ellipse = np.stack([cx + ax * np.cos(a), cy + ay * np.sin(a), np.ones_like(a)], 1)
    to_source = np.linalg.inv(similarity_matrix(landmarks5))
    return (ellipse @ to_source.T)[:, :2]


def landmark_mask(landmarks5, landmarks68, crop_matrix, size: int) -> np.ndarray:
    """(size, size) uint8 mask, 1 on the face, in the crop given by `crop_matrix` (2x3, source
    pixels -> crop pixels)."""
    from .crops import transform_points
    poly = transform_points(face_polygon(landmarks5, landmarks68), crop_matrix)
    mask = np.zeros((size, size), np.uint8)
    # fillPoly with 4 fractional bits: sub-pixel vertices, so small crops stay accurate
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask
