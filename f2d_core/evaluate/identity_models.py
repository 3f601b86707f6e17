"""The identity columns of the evaluation: one face recogniser each (Eq. 10 on its features).

The paper's three (§4.2, E.3), from files the user supplies, checked key by key:
  adaface     AdaFace IR-101 (or IR-50), an official checkpoint (adaface_ir101_webface12m.ckpt, ...)
  sphereface  sphere20a of clcarwin/sphereface_pytorch (sphere20a_20171020.pth)
  facenet     facenet-pytorch's InceptionResnetV1, VGGFace2 weights (20180402-114759-vggface2.pt)
and two that are not the paper's, reported in their own columns, never in place of the paper's:
  arcface     insightface's recognition ONNX of a pack (w600k_r50.onnx / glintr100.onnx), its SCRFD
  dlib        dlib's 128-d face recognition ResNet with its HOG detector and 68-point landmarks
              (real weights from pip, see docs/dlib.md)

Every backend has `embed(image) -> unit vector or None` (None: no face found) and
`reference(photos)` (the mean unit embedding of one person's photos, renormalised). The paper's
three see the face through one detector (--detector: an insightface pack's SCRFD or dlib), aligned
from its five points to each network's crop: the ArcFace 112 template for AdaFace (what its
official MTCNN alignment targets), the same template 8 px narrower on each side for SphereFace's
112x96 crop (its lfw_eval alignment), and the template scaled to 160 for FaceNet (facenet-pytorch
crops MTCNN boxes instead; a 5-point alignment is this tool's choice).
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError
from ..faces import dlib_detector
from ..faces.align import ARCFACE_TEMPLATE, similarity_matrix, warp
from ..faces.detect import load_detector, select_face
from ..faces.images import as_list, to_rgb_uint8
from ..faces.similarity import load_identity_scorer
from ..weights.checkpoint import describe, read_state_dict
from . import face_nets
from .scoring import IDENTITY_COLUMNS, PAPER_IDENTITY

PAPER_COLUMNS, COLUMNS = PAPER_IDENTITY, IDENTITY_COLUMNS


@dataclass(frozen=True)
class NetSpec:
    column: str
    title: str
    file_hint: str
    signature: str                  # a key only this network has (after any wrapper prefix)
    heads: tuple                    # key prefixes of classifier heads: in the files, not needed here
    build: Callable[[dict], torch.nn.Module]
    crop: Callable[[np.ndarray, np.ndarray], np.ndarray]
    bgr: bool
    mean: float
    std: float


def _aligned(rgb, points, size: int) -> np.ndarray:
    return warp(rgb, similarity_matrix(points, ARCFACE_TEMPLATE * (size / 112.0)), size)


def _adaface_depth(sd: dict) -> int:
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    units = {sum(u): d for d, u in face_nets.IR_UNITS.items()}
    if len(blocks) not in units:
        raise CheckpointError(f"an AdaFace IR backbone has {' or '.join(map(str, units))} body blocks "
                              f"(IR-50 or IR-101); this file has {len(blocks)}.")
    return units[len(blocks)]


SPECS = {
    "facenet": NetSpec("facenet", "FaceNet (facenet-pytorch InceptionResnetV1)", "20180402-114759-vggface2.pt",
                       "conv2d_1a.conv.weight", ("logits.",), lambda sd: face_nets.InceptionResnetV1(),
                       lambda rgb, p: _aligned(rgb, p, 160), bgr=False, mean=127.5, std=128.0),
    "adaface": NetSpec("adaface", "AdaFace (IR backbone)", "adaface_ir101_webface12m.ckpt",
                       "input_layer.0.weight", ("head.",), lambda sd: face_nets.IRBackbone(_adaface_depth(sd)),
                       lambda rgb, p: _aligned(rgb, p, 112), bgr=True, mean=127.5, std=127.5),
    "sphereface": NetSpec("sphereface", "SphereFace (sphere20a)", "sphere20a_20171020.pth",
                          "conv1_1.weight", ("fc6.",), lambda sd: face_nets.Sphere20a(),
                          lambda rgb, p: _aligned(rgb, p, 112)[:, 8:104], bgr=True, mean=127.5, std=128.0),
}
_WRAPPER_PREFIXES = ("model.", "net.", "backbone.")  # AdaFace's Lightning checkpoints hold the backbone as model.*


def _strip_wrapper(sd: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if any(prefix + s.signature in sd for s in SPECS.values()):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _read(path: str, spec: NetSpec) -> dict:
    try:
        return read_state_dict(path)
    except CheckpointError as e:
        if "refused to load" not in str(e):
            raise
        raise CheckpointError(
            f"{path}: refused to load as {spec.title}: the file holds Python objects besides the weights (a "
            "PyTorch Lightning checkpoint keeps its training state), and weight files are only read with "
            "torch.load(weights_only=True). Extract the weights once, in a Python you trust that can unpickle "
            "it: python -c \"import torch; from safetensors.torch import save_file; sd = torch.load('IN.ckpt', "
            "map_location='cpu', weights_only=False)['state_dict']; save_file({k: v.contiguous() for k, v in "
            "sd.items()}, 'OUT.safetensors')\", then pass OUT.safetensors.") from None


def load_face_net(path, column: str) -> torch.nn.Module:
    """The network of `column` ("adaface", "sphereface", "facenet") with the weights of `path`,
    loaded strictly (every key and shape, classifier heads aside); eval mode, CPU."""
    spec = SPECS[column]
    path = os.fspath(path)
    sd = _strip_wrapper(_read(path, spec))
    other = next((s for s in SPECS.values() if s.signature in sd), None)
    if other is None or other.column != column:
        what = f"this is a {other.title} checkpoint; give it with --{other.column}" if other else describe(sd.keys())
        raise CheckpointError(f"--{column} {path}: expected {spec.title} weights (e.g. {spec.file_hint}), but {what}.")
    sd = {k: v for k, v in sd.items() if not k.startswith(spec.heads)}
    net = spec.build(sd)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing, unexpected = sorted(want.keys() - sd.keys()), sorted(sd.keys() - want.keys())
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in sorted(want.keys() & sd.keys())
             if tuple(sd[k].shape) != want[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(keys)} keys: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shapes of", wrong))
                 if keys]
        raise CheckpointError(f"--{column} {path}: looks like {spec.title} but does not match the published key "
                              f"layout ({'; '.join(parts)}). Use the published weights ({spec.file_hint}).")
    net.load_state_dict(sd, strict=True)
    return net.eval()


class _SharedDetector:
    """One detector for several backends: the faces of the last few images are remembered (by
    content), so each image is detected once however many recognisers read it."""

    def __init__(self, detector):
        self.detector, self.name = detector, getattr(detector, "name", type(detector).__name__)
        self._memo: dict = {}

    def detect(self, rgb, name="image"):
        key = (rgb.shape, hashlib.blake2b(rgb.tobytes(), digest_size=16).digest())
        if key not in self._memo:
            if len(self._memo) >= 4:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = self.detector.detect(rgb, name)
        return self._memo[key]


class IdentityBackend:
    """embed(image) -> unit embedding or None; reference(photos) -> one person's unit embedding."""

    column = ""
    description = ""

    def embed(self, image, name: str = "image") -> np.ndarray | None:
        raise NotImplementedError

    def reference(self, images, names: Sequence[str] | None = None) -> np.ndarray:
        images = as_list(images)
        names = list(names) if names else [f"reference image {i + 1}" for i in range(len(images))]
        found = [e for e in (self.embed(im, n) for im, n in zip(images, names)) if e is not None]
        if not found:
            raise NoFaceError(f"{self.column}: no face was found in the face photo(s) ({', '.join(names[:5])}), so "
                              "there is no identity to compare with. Use a clear photo where the face is visible.")
        mean = np.mean(found, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64).ravel()
    return v / max(float(np.linalg.norm(v)), 1e-12)


class NetIdentity(IdentityBackend):
    """One of the paper's recognisers: detect, align from 5 points, the network, normalise."""

    def __init__(self, column: str, net: torch.nn.Module, detector, device: str = "cpu", file_name: str = ""):
        self.column, self.spec = column, SPECS[column]
        self.net, self.detector, self.device = net.to(device), detector, device
        depth = f"-{net.depth}" if hasattr(net, "depth") else ""
        self.description = (f"{self.spec.title}{depth} from {file_name}; faces: {detector.name}")

    def pixels(self, crop: np.ndarray) -> torch.Tensor:
        x = crop[..., ::-1] if self.spec.bgr else crop
        x = (np.ascontiguousarray(x, np.float32) - self.spec.mean) / self.spec.std
        return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())

    def embed(self, image, name: str = "image"):
        rgb = to_rgb_uint8(image, name)
        faces = self.detector.detect(rgb, name)
        if not faces:
            return None
        crop = self.spec.crop(rgb, select_face(faces, "largest", name).alignment_points())
        with torch.inference_mode():
            return _unit(self.net(self.pixels(crop).to(self.device)).float().cpu().numpy())


class ArcFaceIdentity(IdentityBackend):
    """insightface's recogniser of a pack, faces found and aligned by the pack's SCRFD (as insightface does)."""

    column = "arcface"

    def __init__(self, pack_dir, device: str = "auto"):
        self.scorer = load_identity_scorer(pack_dir, device=device)
        self.description = (f"ArcFace {self.scorer.recognizer.name} of {os.path.abspath(os.fspath(pack_dir))}; "
                            "faces: the pack's SCRFD")

    def embed(self, image, name: str = "image"):
        return self.scorer.embed(image, name)


class DlibIdentity(IdentityBackend):
    """dlib's face recognition ResNet (128-d), its own HOG detector and 68 points (dlib's face chip)."""

    column = "dlib"

    def __init__(self, detector=None):
        self.dlib = dlib_detector.import_dlib()
        self.detector = detector or load_detector(dlib_detector.NAME)
        self.model = _dlib_recognizer(dlib_detector.model_file(dlib_detector.RECOGNITION_MODEL))
        self.description = f"dlib {self.dlib.__version__} {dlib_detector.RECOGNITION_MODEL}; faces: {self.detector.name}"

    def embed(self, image, name: str = "image"):
        rgb = to_rgb_uint8(image, name)
        faces = self.detector.detect(rgb, name)
        if not faces:
            return None
        face = select_face(faces, "largest", name)
        x1, y1, x2, y2 = (int(round(float(v))) for v in face.box)
        shape = self.dlib.full_object_detection(self.dlib.rectangle(x1, y1, x2 - 1, y2 - 1),
                                                [self.dlib.point(int(x), int(y)) for x, y in face.landmarks68])
        return _unit(self.model.compute_face_descriptor(rgb, shape))


@functools.lru_cache(maxsize=1)
def _dlib_recognizer(path: str):
    return dlib_detector.import_dlib().face_recognition_model_v1(path)


def _detector(choice: str, arcface_pack, device: str):
    """--detector for the paper's recognisers: "auto" (the --arcface pack's SCRFD, else dlib),
    "dlib", or an insightface pack folder."""
    if choice == "auto":
        if arcface_pack:
            choice = arcface_pack
        elif dlib_detector.dlib_available():
            choice = dlib_detector.NAME
        else:
            raise ModelFilesMissing(
                "the AdaFace / SphereFace / FaceNet columns need a face detector: pass --detector with an "
                "insightface pack folder (e.g. ComfyUI/models/insightface/models/buffalo_l), or --arcface PACK, "
                f"or install dlib ({dlib_detector.INSTALL}).")
    return _SharedDetector(load_detector(choice, device=device) if choice == dlib_detector.NAME
                           else load_detector(choice, use_landmarks68=True, device=device))


def load_backends(files: dict, arcface=None, dlib: str = "auto", detector: str = "auto",
                  device: str = "cpu") -> tuple[dict, dict]:
    """({column: backend} for every column that can be filled, {column: why it is missing}).

    files: {"adaface" | "sphereface" | "facenet": path or None}; arcface: an insightface pack
    folder or None; dlib: "auto" (filled when dlib is installed), "on" (an error without it) or "off"."""
    if dlib not in ("auto", "on", "off"):
        raise F2DError(f"--dlib must be auto, on or off, got {dlib!r}.")
    backends, missing = {}, {}
    onnx_device = "cpu" if device == "cpu" else "auto"
    shared = _detector(detector, arcface, onnx_device) if any(files.get(c) for c in PAPER_COLUMNS) else None
    for column in PAPER_COLUMNS:
        path = files.get(column)
        if not path:
            missing[column] = f"no --{column} file given (e.g. {SPECS[column].file_hint})"
            continue
        backends[column] = NetIdentity(column, load_face_net(path, column), shared, device, os.path.basename(path))
    if arcface:
        backends["arcface"] = ArcFaceIdentity(arcface, onnx_device)
    else:
        missing["arcface"] = "no --arcface insightface pack given"
    if dlib == "on" or (dlib == "auto" and dlib_detector.dlib_available()):
        same = shared is not None and isinstance(shared.detector, dlib_detector.DlibDetector)
        backends["dlib"] = DlibIdentity(shared if same else None)  # one HOG pass per image for all columns
    else:
        missing["dlib"] = ("turned off (--dlib off)" if dlib == "off"
                           else f"dlib is not installed ({dlib_detector.INSTALL})")
    return {c: backends[c] for c in COLUMNS if c in backends}, missing
