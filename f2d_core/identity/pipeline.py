"""Photos -> one identity: detect, pick a face, align, encode, average (the paper's pipeline)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import F2DError
from ..faces.images import as_list
from ..models.msid import to_pixels
from .encoder import F2DEncoder
from .face_file import FaceIdentity
from .picking import ARCFACE_CROP, MIN_FACE_PX, pick_faces

__all__ = ["MIN_FACE_PX", "encode_images"]


def encode_images(encoder: F2DEncoder, images, detector=None, policy="largest", on_no_face="error",
                  names: Sequence[str] | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  check_interrupt: Callable[[], None] | None = None,
                  min_face_px: float = MIN_FACE_PX, batched: Sequence[bool] | None = None) -> FaceIdentity:
    """Encode one person from one or more photos; the identity is the mean of their MSID features.
    The faces are picked by picking.pick_faces (the expression reference's boundary too).

    detector: a detect.FaceDetector, or None when the images are already aligned 112x112 crops.
    policy: "largest", "confident" or an index (see detect.select_face).
    on_no_face: "error" stops at the first image without a usable face; "skip" leaves it out
    (an error is still raised when no image is left). Not usable: a blank or saturated image
    (faces.images.check_photo), or a chosen face whose box is under min_face_px on its longer
    side (default MIN_FACE_PX; 0 allows any size).
    batched: per photo, whether it came after the first of one IMAGE batch (picking.pick_faces says
    when core Batch Images may have cut its face away; by default, the later images of a batch).
    meta["detections"]: per photo, every face found in index order and the one encoded (the record
    faces.preview.face_record makes, and preview_sheet draws).
    """
    if batched is None and getattr(images, "ndim", 0) == 4:
        batched = [k > 0 for k in range(images.shape[0])]
    images = as_list(images)
    if not images:
        raise F2DError("no images were given; connect at least one photo of the person.")
    picked = pick_faces(images, detector, ARCFACE_CROP, policy, on_no_face, names, min_face_px, progress,
                        check_interrupt, batched)
    crops = np.stack(picked.crops)
    per_face = encoder.identity_features(to_pixels(crops)).cpu()
    features = per_face.mean(0)
    s1, s2 = encoder.face_tokens(features[None])
    meta = {"num_faces": len(crops), "faces": picked.faces, "skipped": picked.skipped,
            "detections": picked.detections, "policy": str(policy),
            "detector": None if detector is None else detector.name,
            "models": {"msid": os.path.basename(encoder.msid_path),
                       "mapping": os.path.basename(encoder.mapping_path)},
            "model_sha256": encoder.model_hashes}
    return FaceIdentity(features=features, s1=s1[0].cpu(), s2=s2[0].cpu(), features_per_face=per_face,
                        aligned=torch.from_numpy(crops), meta=meta, family=encoder.family)

