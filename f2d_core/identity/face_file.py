"""The identity file (`NAME.f2d.safetensors`): one person's face, reusable without the encoder.

Tensors: `features` (1536,) mean MSID features over the faces used; `s1`, `s2` (768,)
the identity tokens for the learned neutral expression; optionally `features_per_face`
(N, 1536) and `aligned` (N, 112, 112, 3) uint8 crops, to show what was encoded.
Metadata (strings): format version, model file hashes, sources, boxes, scores.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import torch

from ..errors import F2DError

FORMAT = "face2diffusion.identity"
VERSION = "1"
SUFFIX = ".f2d.safetensors"


@dataclass
class FaceIdentity:
    features: torch.Tensor                      # (1536,) float32
    s1: torch.Tensor | None = None              # (768,) float32, neutral-expression tokens
    s2: torch.Tensor | None = None
    features_per_face: torch.Tensor | None = None  # (N, 1536)
    aligned: torch.Tensor | None = None         # (N, 112, 112, 3) uint8
    meta: dict = field(default_factory=dict)    # JSON-serialisable

    @property
    def num_faces(self) -> int:
        return int(self.meta.get("num_faces", 1 if self.features_per_face is None else len(self.features_per_face)))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"features": self.features}
        for k in ("s1", "s2", "features_per_face", "aligned"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def save(self, path: str) -> str:
        """Write atomically (temp file + rename): a crash never leaves a half-written identity."""
        from safetensors.torch import save_file
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "meta": json.dumps(self.meta, sort_keys=True)}
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            save_file(self.tensors(), tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str) -> "FaceIdentity":
        from safetensors import SafetensorError, safe_open
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise F2DError(f"{path}: identity file not found.")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise F2DError(f"{path}: not a readable identity file ({e}); save the face again.") from None
        if header.get("format") != FORMAT or "features" not in tensors:
            raise F2DError(f"{path}: not a Face2Diffusion identity file (expected metadata format={FORMAT!r} and a "
                           f"'features' tensor; found {sorted(tensors)[:5]}). Create one with the Save Face node "
                           "or `python -m f2d_core encode`.")
        want = {"features": (1536,), "s1": (768,), "s2": (768,)}
        for k, shape in want.items():
            if k in tensors and tuple(tensors[k].shape) != shape:
                raise F2DError(f"{path}: {k!r} has shape {tuple(tensors[k].shape)}, expected {shape}; the file "
                               "was not written by this pack. Save the face again.")
        try:
            meta = json.loads(header.get("meta", "{}"))
        except json.JSONDecodeError:
            raise F2DError(f"{path}: its metadata is not valid JSON; save the face again.") from None
        return cls(features=tensors["features"].float(), s1=tensors.get("s1"), s2=tensors.get("s2"),
                   features_per_face=tensors.get("features_per_face"), aligned=tensors.get("aligned"), meta=meta)
