"""Face detection with insightface's model files, without the insightface package.

We run SCRFD (det_10g.onnx, scrfd_10g_bnkps.onnx, ...) and optionally the 1k3d68
landmark model with torch (faces/onnx.py reads the files as they are), reproducing
insightface's pre- and post-processing
(0.7.3 and 2.1 agree on it): letterbox into det_size, (x - 127.5) / 128, anchor
decoding at strides 8/16/32, greedy NMS with the +1 pixel area convention.
One deliberate difference: downscaling uses INTER_AREA (insightface: INTER_LINEAR),
which does not alias on large photos; upscaling stays INTER_LINEAR, as theirs.
Both are computed in numpy (preprocess.py), as is the 68-point model's crop (align.warp):
no OpenCV. Images are RGB here; insightface takes BGR and swaps, so the blobs are equal.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError
from .align import landmarks68_to_5, warp
from .dlib_detector import load_dlib_detector
from .images import to_rgb_uint8
from .onnx import file_key, load_graph, missing_files_message, normalises_itself, onnx_files, read_graph_summary
from .preprocess import resized_strips, to_blob

KNOWN_DETECTORS = ("det_10g.onnx", "scrfd_10g_bnkps.onnx")  # buffalo_l, antelopev2
LANDMARK68 = "1k3d68.onnx"


@dataclass
class Face:
    box: np.ndarray          # (4,) float32 x1, y1, x2, y2, source pixels
    score: float
    landmarks5: np.ndarray   # (5, 2) float32: eye (image left), eye (image right), nose, mouth left, mouth right
    landmarks68: np.ndarray | None = None  # (68, 2) float32 iBUG-68, when the 1k3d68 model ran

    @property
    def area(self) -> float:
        return max(0.0, float(self.box[2] - self.box[0])) * max(0.0, float(self.box[3] - self.box[1]))

    def alignment_points(self) -> np.ndarray:
        """(5, 2) points for alignment: the official 68->5 reduction when 68 points exist."""
        if self.landmarks68 is None:
            return self.landmarks5
        return landmarks68_to_5(self.landmarks68)


def _fixed_hw(shape):
    h, w = shape[2:4]
    return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


class FaceDetector:
    """SCRFD (+ optional 1k3d68) run by torch. det_size: int or (width, height), as insightface's
    det_size; faces scoring below det_thresh are dropped, overlaps above nms_thresh IoU merged.
    load_graph(path, device) gives each network: anything with .inputs, .outputs (name, shape)
    and .run(*arrays) -> arrays (the tests pass onnxruntime there, as their oracle)."""

    def __init__(self, det_model_path, landmark68_path=None, device="auto", det_size=640,
                 det_thresh=0.5, nms_thresh=0.4, load_graph=load_graph):
        self.net = load_graph(det_model_path, device)
        name = os.path.basename(os.fspath(det_model_path))
        inp = self.net.inputs[0]
        outs = self.net.outputs
        n = len(outs)
        if n not in (6, 9, 10, 15) or len(inp.shape) != 4:
            raise CheckpointError(
                f"{name} is not an SCRFD face detector: it has {n} outputs and input shape {inp.shape}; "
                f"expected 9 or 15 outputs and an image input [1, 3, H, W]. Use det_10g.onnx (buffalo_l) "
                f"or scrfd_10g_bnkps.onnx (antelopev2).")
        if n in (6, 10):
            raise CheckpointError(
                f"{name} is an SCRFD detector without facial keypoints ({n} outputs); alignment needs the "
                f"5 keypoints. Use det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx (antelopev2).")
        self.batched = len(outs[0].shape) == 3  # some exports keep a batch axis on every output
        self.fmc = 3 if n == 9 else 5
        self.strides = (8, 16, 32) if n == 9 else (8, 16, 32, 64, 128)
        self.num_anchors = 2 if n == 9 else 1
        fixed = _fixed_hw(inp.shape)
        if fixed is not None:  # a fixed-size export ignores det_size, as insightface does
            self.input_hw = fixed
        else:
            w, h = (det_size, det_size) if np.isscalar(det_size) else det_size
            if int(w) <= 0 or int(h) <= 0 or int(w) % self.strides[-1] or int(h) % self.strides[-1]:
                raise F2DError(f"det_size must be a positive multiple of {self.strides[-1]} "
                               f"(the detector's largest stride), got {det_size}; 640 is the usual value.")
            self.input_hw = (int(h), int(w))
        if not 0.0 < float(det_thresh) <= 1.0:
            raise F2DError(f"det_thresh must lie in (0, 1], got {det_thresh}; 0.5 is insightface's default.")
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)
        self.lmk_net = None
        if landmark68_path is not None:
            self._init_landmarks(landmark68_path, device, load_graph)
        # what it is, for the records an identity keeps: its model files, and their names
        self.paths = tuple(os.fspath(p) for p in (det_model_path, landmark68_path) if p is not None)
        self.name = " + ".join(os.path.basename(p) for p in self.paths)  # "det_10g.onnx + 1k3d68.onnx"

    def networks(self) -> list:
        """The torch modules it runs (for a host's memory manager to move them)."""
        return [n for n in (self.net, self.lmk_net) if n is not None]

    def _init_landmarks(self, path, device, load_graph):
        name = os.path.basename(os.fspath(path))
        self.lmk_net = load_graph(path, device)
        inp, out = self.lmk_net.inputs[0], self.lmk_net.outputs[0]
        hw = _fixed_hw(inp.shape)
        if hw is None or hw[0] != hw[1] or out.shape[-1] != 3309:
            raise CheckpointError(
                f"{name} is not insightface's 68-point landmark model: input {inp.shape}, output "
                f"{out.shape}; expected 1k3d68.onnx (input [N, 3, 192, 192], output [N, 3309]). "
                f"Use the 1k3d68.onnx from buffalo_l or antelopev2, or turn the 68-point landmarks off.")
        self.lmk_size = hw[0]
        self.lmk_mean, self.lmk_std = (0.0, 1.0) if normalises_itself(path, bn_data=True) else (127.5, 128.0)

    def detect(self, image, name="image") -> list[Face]:
        """Faces in an RGB image, in source pixels, highest score first."""
        rgb = to_rgb_uint8(image, name)
        blob, det_scale = self._letterbox(rgb)
        # NHWC: oneDNN then skips a layout reorder per convolution; on a 640x640 input, measured
        # 0.88 s against 1.06 s for an SCRFD-10GF-sized network (1 CPU thread; benchmarks/RESULTS.md)
        outs = self.net.run(blob, channels_last=True)
        dets, kps = self._decode(outs, blob.shape[2], blob.shape[3])
        dets[:, :4] /= det_scale
        kps /= det_scale
        order = np.argsort(-dets[:, 4], kind="stable")  # stable: 2.1's tie order
        dets, kps = dets[order], kps[order]
        keep = _nms(dets, self.nms_thresh)
        faces = [Face(dets[i, :4].copy(), float(dets[i, 4]), kps[i].copy()) for i in keep]
        if self.lmk_net is not None:
            for face in faces:
                face.landmarks68 = self._landmarks68(rgb, face.box)
        return faces

    def letterbox_size(self, shape) -> tuple[int, int, float]:
        """(new_h, new_w, det_scale) of an image of `shape` fitted into det_size keeping its aspect
        ratio: insightface's arithmetic, including one det_scale, from the height, for both axes."""
        in_h, in_w = self.input_hw
        im_ratio = float(shape[0]) / shape[1]
        if im_ratio > float(in_h) / in_w:
            new_h, new_w = in_h, max(1, int(in_h / im_ratio))
        else:
            new_h, new_w = max(1, int(in_w * im_ratio)), in_w
        return new_h, new_w, float(new_h) / shape[0]

    def _letterbox(self, rgb):
        """Scale to fit det_size keeping the aspect ratio, pad right/bottom with black."""
        in_h, in_w = self.input_hw
        new_h, new_w, det_scale = self.letterbox_size(rgb.shape)
        # the resize is written straight into the blob, strip by strip, normalised like the
        # black padding: (x - 127.5) / 128 of the uint8 canvas insightface would build
        mean, scale = np.float32(127.5), np.float32(1.0 / 128.0)
        blob = np.empty((1, 3, in_h, in_w), np.float32)
        blob[0, :, new_h:] = blob[0, :, :new_h, new_w:] = -mean * scale
        for r0, r1, block in resized_strips(rgb, new_w, new_h):
            block -= mean
            block *= scale
            blob[0, :, r0:r1, :new_w] = block.transpose(2, 1, 0)
        return blob, det_scale

    def _decode(self, outs, in_h, in_w):
        """Candidates above det_thresh: (N, 5) [x1, y1, x2, y2, score] and (N, 5, 2), input pixels.
        Outputs come ordered scores, boxes, keypoints, each by stride; rows are (y, x, anchor)."""
        dets, kpss = [], []
        for i, stride in enumerate(self.strides):
            scores, boxes, kps = (outs[i + k * self.fmc] for k in range(3))
            if self.batched:
                scores, boxes, kps = scores[0], boxes[0], kps[0]
            scores = scores.reshape(-1)
            pos = np.nonzero(scores >= self.det_thresh)[0]
            if pos.size == 0:
                continue
            gw = in_w // stride
            cell = pos // self.num_anchors  # anchors of one location are consecutive rows
            centers = np.stack([cell % gw, cell // gw], axis=1).astype(np.float32) * stride
            d = boxes.reshape(-1, 4)[pos] * stride
            box = np.concatenate([centers - d[:, :2], centers + d[:, 2:]], axis=1)
            dets.append(np.concatenate([box, scores[pos, None]], axis=1).astype(np.float32))
            kpss.append(centers[:, None, :] + kps.reshape(-1, 5, 2)[pos] * stride)
        if not dets:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return np.concatenate(dets), np.concatenate(kpss).astype(np.float32)

    def _landmarks68(self, rgb, box):
        """insightface Landmark.get: a square crop 1.5x the box's longer side around its centre,
        resized to 192, model output in [-1, 1] crop units mapped back to source pixels."""
        size = self.lmk_size
        b = np.asarray(box, np.float32)
        w, h = b[2] - b[0], b[3] - b[1]
        cx, cy = (b[2] + b[0]) / 2, (b[3] + b[1]) / 2
        s = np.float32(size) / (max(w, h) * np.float32(1.5))  # float32, as insightface computes it
        m = np.array([[s, 0.0, size / 2 - float(cx * s)], [0.0, s, size / 2 - float(cy * s)], [0.0, 0.0, 1.0]])
        crop = warp(rgb, m, size)  # Landmark.get's warpAffine: bilinear, black border
        blob = to_blob([crop], self.lmk_mean, self.lmk_std)
        pred = self.lmk_net.run(blob)[0][0]
        pred = pred.reshape(-1, 3)[-68:, :2].astype(np.float64)  # 1103 (x, y, z) rows; the last 68 are iBUG-68
        pts = (pred + 1.0) * (size // 2)
        inv = np.linalg.inv(m)[:2]  # crop pixels -> source pixels
        return (pts @ inv[:, :2].T + inv[:, 2]).astype(np.float32)


def _nms(dets, thresh):
    """Greedy NMS over score-sorted rows; IoU with the legacy +1 pixel widths, kept if IoU <= thresh."""
    x1, y1, x2, y2 = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.arange(len(dets)), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return keep


def _pack_folder(pack: Path) -> Path:
    nested = pack / pack.name  # antelopev2.zip unzipped into antelopev2/ gives antelopev2/antelopev2/
    if nested.is_dir() and not any(pack.glob("*.onnx")):
        return nested
    return pack


def _outputs(path: Path) -> int:
    try:
        return read_graph_summary(path).num_outputs
    except (OSError, ValueError):
        return 0


def find_detector_files(pack_dir) -> tuple[str, str | None]:
    """(SCRFD detector with keypoints, 1k3d68.onnx or None) in an insightface model pack folder."""
    pack = Path(pack_dir)
    if not pack.is_dir():
        raise ModelFilesMissing(
            f"insightface model folder not found: {pack}. Expected a pack folder such as "
            f"ComfyUI/models/insightface/models/buffalo_l (with det_10g.onnx) or .../antelopev2 "
            f"(with scrfd_10g_bnkps.onnx).")
    folder = _pack_folder(pack)
    files, broken = onnx_files(folder)
    by_name = {p.name.lower(): p for p in files}
    det = next((by_name[k] for k in KNOWN_DETECTORS if k in by_name), None)
    no_kps = []
    if det is None:  # another SCRFD (det_500m, det_2.5g, ...): recognised by its 9 or 15 outputs
        for p in files:
            n = _outputs(p) if p.name.lower() != LANDMARK68 else 1
            if n in (9, 15):
                det = p
                break
            if n in (6, 10):
                no_kps.append(p.name)
    if det is None:
        found = missing_files_message(files, broken)
        hint = f" ({', '.join(no_kps)}: SCRFD without keypoints, which alignment needs)" if no_kps else ""
        raise ModelFilesMissing(
            f"No face detector in {folder}: found {found}{hint}. Expected det_10g.onnx (buffalo_l), "
            f"scrfd_10g_bnkps.onnx (antelopev2) or another SCRFD detector with 5 keypoints "
            f"(9 or 15 outputs)." + ("" if broken else " Unpack the whole insightface model pack so "
            "its .onnx files sit directly in this folder."))
    lmk = by_name.get(LANDMARK68)
    return str(det), (str(lmk) if lmk else None)


def list_insightface_packs(models_root, finders=(find_detector_files,)) -> list[str]:
    """Names of the pack folders under models_root (e.g. ComfyUI/models/insightface/models) in which
    every finder (default: the detector's) finds its model file."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    names = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            for find in finders:
                find(d)
        except ModelFilesMissing:
            continue
        names.append(d.name)
    return names


@functools.lru_cache(maxsize=2)
def _load(det_key, lmk_key, device, options):
    """det_key, lmk_key: onnx.file_key's (real path, size, mtime), so a replaced file is reloaded."""
    return FaceDetector(det_key[0], lmk_key[0] if lmk_key else None, device=device, **dict(options))


def load_detector(pack_dir, use_landmarks68=True, device="auto", **kw) -> FaceDetector:
    """A FaceDetector for a pack folder; cached, so each model file is loaded once (kw: det_size,
    det_thresh, nms_thresh). pack_dir "dlib": dlib's detector, which needs no model folder."""
    # --- dlib (faces/dlib_detector.py), which makes this module's Face
    if isinstance(pack_dir, str) and pack_dir == "dlib":
        return load_dlib_detector(Face, device=device, **kw)
    # --- insightface packs
    det, lmk = find_detector_files(pack_dir)
    lmk_key = file_key(lmk) if (lmk and use_landmarks68) else None
    return _load(file_key(det), lmk_key, device,
                 tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items())))


def index_order(faces) -> list[Face]:
    """The faces in the order a face index counts them: largest box first (0 = largest); the sort
    is stable, so equal areas keep the detector's order (highest score first)."""
    return sorted(faces, key=lambda f: -f.area)


def select_face(faces, policy="largest", image_name="image") -> Face:
    """One face: "largest" (box area, the default), "confident" (detector score), or an int index
    into the faces ordered largest first (0 = largest, 1 = second largest, ...)."""
    if not faces:
        raise NoFaceError(
            f"No face found in {image_name}. Use a clearer photo where the face is larger, frontal and "
            f"well lit, lower the detection threshold, or crop the image around the face.")
    by_area = index_order(faces)
    if policy == "largest":
        return by_area[0]
    if policy == "confident":
        return max(faces, key=lambda f: f.score)
    if isinstance(policy, (int, np.integer)) and not isinstance(policy, bool):
        if 0 <= policy < len(faces):
            return by_area[policy]
        raise NoFaceError(  # "skip" leaves such a photo out, like one with no face
            f"{image_name}: face index {policy} was requested but {len(faces)} face(s) were found "
            f"(valid indices 0..{len(faces) - 1}, largest first). Use a smaller index or 'largest'.")
    raise F2DError(f"Unknown face selection {policy!r}: use 'largest', 'confident' or a face index (0 = largest).")
