"""Face recognition (ArcFace) with insightface's model files, without the insightface package.

Used to *grade* generated faces, so it is deliberately not MSID (a method is not graded by its
own encoder): buffalo_l's w600k_r50.onnx or antelopev2's glintr100.onnx, or any single-output
recognition model on a square 112 (or 128) input. Run as insightface's ArcFaceONNX does:
- the face is aligned from its 5 keypoints (SCRFD's, as insightface's FaceAnalysis passes them)
  by face_align.norm_crop: a similarity fit to the ArcFace template, bilinear warp, black border;
- the blob is OpenCV's dnn.blobFromImages(crops, 1/std, size, mean), here preprocess.to_blob:
  RGB (insightface swaps its BGR), (x - 127.5) / 127.5, or raw pixels when the graph normalises
  itself (Sub and Mul among its first 8 nodes: the mxnet exports);
- the embedding is the model's single output; `embeddings()` L2-normalises it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, F2DError, ModelFilesMissing
from .align import ARCFACE_TEMPLATE as ARCFACE_TEMPLATE_112
from .align import similarity_matrix, warp
from .onnx import file_key, load_graph, missing_files_message, normalises_itself, onnx_files, read_graph_summary
from .preprocess import to_blob

KNOWN_RECOGNIZERS = ("w600k_r50.onnx", "glintr100.onnx")  # buffalo_l, antelopev2
_BATCH = 32


def _template(size: int) -> np.ndarray:
    """insightface's estimate_norm destination points for a square input of `size`."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    dst = ARCFACE_TEMPLATE_112 * (size / 128.0)
    dst[:, 0] += 8.0 * size / 128.0
    return dst


def _square_size(shape) -> int | None:
    h, w = shape[2:4] if len(shape) == 4 else (None, None)
    if isinstance(h, int) and h == w and h > 0 and (h % 112 == 0 or h % 128 == 0):
        return h
    return None


class ArcFaceRecognizer:
    """An insightface recognition model run by torch: aligned crops -> identity embeddings.
    load_graph: as FaceDetector's (the tests pass onnxruntime there, as their oracle)."""

    def __init__(self, model_path, device: str = "auto", load_graph=load_graph):
        path = os.fspath(model_path)
        self.model_path, self.name = path, os.path.basename(path)
        self.net = load_graph(path, device)
        inp, outs = self.net.inputs[0], self.net.outputs
        size = _square_size(inp.shape)
        if len(outs) != 1 or size is None:
            raise CheckpointError(
                f"{self.name} is not a face recognition model: it has {len(outs)} output(s) and input shape "
                f"{inp.shape}; expected one output (the embedding) and a square [N, 3, 112, 112] input. Use "
                "w600k_r50.onnx (buffalo_l) or glintr100.onnx (antelopev2).")
        self.input_size = size
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        # insightface's ArcFaceONNX rule (no bn_data case, unlike the landmark model)
        self.input_mean, self.input_std = (0.0, 1.0) if normalises_itself(path) else (127.5, 127.5)

    def networks(self) -> list:
        """The torch module it runs (for a host's memory manager to move it)."""
        return [self.net]

    def align(self, image_rgb: np.ndarray, landmarks5) -> np.ndarray:
        """insightface face_align.norm_crop: uint8 RGB (size, size, 3) crop of the face."""
        matrix = similarity_matrix(np.asarray(landmarks5, np.float32), _template(self.input_size))
        return warp(image_rgb, matrix, self.input_size)

    def features(self, crops) -> np.ndarray:
        """Raw model outputs (N, D) float32 for aligned uint8 RGB crops (what insightface's get_feat returns)."""
        crops = [np.asarray(c) for c in crops]
        if not crops:
            return np.zeros((0, 0), np.float32)
        want = (self.input_size, self.input_size, 3)
        for i, c in enumerate(crops):
            if c.shape != want or c.dtype != np.uint8:
                raise F2DError(
                    f"face crop {i + 1} for {self.name} is {c.dtype} {c.shape}, but this model takes uint8 RGB "
                    f"crops shaped {want}. Crop the faces with ArcFaceRecognizer.align (it gives that size).")
        step = self.fixed_batch or _BATCH
        out = []
        for i in range(0, len(crops), step):
            blob = to_blob(crops[i:i + step], self.input_mean, self.input_std)
            out.append(self.net.run(blob)[0])
        return np.concatenate(out).reshape(len(crops), -1).astype(np.float32)

    def embeddings(self, crops) -> np.ndarray:
        """L2-normalised embeddings (N, D) (insightface's normed_embedding)."""
        f = self.features(crops)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _pack_folder(pack: Path) -> Path:
    from .detect import _pack_folder as folder  # the same nesting rule as the detector's
    return folder(pack)


def _is_recognizer(path: Path) -> bool:
    """One output, a square 112/128 input: checked cheaply first (the output count), then by
    loading the graph (cached, so the scorer reuses it)."""
    try:
        if read_graph_summary(path).num_outputs != 1:
            return False
        net = load_graph(path, "cpu")
    except (OSError, ValueError, CheckpointError):
        return False
    inp, outs = net.inputs[0], net.outputs
    return len(outs) == 1 and _square_size(inp.shape) is not None and len(outs[0].shape) == 2


def find_recognizer_file(pack_dir) -> str:
    """The recognition model of an insightface pack folder: w600k_r50.onnx (buffalo_l),
    glintr100.onnx (antelopev2), else the one single-output model on a square 112/128 input."""
    pack = Path(pack_dir)
    if not pack.is_dir():
        raise ModelFilesMissing(
            f"insightface model folder not found: {pack}. Expected a pack folder such as "
            "ComfyUI/models/insightface/models/buffalo_l (with w600k_r50.onnx) or .../antelopev2 "
            "(with glintr100.onnx).")
    folder = _pack_folder(pack)
    files, broken = onnx_files(folder)
    by_name = {p.name.lower(): p for p in files}
    for known in KNOWN_RECOGNIZERS:
        if known in by_name:
            return str(by_name[known])
    for p in files:
        if p.name.lower() not in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx") and _is_recognizer(p):
            return str(p)
    found = missing_files_message(files, broken)
    raise ModelFilesMissing(
        f"No face recognition model in {folder}: found {found}. Expected w600k_r50.onnx (buffalo_l), "
        "glintr100.onnx (antelopev2) or another insightface recognition model (one 512-d output, "
        "input [N, 3, 112, 112]). Unpack the whole model pack so its .onnx files sit in this folder.")


def list_recognizer_packs(models_root) -> list[str]:
    """Pack folders under models_root that hold both a face detector and a recognition model."""
    from .detect import find_detector_files, list_insightface_packs
    return list_insightface_packs(models_root, (find_detector_files, find_recognizer_file))


@functools.lru_cache(maxsize=2)
def _load(real_path: str, mtime_ns: int, device: str) -> ArcFaceRecognizer:
    return ArcFaceRecognizer(real_path, device)


def load_recognizer(model_path, device: str = "auto") -> ArcFaceRecognizer:
    """Cached: each model file is loaded once (reloaded when the file changes)."""
    real, _, mtime = file_key(model_path)  # a missing file: the usual "ONNX model file not found ..."
    return _load(real, mtime, str(device))
