"""Training data: a folder of face photos -> per-sample crops, in a reproducible order.

1. `build_index` finds one face per photo (the engine's SCRFD detector, or landmarks the
   user supplies in a JSON file) and caches the landmarks in the run folder, so photos are
   detected once, not every epoch.
2. `FaceDataset` cuts each sample into the crops the trainer needs (see crops.py): the SD
   crop (FFHQ alignment, `size`²), the MSID crop (ArcFace 112²), the expression crop
   (Deep3DFaceRecon 224², only with an expression model) and the landmark face mask; a
   horizontally flipped sample flips all of them (the paper's only augmentation).
3. `SampleStream` decides which photo comes k-th and whether it is flipped, as a pure
   function of (seed, k): one shuffled permutation per epoch. A run resumed at step s
   simply continues at sample s·batch, which makes resuming exact; under torchrun each
   rank takes its slice of every step's samples (`SampleStream.shard`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import F2DError, NoFaceError

from .crops import crop_time_ids, sd_crop_matrix, warp
from .masks import landmark_mask

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
INDEX_VERSION = 1


@dataclass
class FaceRecord:
    path: str                       # relative to the data folder
    landmarks5: np.ndarray | None   # (5, 2) eye (image left), eye (image right), nose, mouth left, mouth right
    landmarks68: np.ndarray | None = None
    label: int = -1                 # identity (MSID data), -1 when unknown

    def alignment_points(self) -> np.ndarray:  # same rule as detect.Face
        if self.landmarks68 is None:
            return self.landmarks5
        from ..faces.align import landmarks68_to_5
        return landmarks68_to_5(self.landmarks68)


def list_images(root: str) -> list[str]:
    """Image files under `root`, relative paths, sorted (so the order is the same everywhere)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out += [os.path.relpath(os.path.join(d, f), root) for f in sorted(files)
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return sorted(p.replace(os.sep, "/") for p in out)


def read_rgb(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise F2DError(f"{path}: not a readable image ({e}). Remove it from the data folder.") from None


def _record(rel, entry, label=-1) -> FaceRecord:
    l68 = entry.get("landmarks68")
    return FaceRecord(rel, np.asarray(entry["landmarks5"], np.float32),
                      None if l68 is None else np.asarray(l68, np.float32), label)


def _user_landmarks(path: str) -> dict:
    """{relpath: {"landmarks5": ..., "landmarks68": ...}} from a user's JSON file, whose values are
    either such dicts or bare point lists (5 or 68 points)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise F2DError(f"--landmarks {path}: file not found.") from None
    except json.JSONDecodeError as e:
        raise F2DError(f"--landmarks {path}: not valid JSON ({e}); expected "
                       '{"relative/path.jpg": [[x, y], ... 5 or 68 points]}.') from None
    if not isinstance(raw, dict):
        raise F2DError(f"--landmarks {path}: expected a JSON object mapping image paths to point lists.")
    out = {}
    for rel, v in raw.items():
        pts = v if isinstance(v, list) else v.get("landmarks68") or v.get("landmarks5")
        a = np.asarray(pts, np.float32)
        if a.shape == (68, 2):
            from ..faces.align import landmarks68_to_5
            out[rel] = {"landmarks5": landmarks68_to_5(a).tolist(), "landmarks68": a.tolist()}
        elif a.shape == (5, 2):
            out[rel] = {"landmarks5": a.tolist(), "landmarks68": None}
        else:
            raise F2DError(f"{path}: the landmarks of {rel!r} have shape {a.shape}; give 5 or 68 (x, y) points.")
    return out


def _stale(entry, st) -> bool:
    return entry is None or entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns


def _detect_entry(root, rel, detector, policy) -> dict:
    from ..faces.detect import select_face
    full = os.path.join(root, rel)
    st = os.stat(full)
    try:
        face = select_face(detector.detect(read_rgb(full), rel), policy, rel)
        entry = {"landmarks5": np.asarray(face.landmarks5).tolist(),
                 "landmarks68": None if face.landmarks68 is None else np.asarray(face.landmarks68).tolist(),
                 "score": float(face.score)}
    except NoFaceError as e:
        entry = {"no_face": str(e)}
    entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return entry


def build_index(root: str, detector=None, landmarks_file: str | None = None, cache_path: str | None = None,
                policy="largest", progress=None, labels: dict | None = None, ranks=None) -> list[FaceRecord]:
    """One FaceRecord per photo with a face. Landmarks come from `landmarks_file` when it lists
    the photo, else from `detector` (cached in `cache_path`, reused while the photo's size and
    mtime are unchanged). Photos without a face are left out and counted in the log.
    ranks (distributed.Ranks): the photos to detect are shared out over the ranks, every rank
    gets the whole index, and only rank 0 writes the cache."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise F2DError(f"{root}: the data folder does not exist.")
    files = list_images(root)
    if labels is not None:  # identity folders: only the images inside a person's folder
        files = [f for f in files if f in labels]
    if not files:
        raise F2DError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} in it and its subfolders).")
    given = _user_landmarks(landmarks_file) if landmarks_file else {}
    cache = {}
    if cache_path and os.path.isfile(cache_path):
        with open(cache_path) as f:
            saved = json.load(f)
        if saved.get("version") == INDEX_VERSION:
            cache = saved.get("entries", {})
    undetected = [f for f in files if f not in given]
    if undetected and detector is None:
        raise F2DError(f"{len(undetected)} of the {len(files)} images in {root} have no landmarks (e.g. "
                       f"{undetected[0]}). Give --detector with an insightface pack folder (e.g. "
                       "ComfyUI/models/insightface/models/buffalo_l), or --landmarks with a JSON file "
                       "{\"relative/path.jpg\": [[x, y], ...5 or 68 points]}.")
    todo = [rel for rel in undetected if _stale(cache.get(rel), os.stat(os.path.join(root, rel)))]
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    mine = todo[rank::world]
    new = {}
    with ranks.guard("face detection") if ranks is not None else contextlib.nullcontext():
        for i, rel in enumerate(mine):
            new[rel] = _detect_entry(root, rel, detector, policy)
            if progress:
                progress(i + 1, len(mine))
    for part in (ranks.gather(new) if ranks is not None else [new]):
        cache.update(part)
    records, no_face = [], []
    for rel in files:
        label = -1 if labels is None else labels[rel]
        entry = given[rel] if rel in given else cache[rel]
        if "no_face" in entry:
            no_face.append(rel)
        else:
            records.append(_record(rel, entry, label))
    if cache_path and todo and rank == 0:
        tmp = cache_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"version": INDEX_VERSION, "root": os.path.abspath(root), "entries": cache}, f)
        os.replace(tmp, cache_path)
    if no_face:
        log.warning("%d of %d images have no detectable face and are left out (e.g. %s)", len(no_face), len(files),
                    ", ".join(no_face[:3]))
    if not records:
        raise NoFaceError(f"no face was found in any of the {len(files)} images in {root}.")
    return records


class SampleStream:
    """The k-th training sample, for every k >= 0: (record index, flipped), shuffled per epoch."""

    def __init__(self, n: int, seed: int, flip: bool = True):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self.flip = int(n), int(seed), bool(flip)
        self._epoch, self._perm, self._flips = -1, None, None

    def _load(self, epoch: int):
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            flips = torch.rand(self.n, generator=g) < 0.5
            self._flips = flips.tolist() if self.flip else [False] * self.n
            self._epoch = epoch

    def item(self, k: int) -> tuple[int, bool]:
        epoch, pos = divmod(int(k), self.n)
        self._load(epoch)
        return self._perm[pos], self._flips[pos]

    def batches(self, start: int, batch: int):
        """Endless lists of `batch` items, from sample number `start` on."""
        k = int(start)
        while True:
            yield [self.item(k + j) for j in range(batch)]
            k += batch

    def shard(self, start_step: int, batch: int, rank: int = 0, world: int = 1, micro: int | None = None):
        """Endless micro-batches of one rank, from optimizer step `start_step` on: step s uses samples
        [s·batch, (s+1)·batch); rank r takes its r-th slice of batch/world samples, in micro-batches
        of `micro`. With world 1 this is batches(start_step·batch, micro)."""
        per_rank = batch // world
        micro = micro or per_rank
        s = int(start_step)
        while True:
            first = s * batch + rank * per_rank
            for i in range(per_rank // micro):
                yield [self.item(first + i * micro + j) for j in range(micro)]
            s += 1


def to_msid_pixels(crops: torch.Tensor) -> torch.Tensor:
    """(B, 3, 112, 112) uint8 -> MSID input in [-1, 1], with f2d_core.models.msid.to_pixels' exact arithmetic."""
    return ((crops.double() / 255.0 - 0.5) / 0.5).float()


def _chw(a: np.ndarray) -> torch.Tensor:
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class FaceDataset(torch.utils.data.Dataset):
    """dataset[(index, flipped)] -> {"sd": (3, S, S), "id": (3, 112, 112), "mask": (1, S, S)
    [, "exp": (3, 224, 224)]}, all uint8, plus "index", "flip" and "time_ids" (6,) float32, SDXL's
    size/crop conditioning of this very crop (crops.crop_time_ids)."""

    def __init__(self, root: str, records: list[FaceRecord], size: int = 512, expression_crops: bool = False,
                 crop: str = "ffhq"):
        if crop not in ("ffhq", "none"):
            raise F2DError(f"crop must be 'ffhq' or 'none', got {crop!r}")
        self.root, self.records, self.size = os.fspath(root), records, int(size)
        self.expression_crops, self.crop = expression_crops, crop

    def __len__(self):
        return len(self.records)

    def crop_matrix(self, rec: FaceRecord, shape) -> np.ndarray:
        if self.crop == "ffhq":
            return sd_crop_matrix(rec.landmarks5, self.size)
        h, w = shape[:2]  # 'none': the photo is already the crop (e.g. FFHQ): centre square, resized
        s, side = self.size / min(h, w), min(h, w)
        return np.array([[s, 0, (0.5 * s - 0.5) - s * (w - side) / 2],
                         [0, s, (0.5 * s - 0.5) - s * (h - side) / 2]])

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        from ..faces.align import align_face
        rec = self.records[index]
        rgb = read_rgb(os.path.join(self.root, rec.path))
        m = self.crop_matrix(rec, rgb.shape)
        out = {"sd": warp(rgb, m, self.size),
               "id": align_face(rgb, rec.alignment_points(), rec.path)[0],
               "mask": landmark_mask(rec.landmarks5, rec.landmarks68, m, self.size)}
        if self.expression_crops:
            from ..identity.expression import align_for_recon, recon_points
            out["exp"] = align_for_recon(rgb, recon_points(rec), rec.path)[0]
        if flip:
            out = {k: v[:, ::-1] for k, v in out.items()}
        out = {k: _chw(v) for k, v in out.items()}
        time_ids = torch.from_numpy(crop_time_ids(m, rgb.shape, self.size, flip))
        out.update(index=index, flip=bool(flip), time_ids=time_ids)
        return out


def identity_folders(root: str) -> tuple[list[str], dict[str, int], list[str]]:
    """MSID data: one subfolder per person. -> (relative image paths, {path: label}, identity names)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise F2DError(f"{root}: the identity folder does not exist.")
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    paths, labels = [], {}
    for label, name in enumerate(names):
        for rel in list_images(os.path.join(root, name)):
            p = f"{name}/{rel}"
            paths.append(p)
            labels[p] = label
    if len(names) < 2 or not paths:
        raise F2DError(f"{root}: expected one subfolder of face images per person (at least two people), found "
                       f"{len(names)} subfolders and {len(paths)} images.")
    return paths, labels, names


class AlignedFaceDataset(torch.utils.data.Dataset):
    """MSID data: dataset[(index, flipped)] -> ((3, 112, 112) uint8 ArcFace crop, label).
    112x112 images are taken as already aligned (the usual form of face-recognition data sets);
    others are aligned from their record's landmarks."""

    def __init__(self, root: str, records: list[FaceRecord]):
        self.root, self.records = os.fspath(root), records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        from ..faces.align import ALIGNED_SIZE, align_face
        rec = self.records[index]
        rgb = read_rgb(os.path.join(self.root, rec.path))
        if rgb.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
            if rec.landmarks5 is None:
                raise F2DError(f"{rec.path}: {rgb.shape[1]}x{rgb.shape[0]}, not an aligned 112x112 face, and no "
                               "landmarks are known for it. Align the faces to 112x112 first (msid-eval takes "
                               "aligned faces only), or let `train msid` align them with --detector or --landmarks.")
            rgb = align_face(rgb, rec.alignment_points(), rec.path)[0]
        if flip:
            rgb = rgb[:, ::-1]
        return _chw(rgb), rec.label
