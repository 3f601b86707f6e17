"""Optional check with the real weights: our pipeline on the official demo photos must reproduce
the MSID features the authors computed (../shared/faces). Runs only when F2D_MODELS points at a
ComfyUI-style models folder with the real msid.pt, mapping.pt and an insightface pack, e.g.
    F2D_MODELS=~/ComfyUI/models pytest -s tests/test_real_weights.py
It prints the cosine per photo for the 5-point (SCRFD) and 68-point (1k3d68) landmark paths."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FACES

MODELS = os.environ.get("F2D_MODELS")
pytestmark = pytest.mark.skipif(not MODELS, reason="set F2D_MODELS to a models folder with the real "
                                "Face2Diffusion and insightface weights to run this check")


@pytest.mark.parametrize("use_68", [False, True], ids=["5-point", "68-point"])
def test_official_demo_faces_reproduce_the_authors_features(use_68):
    from f2d_core import load_encoder
    from f2d_core.faces.detect import find_detector_files, load_detector
    from f2d_core.weights.files import find_models
    from f2d_core.identity.pipeline import encode_images
    m = find_models(MODELS)
    if use_68 and find_detector_files(m["pack"])[1] is None:
        pytest.skip(f"no 1k3d68.onnx in {m['pack']}")
    enc = load_encoder(m["msid"], m["mapping"])
    det = load_detector(m["pack"], use_landmarks68=use_68, device="cpu")
    cosines = []
    for i in range(5):
        img = np.asarray(Image.open(FACES / f"f2d_input_{i}.jpg").convert("RGB"))
        ours = encode_images(enc, [img], det, policy="confident").features
        theirs = torch.from_numpy(np.load(FACES / f"f2d_input_{i}_msid_features.npy"))
        cosines.append(float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0)))
    print(f"\n{'68' if use_68 else '5'}-point landmarks: cosine to the authors' features "
          + ", ".join(f"{c:.4f}" for c in cosines))
    assert min(cosines) > 0.95
