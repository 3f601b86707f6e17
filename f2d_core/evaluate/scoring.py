"""Per-image scores of the generated images (see f2d_core.evaluate.metrics for the definitions).

identity   ArcFace similarity to the face photo(s), clipped to [0, 1], 0 without a face
clip_t     CLIP score of the image and the prompt, "f l" read as the subject ("a person")
clip_i     CLIP image similarity of the image and the face photo(s)
clip_dir   directional CLIP: image change from the reference image (same face and seed, prompt
           "a photo of f l") against text change from "A photo of a person" to the prompt
hmean_*, gmean_*  harmonic / geometric mean of identity and clip_t (or clip_dir), per image
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from . import metrics
from ..faces.images import to_rgb_uint8
from .jobs import Job, subject_text

NEUTRAL_TEXT = "A photo of a person"
SUBJECT = "a person"
COLUMNS = ["face", "prompt_index", "prompt", "seed", "file", "face_found", "identity", "clip_t", "clip_i",
           "clip_dir", "hmean_t", "gmean_t", "hmean_dir", "gmean_dir"]


def _read(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return to_rgb_uint8(np.asarray(im.convert("RGB")), os.path.basename(path))


class Scorer:
    """identity: a similarity.IdentityScorer; clip: a clip_score.ClipEmbedder or None (no text scores)."""

    def __init__(self, identity, clip=None, subject: str = SUBJECT, neutral_text: str = NEUTRAL_TEXT):
        self.identity, self.clip, self.subject, self.neutral_text = identity, clip, subject, neutral_text
        self._faces = {}

    def _face(self, face):
        """(ArcFace identity, CLIP image embedding) of a face's photo(s), once per face."""
        if face not in self._faces:
            photos = [_read(p) for p in face.photos]
            ident = self.identity.reference(photos, [os.path.basename(p) for p in face.photos])
            clip_ref = None
            if self.clip is not None:
                e = self.clip.images(photos).mean(axis=0)
                clip_ref = e / max(float(np.linalg.norm(e)), 1e-12)
            self._faces[face] = (ident, clip_ref)
        return self._faces[face]

    def score(self, jobs: list[Job], out_dir: str, progress: Callable[[int], None] | None = None) -> list[dict]:
        """One row per generated (non-reference) image, in job order."""
        refs = {(j.face, j.seed): j.path(out_dir) for j in jobs if j.is_reference and os.path.isfile(j.path(out_dir))}
        ref_clip = {}
        neutral = self.clip.texts([self.neutral_text])[0] if self.clip is not None else None
        texts = {}
        rows = []
        for job in jobs:
            if job.is_reference:
                continue
            ident, clip_face = self._face(job.face)
            path = job.path(out_dir)
            image = _read(path)
            emb = self.identity.embed(image, os.path.basename(path))
            row = {"face": job.face.label, "prompt_index": job.prompt_index, "prompt": job.prompt, "seed": job.seed,
                   "file": os.path.relpath(path, out_dir), "face_found": emb is not None,
                   "identity": metrics.identity_similarity(ident, emb)}
            if self.clip is not None:
                if job.prompt not in texts:
                    texts[job.prompt] = self.clip.texts([subject_text(job.prompt, self.subject)])[0]
                img = self.clip.images([image])[0]
                row["clip_t"] = metrics.clip_score(img, texts[job.prompt])
                row["clip_i"] = metrics.clip_image_score(img, clip_face)
                key = (job.face, job.seed)
                if key in refs and key not in ref_clip:
                    ref_clip[key] = self.clip.images([_read(refs[key])])[0]
                if key in ref_clip:
                    row["clip_dir"] = metrics.directional_clip(img, ref_clip[key], texts[job.prompt], neutral)
                for kind in ("t", "dir"):
                    text = row.get("clip_" + kind)
                    if text is not None:
                        row["hmean_" + kind] = float(metrics.harmonic_mean(row["identity"], text))
                        row["gmean_" + kind] = float(metrics.geometric_mean(row["identity"], text))
            rows.append(row)
            if progress:
                progress(1)
        return rows
