"""Photos -> the face to use in each, cropped: the one boundary the identity pipeline and the
expression reference both go through, so both refuse the same photos with the same messages.

Per photo: check it (blank, saturated or cut off: faces.images.check_photo), detect, select a
face (detect.select_face), check its size (min_face_px), crop it for the network that reads it
(CropSpec), and record what was found (faces.preview.face_record). Without a detector the
photos must already be crops of CropSpec.size. A photo after the first of one IMAGE batch may have
been cut to the first one's size by core Batch Images: when it has no usable face, or its face is
cut by the image's edge, the message says so and how to give the photos whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..choices import ON_NO_FACE
from ..errors import F2DError, NoFaceError
from ..faces.align import ALIGNED_SIZE, align_face
from ..faces.detect import Face, select_face
from ..faces.images import check_photo, to_rgb_uint8
from ..faces.preview import face_record

# Smallest face used, in source pixels on the longer side of the detector's box. SCRFD's smallest
# anchors are 16 px (stride 8), where detection itself gives out; at 32 px the eyes are still about
# 14 px apart, so a pixel of landmark error turns the crop a few degrees, and the 112 px crop that MSID
# reads (the box spans about 80 of its pixels) is upscaled at most 2.5x. Below it, it is mostly blur.
MIN_FACE_PX = 32
# Core Batch Images (nodes.py ImageBatch) resizes and centre-crops every image after the first to the
# first one's size: a wide photo loses its sides, where the face may have been, wholly or in part.
# What the pixels tell of it: no usable face in a later image, or a face its edge cuts (over
# CUT_FRACTION of the box's width or height outside the image; the detector boxes the whole face).
CUT_FRACTION = 0.2
BATCH_CROP_HINT = ("{name} came after the first image of one batch: core Batch Images resizes and centre-crops "
                   "every later image to the first one's size, which cuts the face out of a photo of another shape. "
                   "{fix}")
ENCODE_BATCH_FIX = ("Connect each photo to its own input instead (image_2..image_4 of Encode Face), which keeps "
                    "every photo whole.")


@dataclass(frozen=True)
class CropSpec:
    """How a chosen face becomes the crop its network reads."""
    size: int  # side of the square crop; without a detector, images must already be this size
    crop: Callable[[np.ndarray, Face, str], np.ndarray]  # (RGB uint8 photo, face, name) -> (size, size, 3) uint8
    without_detector: str  # the error for an image of another size without a detector: {name}, {width}, {height}


ARCFACE_CROP = CropSpec(
    ALIGNED_SIZE, lambda rgb, face, name: align_face(rgb, face.alignment_points(), name)[0],
    "{name}: without a face detector, images must be ArcFace-aligned 112x112 face crops, but this one is "
    "{width}x{height}. Choose an insightface detector pack in the loader (models/insightface/models/<pack>/), "
    "or align the faces first.")


@dataclass
class PickedFaces:
    crops: list = field(default_factory=list)       # (size, size, 3) uint8, one per photo used
    faces: list = field(default_factory=list)       # one dict per crop: image, index, box, score, ...
    skipped: list = field(default_factory=list)     # {"image", "index", "reason"} per photo left out
    detections: list = field(default_factory=list)  # per photo: {"image", **face_record(...)}


def pick_faces(images: Sequence, detector=None, crop: CropSpec = ARCFACE_CROP, policy="largest",
               on_no_face="error", names: Sequence[str] | None = None, min_face_px: float = MIN_FACE_PX,
               progress: Callable[[int, int], None] | None = None,
               check_interrupt: Callable[[], None] | None = None, batched: Sequence[bool] | None = None,
               batch_fix: str = ENCODE_BATCH_FIX) -> PickedFaces:
    """One face from each photo, cropped by `crop`.

    images: a list of photos (faces.images.as_list gives one from a batch), at least one.
    detector: a detect.FaceDetector, or None when the images already are crops of crop.size.
    policy: "largest", "confident" or an index (see detect.select_face).
    on_no_face: "error" raises at the first photo without a usable face; "skip" leaves it out
    (a NoFaceError is still raised when no photo is left). Not usable: a blank, saturated or cut-off
    image (faces.images.check_photo), no face found, or a chosen face whose box is under min_face_px on
    its longer side (0 allows any size).
    progress(done, total) after each photo; check_interrupt() before each.
    batched: per photo, True when it came after the first of one IMAGE batch (faces.images.
    photos_from_inputs tells); by default, every image after the first when `images` is one batch
    [B, H, W, C]. Such a photo without a usable face gets BATCH_CROP_HINT with batch_fix, and one
    whose face the image's edge cuts is not usable.
    """
    if on_no_face not in ON_NO_FACE:
        raise F2DError(f"on_no_face must be one of {ON_NO_FACE}, got {on_no_face!r}")
    if not min_face_px >= 0:
        raise F2DError(f"min_face_px must be 0 (any size) or more, got {min_face_px}.")
    if batched is None:
        batched = [k > 0 for k in range(len(images))] if getattr(images, "ndim", 0) == 4 else []
    images = list(images)
    batched = list(batched) + [False] * (len(images) - len(batched))
    if not images:
        raise F2DError("no images were given; connect at least one photo.")
    names = list(names) if names else [f"image {i + 1} of {len(images)}" for i in range(len(images))]
    out = PickedFaces()
    for i, (image, name) in enumerate(zip(images, names)):
        if check_interrupt:
            check_interrupt()
        try:
            _pick_one(out, i, to_rgb_uint8(image, name), name, detector, crop, policy, min_face_px, batched[i])
        except NoFaceError as e:
            error = NoFaceError(f"{e} {BATCH_CROP_HINT.format(name=name, fix=batch_fix)}") if batched[i] else e
            if on_no_face == "error":
                raise error from None
            out.skipped.append({"image": name, "index": i, "reason": str(error)})
        if progress:
            progress(i + 1, len(images))
    if not out.crops:
        raise NoFaceError(f"no face was found in any of the {len(images)} images ({', '.join(names[:5])}). "
                          "Use clear photos where the face is visible, frontal and not tiny, or crop closer.")
    return out


def _pick_one(out: PickedFaces, i: int, rgb: np.ndarray, name: str, detector, crop: CropSpec, policy,
              min_face_px: float, batched: bool = False) -> None:
    """Add photo i's crop, face and detection record to `out`; NoFaceError (its detection recorded)
    when it has no usable face (for a batched photo, also a face cut by the image's edge)."""
    try:
        check_photo(rgb, name)  # blank, saturated or cut off: say so rather than "no face"
    except NoFaceError:
        out.detections.append({"image": name, **face_record([], None)})
        raise
    if detector is None:
        if rgb.shape[:2] != (crop.size, crop.size):
            raise F2DError(crop.without_detector.format(name=name, width=rgb.shape[1], height=rgb.shape[0]))
        out.crops.append(rgb)
        out.faces.append({"image": name, "index": i, "aligned_input": True})
        out.detections.append({"image": name, "boxes": [], "scores": [], "chosen": None, "aligned_input": True})
        return
    found = detector.detect(rgb, name)
    try:
        face = select_face(found, policy, name)
        check_face_size(face, min_face_px, name)
        if batched:
            check_face_inside(face, rgb.shape, name)
    except NoFaceError:
        out.detections.append({"image": name, **face_record(found, None)})
        raise
    out.detections.append({"image": name, **face_record(found, face)})
    out.crops.append(crop.crop(rgb, face, name))
    out.faces.append({"image": name, "index": i, "box": [round(float(v), 1) for v in face.box],
                      "score": round(float(face.score), 4), "faces_in_image": len(found),
                      "landmarks": "68-point" if face.landmarks68 is not None else "5-point"})


def check_face_size(face: Face, min_face_px: float, name: str) -> None:
    """NoFaceError when the face's box is under min_face_px on its longer side."""
    w, h = float(face.box[2] - face.box[0]), float(face.box[3] - face.box[1])
    if max(w, h) < min_face_px:
        raise NoFaceError(
            f"{name}: the face is only {w:.0f}x{h:.0f} pixels (at x={face.box[0]:.0f}, y={face.box[1]:.0f}); "
            f"faces under {min_face_px:g} pixels on their longer side are too small to encode (the 112x112 "
            "crop would be mostly upscaled blur). Use a photo where the face is larger, or set min_face_px "
            "to 0 to allow any size.")


def check_face_inside(face: Face, shape, name: str) -> None:
    """NoFaceError when an edge of the image cuts the face: over CUT_FRACTION of its box outside."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    w, h = x2 - x1, y2 - y1
    outside = {"left": -x1 / w, "right": (x2 - shape[1]) / w, "top": -y1 / h, "bottom": (y2 - shape[0]) / h}
    edge, share = max(outside.items(), key=lambda kv: kv[1])
    if share > CUT_FRACTION:
        raise NoFaceError(
            f"{name}: the face found is cut by the image's {edge} edge ({share:.0%} of its box lies outside the "
            "image), so only part of it could be encoded.")
