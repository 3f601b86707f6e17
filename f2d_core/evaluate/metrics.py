"""The evaluation metrics of the paper, as pure functions on embeddings and scores (numpy only).

Face2Diffusion (Shiohara & Yamasaki, CVPR 2024, arXiv 2403.05094) grades a method by the
identity similarity of the generated faces to the input face and by the alignment of the
generated images with the prompt, then combines the two per image (harmonic and geometric
means, averaged over the images, §4.2 / Table 1) and studies the best of N samples per face x
prompt (the upper-bound analysis, Fig. 7). The text-alignment scores are CLIP scores and the
directional CLIP similarity of the appendix (§E.3).

Where the section numbers come from: issue #6 of this project, which names §4.2, Table 1, Fig. 7
and §E.3. The paper's own text of §4.2 / §E.3 could not be read when this was written (no copy
of the appendix was reachable), so the formulas below are the standard ones those names denote
(directional CLIP as in StyleGAN-NADA); compare them with the paper before quoting numbers as
the paper's protocol.

Conventions (see each function):
- identity similarity: cosine of ArcFace embeddings clipped to [0, 1]; 0 when no face was found
  in the generated image, so a method that loses the face is not rewarded by skipping it;
- the means combine scores clipped below at 0 (a negative CLIP cosine counts as 0);
- undefined cosines (a zero vector) are 0.
"""
from __future__ import annotations

from math import comb

import numpy as np

from ..faces.similarity import cosine, identity_similarity  # noqa: F401  (the ID score, Eq. 10)


def clip_score(image_embedding, text_embedding) -> float:
    """CLIP-T (§4.2, §E.3): cosine of the CLIP image embedding and the prompt's text embedding."""
    return cosine(image_embedding, text_embedding)


def clip_image_score(image_embedding, reference_embedding) -> float:
    """CLIP-I: cosine of the CLIP image embeddings of the generated image and a reference image."""
    return cosine(image_embedding, reference_embedding)


def directional_clip(image_embedding, reference_image_embedding, text_embedding, reference_text_embedding) -> float:
    """Directional CLIP similarity (§E.3; the StyleGAN-NADA / InstructPix2Pix form): the cosine
    between the change in image space, generated image minus the reference image (the image of
    the bare identity, prompt "a photo of f l", same seed), and the change in text space, the
    prompt minus the neutral text ("A photo of a person"). It measures whether what the prompt
    adds shows up in the image, whatever the identity. 0 when either change is zero."""
    di = np.asarray(image_embedding, np.float64) - np.asarray(reference_image_embedding, np.float64)
    dt = np.asarray(text_embedding, np.float64) - np.asarray(reference_text_embedding, np.float64)
    return cosine(di, dt)


def harmonic_mean(a, b):
    """Per image: 2ab / (a + b) of the identity and text scores (each clipped below at 0); 0 when both are 0."""
    a, b = np.maximum(np.asarray(a, np.float64), 0.0), np.maximum(np.asarray(b, np.float64), 0.0)
    s = a + b
    return np.divide(2.0 * a * b, s, out=np.zeros_like(s), where=s > 0)


def geometric_mean(a, b):
    """Per image: sqrt(ab) of the identity and text scores (each clipped below at 0)."""
    a, b = np.maximum(np.asarray(a, np.float64), 0.0), np.maximum(np.asarray(b, np.float64), 0.0)
    return np.sqrt(a * b)


def mean_of_per_image(values) -> float:
    """The paper's aggregation (§4.2): the per-image scores averaged over all images (not the
    mean of the averages). NaN for no images."""
    v = np.asarray(values, np.float64)
    return float(v.mean()) if v.size else float("nan")


def best_of_ns(count: int) -> list[int]:
    """N = 1, 2, 4, ... up to `count` (and `count` itself when it is not a power of two)."""
    ns, n = [], 1
    while n <= count:
        ns.append(n)
        n *= 2
    if count >= 1 and ns[-1] != count:
        ns.append(count)
    return ns


def expected_best_of_n(rank_scores, values, n: int) -> float:
    """Upper-bound analysis (Fig. 7) for one face x prompt: pick, among N of its samples, the one
    with the highest `rank_scores` and report its `values`; returned is the exact expectation over
    every choice of N of the S samples (so the curve does not depend on which seeds came first).

    With the samples sorted by rank ascending (ties keep their order), the best of a random
    N-subset is the k-th (1-based) with probability C(k-1, N-1) / C(S, N)."""
    r = np.asarray(rank_scores, np.float64)
    v = np.asarray(values, np.float64)
    s = len(r)
    if not 1 <= n <= s or len(v) != s:
        raise ValueError(f"best of {n} needs 1 <= N <= {s} samples with one value each")
    order = np.argsort(r, kind="stable")
    weights = np.array([comb(k - 1, n - 1) for k in range(1, s + 1)], np.float64) / comb(s, n)
    return float(np.dot(weights, v[order]))
