"""Identity similarity of images to reference photo(s): detect, align, ArcFace, cosine.

    scorer = load_identity_scorer("ComfyUI/models/insightface/models/buffalo_l")
    reference = scorer.reference(reference_photos)            # mean ArcFace embedding, renormalised
    result = scorer.score(reference, generated_images)       # per-image similarity, 0 where no face

The pack's SCRFD detector finds faces and its 5 keypoints align them (what insightface's
FaceAnalysis does before recognition; the 68-point model is not used here), the pack's
recognition model (not MSID) embeds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .detect import load_detector, select_face
from ..errors import NoFaceError
from .images import as_list, to_rgb_uint8
from .recognize import find_recognizer_file, load_recognizer


def cosine(a, b) -> float:
    """Cosine similarity of two vectors; 0 when either is the zero vector."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def identity_similarity(reference, embedding) -> float:
    """§4.2: cosine of the face-recognition embeddings of the input face and the generated face,
    clipped to [0, 1] (a negative cosine means "not this person", not "less than nobody").
    `embedding` None (no face found in the generated image) scores 0."""
    if embedding is None:
        return 0.0
    return float(np.clip(cosine(reference, embedding), 0.0, 1.0))


@dataclass
class SimilarityResult:
    similarities: list          # float per image, in [0, 1]; 0 where no face was found
    found: list                 # bool per image: a face was found
    recognizer: str = ""        # model file name, for the summary

    @property
    def detection_rate(self) -> float:
        return float(np.mean(self.found)) if self.found else 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.similarities)) if self.similarities else float("nan")

    def summary(self) -> str:
        n, k = len(self.similarities), int(sum(self.found))
        head = (f"identity similarity ({self.recognizer}, cosine clipped to [0, 1]; 0 = no face)\n"
                f"mean {self.mean:.3f} over {n} image(s); face found in {k}/{n} ({100 * self.detection_rate:.0f}%)")
        rows = [f"#{i + 1}: {s:.3f}" + ("" if f else " (no face)")
                for i, (s, f) in enumerate(zip(self.similarities, self.found))]
        return "\n".join([head] + rows)


class IdentityScorer:
    def __init__(self, detector, recognizer, policy="largest"):
        self.detector, self.recognizer, self.policy = detector, recognizer, policy

    def networks(self) -> list:
        """The detector's and the recogniser's torch modules (for a host's memory manager)."""
        return self.detector.networks() + self.recognizer.networks()

    def embed(self, image, name: str = "image") -> np.ndarray | None:
        """The normalised embedding of the chosen face (default: the largest), None without a face."""
        rgb = to_rgb_uint8(image, name)
        faces = self.detector.detect(rgb, name)
        if not faces:
            return None
        face = select_face(faces, self.policy, name)
        return self.recognizer.embeddings([self.recognizer.align(rgb, face.landmarks5)])[0]

    def reference(self, images, names: Sequence[str] | None = None) -> np.ndarray:
        """One identity from one or more photos of the same person: the mean of their normalised
        embeddings, renormalised. Photos without a face are left out; none at all is an error."""
        images = as_list(images)
        names = list(names) if names else [f"reference image {i + 1} of {len(images)}" for i in range(len(images))]
        found = [e for e in (self.embed(im, n) for im, n in zip(images, names)) if e is not None]
        if not found:
            raise NoFaceError(
                f"no face was found in the reference image(s) ({', '.join(names[:5])}), so there is no identity "
                "to compare with. Use a clear photo where the face is visible, frontal and not tiny.")
        mean = np.mean(found, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def score(self, reference, images, names: Sequence[str] | None = None,
              progress: Callable[[int, int], None] | None = None,
              check_interrupt: Callable[[], None] | None = None) -> SimilarityResult:
        images = as_list(images)
        names = list(names) if names else [f"image {i + 1} of {len(images)}" for i in range(len(images))]
        sims, found = [], []
        for i, (image, name) in enumerate(zip(images, names)):
            if check_interrupt:
                check_interrupt()
            emb = self.embed(image, name)
            sims.append(identity_similarity(reference, emb))
            found.append(emb is not None)
            if progress:
                progress(i + 1, len(images))
        return SimilarityResult(sims, found, self.recognizer.name)


def load_identity_scorer(pack_dir, device: str = "auto", policy="largest") -> IdentityScorer:
    """Detector and recognition model of one insightface pack folder (both cached per file)."""
    recognizer = load_recognizer(find_recognizer_file(pack_dir), device=device)
    return IdentityScorer(load_detector(pack_dir, use_landmarks68=False, device=device), recognizer, policy)
