"""Face detection with dlib, which installs from pip with its models and needs no model folder.

    detector = load_detector("dlib")        # f2d_core.load_detector dispatches "dlib" here
    faces = detector.detect(rgb)             # detect.Face: box, score, 5 points, the 68 iBUG points

The faces are detect.py's Face class, which load_detector hands to this module (so this module
does not import detect.py, which dispatches to it).

dlib's HOG face detector (`get_frontal_face_detector`) finds the faces; the iBUG-68 shape
predictor (`shape_predictor_68_face_landmarks.dat`) places the same 68 points the official
Face2Diffusion code gets from face_alignment, so alignment uses the official 68->5 reduction
(align.landmarks68_to_5) unchanged. The model files come from the `face-recognition-models`
package (see docs/dlib.md); dlib itself from the `dlib-bin` wheels. Both are optional:
`pip install -r requirements-dlib.txt`.

face_recognition_models/__init__.py imports pkg_resources, which current setuptools no longer
ships, so the package is never imported: its folder is found with importlib's find_spec.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image

from ..errors import F2DError, ModelFilesMissing
from .align import landmarks68_to_5
from .images import to_rgb_uint8

NAME = "dlib"
AUTO = "auto"
INSTALL = "pip install -r requirements-dlib.txt (it installs dlib-bin and face-recognition-models)"
MODELS_PACKAGE = "face_recognition_models"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def dlib_available() -> bool:
    """dlib and the face-recognition-models files are installed (nothing is imported)."""
    return importlib.util.find_spec("dlib") is not None and _models_folder() is not None


def _models_folder() -> str | None:
    spec = importlib.util.find_spec(MODELS_PACKAGE)  # locates the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        models = os.path.join(folder, "models")
        if os.path.isdir(models):
            return models
    return None


def model_file(name: str) -> str:
    """Path of one of face-recognition-models' files, e.g. SHAPE_PREDICTOR_68."""
    folder = _models_folder()
    path = os.path.join(folder, name) if folder else None
    if path is None or not os.path.isfile(path):
        where = f"{folder} has no {name}" if folder else f"the {MODELS_PACKAGE} package is not installed"
        raise ModelFilesMissing(f"dlib face models: {where}. Install them with {INSTALL}.")
    return path


def import_dlib():
    """The dlib module, or a ModelFilesMissing that says how to install it."""
    try:
        import dlib  # optional dependency (dlib-bin), only for the "dlib" detector and identity metric
    except ImportError:
        raise ModelFilesMissing(f"the dlib face detector needs the dlib package, which is not installed. "
                                f"Install it with {INSTALL}, or use an insightface detector pack.") from None
    return dlib


class DlibDetector:
    """dlib's HOG detector + the iBUG-68 shape predictor, on the CPU.

    upsample: times the picture is doubled before detection (1 finds faces down to about 40 px);
    threshold: dlib's adjust_threshold (0 = dlib's default; lower finds more, less certain faces);
    max_size: photos whose longer side is larger are detected on an area-downscaled copy (HOG time
    grows with the pixel count), the landmarks are always placed on the full-size photo.
    Face.score is the HOG detector's SVM margin (higher is more certain, not a probability).
    face_class: the Face dataclass of faces/detect.py (box, score, landmarks5, landmarks68)."""

    def __init__(self, face_class, upsample: int = 1, threshold: float = 0.0, max_size: int = 1024):
        if int(upsample) != upsample or not 0 <= upsample <= 3:
            raise F2DError(f"dlib detector: upsample must be 0, 1, 2 or 3, got {upsample!r} (1 is the default).")
        if int(max_size) < 64:
            raise F2DError(f"dlib detector: max_size must be at least 64 pixels, got {max_size!r}.")
        dlib = import_dlib()
        self.dlib, self.face_class = dlib, face_class
        self.hog = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(model_file(SHAPE_PREDICTOR_68))
        self.upsample, self.threshold, self.max_size = int(upsample), float(threshold), int(max_size)
        self.paths = (model_file(SHAPE_PREDICTOR_68),)
        self.name = f"dlib {dlib.__version__} HOG + {SHAPE_PREDICTOR_68}"

    def detect(self, image, name: str = "image") -> list[Face]:
        """Faces in an RGB image, in source pixels, highest score first."""
        rgb = to_rgb_uint8(image, name)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_size / max(h, w))
        small = rgb if scale == 1.0 else np.asarray(
            Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX))
        rects, scores, _ = self.hog.run(small, self.upsample, self.threshold)
        faces = []
        for r, score in zip(rects, scores):
            # dlib's right/bottom are inclusive pixels; Face boxes are x1, y1, x2, y2 edges
            box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float64) / scale
            full = self.dlib.rectangle(*(int(round(v)) for v in (box[0], box[1], box[2] - 1, box[3] - 1)))
            shape = self.predictor(rgb, full)
            l68 = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
            faces.append(self.face_class(box.astype(np.float32), float(score), landmarks68_to_5(l68), l68))
        faces.sort(key=lambda f: -f.score)
        return faces


@functools.lru_cache(maxsize=2)
def _load(face_class, upsample, threshold, max_size) -> DlibDetector:
    return DlibDetector(face_class, upsample, threshold, max_size)


def load_dlib_detector(face_class, device: str = "auto", upsample: int = 1, threshold: float = 0.0,
                       max_size: int = 1024, **unknown) -> DlibDetector:
    """A DlibDetector, cached (the shape predictor is a 100 MB file); use load_detector("dlib").
    dlib runs on the CPU whatever `device` says."""
    if unknown:
        raise F2DError(f"the dlib detector takes upsample, threshold and max_size, not {', '.join(sorted(unknown))} "
                       "(those are the insightface detector's options).")
    return _load(face_class, upsample, threshold, max_size)


def auto_detector(packs: list[str]) -> str:
    """What the `auto` detector choice means: the first insightface pack found, else dlib when it
    is installed; with neither, an error that names both ways to get a detector."""
    if packs:
        return packs[0]
    if dlib_available():
        return NAME
    raise ModelFilesMissing(
        "No face detector is available: no insightface model pack was found and dlib is not installed. Either "
        "unzip insightface's buffalo_l (with det_10g.onnx) into ComfyUI/models/insightface/models/buffalo_l, or "
        f"install dlib into ComfyUI's python: {INSTALL}; then restart ComfyUI. If your images are already aligned "
        "112x112 face crops, choose the detector 'none'.")


def detector_choices(packs: list[str], none_choice: str) -> list[str]:
    """The detector list a UI offers: auto, the insightface packs found, dlib when it is
    installed, and the no-detector choice."""
    return [AUTO] + list(packs) + ([NAME] if dlib_available() else []) + [none_choice]
