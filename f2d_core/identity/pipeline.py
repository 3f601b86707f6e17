"""Photos -> one identity: detect, pick a face, align, encode, average (the paper's pipeline)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from ..faces.align import ALIGNED_SIZE, align_face
from ..models.msid import to_pixels
from ..choices import ON_NO_FACE
from .encoder import F2DEncoder
from ..errors import F2DError, NoFaceError
from .face_file import FaceIdentity
from ..faces.images import as_list, to_rgb_uint8



def encode_images(encoder: F2DEncoder, images, detector=None, policy="largest", on_no_face="error",
                  names: Sequence[str] | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  check_interrupt: Callable[[], None] | None = None) -> FaceIdentity:
    """Encode one person from one or more photos; the identity is the mean of their MSID features.

    detector: a detect.FaceDetector, or None when the images are already aligned 112x112 crops.
    policy: "largest", "confident" or an index (see detect.select_face).
    on_no_face: "error" stops at the first image without a face; "skip" leaves it out
    (an error is still raised when no image is left).
    """
    from ..faces.detect import select_face  # the detector is optional, keep its import local
    if on_no_face not in ON_NO_FACE:
        raise F2DError(f"on_no_face must be one of {ON_NO_FACE}, got {on_no_face!r}")
    images = as_list(images)
    if not images:
        raise F2DError("no images were given; connect at least one photo of the person.")
    names = list(names) if names else [f"image {i + 1} of {len(images)}" for i in range(len(images))]
    crops, faces, skipped = [], [], []
    for i, (image, name) in enumerate(zip(images, names)):
        if check_interrupt:
            check_interrupt()
        rgb = to_rgb_uint8(image, name)
        if detector is None:
            if rgb.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
                raise F2DError(
                    f"{name}: without a face detector, images must be ArcFace-aligned 112x112 face crops, but "
                    f"this one is {rgb.shape[1]}x{rgb.shape[0]}. Choose an insightface detector pack in the "
                    "loader (models/insightface/models/<pack>/), or align the faces first.")
            crops.append(rgb)
            faces.append({"image": name, "index": i, "aligned_input": True})
        else:
            found = detector.detect(rgb, name)
            try:
                face = select_face(found, policy, name)
            except NoFaceError as e:
                if on_no_face == "error":
                    raise
                skipped.append({"image": name, "index": i, "reason": str(e)})
            else:
                aligned, _ = align_face(rgb, face.alignment_points(), name)
                crops.append(aligned)
                faces.append({"image": name, "index": i, "box": [round(float(v), 1) for v in face.box],
                              "score": round(float(face.score), 4), "faces_in_image": len(found),
                              "landmarks": "68-point" if face.landmarks68 is not None else "5-point"})
        if progress:
            progress(i + 1, len(images))
    if not crops:
        raise NoFaceError(f"no face was found in any of the {len(images)} images ({', '.join(names[:5])}). "
                          "Use clear photos where the face is visible, frontal and not tiny, or crop closer.")
    per_face = encoder.identity_features(to_pixels(np.stack(crops))).cpu()
    features = per_face.mean(0)
    s1, s2 = encoder.face_tokens(features[None])
    meta = {"num_faces": len(crops), "faces": faces, "skipped": skipped, "policy": str(policy),
            "detector": None if detector is None else detector.name,
            "models": {"msid": os.path.basename(encoder.msid_path),
                       "mapping": os.path.basename(encoder.mapping_path)},
            "model_sha256": encoder.model_hashes}
    return FaceIdentity(features=features, s1=s1[0].cpu(), s2=s2[0].cpu(), features_per_face=per_face,
                        aligned=torch.from_numpy(np.stack(crops)), meta=meta)
