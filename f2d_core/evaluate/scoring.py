"""Per-image scores of the generated images, as in the paper's Appendix E.3 (definitions and
equation numbers in f2d_core.evaluate.metrics).

adaface, sphereface, facenet   ID (Eq. 10) with each of the paper's face recognisers
arcface, dlib                  ID (Eq. 10) with recognisers the paper did not use (own columns)
clip                           CLIP score (Eq. 11), "f l" read as the subject ("a person")
dclip                          directional CLIP (Eq. 12-13): image change from the reference image
                               (same face and seed, prompt "a photo of f l") against the text change
                               from "A photo of a person" to the prompt
siglip                         SigLIP score (Eq. 14) with the model's own scale and bias
hmean, gmean                   harmonic / geometric mean of the six paper columns of the image (§4.2);
                               missing unless all six are filled
hmean_filled, gmean_filled     the same over whichever score columns were filled (not the paper's)
A column whose model was not given is missing (empty in results.csv, null in summary.json),
never filled by another model.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from . import metrics
from ..errors import NoFaceError
from ..faces.images import read_image
from .jobs import Job, subject_text

NEUTRAL_TEXT = "A photo of a person"  # p_r of Eq. 13
SUBJECT = "a person"
PAPER_IDENTITY = ("adaface", "sphereface", "facenet")  # Table 1's identity columns
EXTRA_IDENTITY = ("arcface", "dlib")  # recognisers the paper did not use, in columns of their own
IDENTITY_COLUMNS = PAPER_IDENTITY + EXTRA_IDENTITY
TEXT_COLUMNS = ("clip", "dclip", "siglip")
PAPER_SIX = PAPER_IDENTITY + TEXT_COLUMNS
SCORE_COLUMNS = IDENTITY_COLUMNS + TEXT_COLUMNS
COMBINED = ("hmean", "gmean", "hmean_filled", "gmean_filled")
COLUMNS = ["face", "prompt_index", "prompt", "seed", "file", "face_found", "no_face", *SCORE_COLUMNS, *COMBINED]


def _read(path: str) -> np.ndarray:
    return read_image(path)  # what LoadImage gave the encoder: EXIF rotation applied, 16-bit scaled


class Scorer:
    """identity: {column: identity_models backend}; clip: a clip_score.ClipEmbedder or None;
    siglip: a clip_score.SiglipEmbedder or None; missing: {column: why it has no model}."""

    def __init__(self, identity: dict, clip=None, siglip=None, missing: dict | None = None,
                 subject: str = SUBJECT, neutral_text: str = NEUTRAL_TEXT):
        self.identity, self.clip, self.siglip = dict(identity), clip, siglip
        self.subject, self.neutral_text = subject, neutral_text
        self.missing = dict(missing or {})
        if clip is None:
            self.missing.setdefault("clip", "no --clip folder given")
            self.missing.setdefault("dclip", "no --clip folder given")
        if siglip is None:
            self.missing.setdefault("siglip", "no --siglip folder given")
        self._refs: dict = {}
        self.no_reference: dict = {}  # column -> faces whose photos it found no face in

    def columns(self) -> dict:
        """Which model filled each score column, or why it is missing."""
        out = {}
        for c in SCORE_COLUMNS:
            model = self._model(c)
            out[c] = ({"filled": True, "model": model, "paper": c in PAPER_SIX and self._paper_model(c)}
                      if model else {"filled": False, "missing": self.missing.get(c, "no model given")})
            if c in self.no_reference:
                out[c]["no_face_in_photos_of"] = self.no_reference[c]  # no score for these faces' images
        return out

    def _model(self, column: str) -> str | None:
        if column in self.identity:
            return self.identity[column].description
        if column in ("clip", "dclip") and self.clip is not None:
            return f"CLIP {self.clip.architecture} from {self.clip.path}"
        if column == "siglip" and self.siglip is not None:
            return f"SigLIP from {self.siglip.path} (scale {self.siglip.scale:.4g}, bias {self.siglip.bias:.4g})"
        return None

    def _paper_model(self, column: str) -> bool:
        return self.clip.is_paper_model if column in ("clip", "dclip") else True

    def _face(self, face) -> dict:
        """Per face: each recogniser's identity of the face photo(s), once; None for a recogniser
        that finds no face in them (its column then has no score for this face, and says why)."""
        if face not in self._refs:
            photos = [_read(p) for p in face.photos]
            names = [os.path.basename(p) for p in face.photos]
            self._refs[face] = {}
            for column, backend in self.identity.items():
                try:
                    self._refs[face][column] = backend.reference(photos, names)
                except NoFaceError:
                    self._refs[face][column] = None
                    self.no_reference.setdefault(column, []).append(face.label)
        return self._refs[face]

    def score(self, jobs: list[Job], out_dir: str, progress: Callable[[int], None] | None = None) -> list[dict]:
        """One row per generated (non-reference) image, in job order."""
        refs = {(j.face, j.seed): j.path(out_dir) for j in jobs if j.is_reference and os.path.isfile(j.path(out_dir))}
        ref_clip, texts = {}, {}
        filled = [c for c in SCORE_COLUMNS if self._model(c)]
        neutral = self.clip.texts([self.neutral_text])[0] if self.clip is not None else None
        rows = []
        for job in jobs:
            if job.is_reference:
                continue
            path = job.path(out_dir)
            image = _read(path)
            row = {"face": job.face.label, "prompt_index": job.prompt_index, "prompt": job.prompt, "seed": job.seed,
                   "file": os.path.relpath(path, out_dir), **{c: None for c in SCORE_COLUMNS + COMBINED}}
            no_face = []
            for column, backend in self.identity.items():
                reference = self._face(job.face)[column]
                if reference is None:
                    continue
                emb = backend.embed(image, os.path.basename(path))
                if emb is None:
                    no_face.append(column)
                row[column] = metrics.identity_similarity(reference, emb)
            row["face_found"], row["no_face"] = not no_face, " ".join(no_face)
            text = subject_text(job.prompt, self.subject)
            if self.clip is not None:
                if text not in texts:
                    texts[text] = self.clip.texts([text])[0]
                img = self.clip.images([image])[0]
                row["clip"] = metrics.clip_score(img, texts[text])
                key = (job.face, job.seed)
                if key in refs and key not in ref_clip:
                    ref_clip[key] = self.clip.images([_read(refs[key])])[0]
                if key in ref_clip:
                    row["dclip"] = metrics.directional_clip(img, ref_clip[key], texts[text], neutral)
            if self.siglip is not None:
                s_img, s_txt = self.siglip.images([image])[0], self.siglip.texts([text])[0]
                row["siglip"] = metrics.siglip_score(s_img, s_txt, self.siglip.scale, self.siglip.bias)
            combine(row, filled)
            rows.append(row)
            if progress:
                progress(1)
        return rows


def combine(row: dict, filled: list | tuple) -> dict:
    """hMean / gMean of the paper's six when all are filled; hmean_filled / gmean_filled over the
    columns in `filled` (those that had a model), when the row has every one of them and they
    hold at least one identity and one text column. The others stay None: missing."""
    row.update({k: None for k in COMBINED})
    if all(row.get(c) is not None for c in PAPER_SIX):
        six = [row[c] for c in PAPER_SIX]
        row["hmean"], row["gmean"] = metrics.harmonic_mean(six), metrics.geometric_mean(six)
    filled = [c for c in SCORE_COLUMNS if c in filled]
    both = set(filled) & set(IDENTITY_COLUMNS) and set(filled) & set(TEXT_COLUMNS)  # Identity x Text needs both
    if both and all(row.get(c) is not None for c in filled):
        values = [row[c] for c in filled]
        row["hmean_filled"], row["gmean_filled"] = metrics.harmonic_mean(values), metrics.geometric_mean(values)
    return row
