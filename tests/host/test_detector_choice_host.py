"""Load Face2Diffusion Encoder's detector choice inside a real ComfyUI (in-process): `auto` takes
the insightface pack that is there, `dlib` (offered only when dlib is importable) needs no model
folder, and an encoder loaded with dlib finds and encodes the face of a real photo."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

DLIB = importlib.util.find_spec("dlib") is not None


@pytest.fixture(scope="module")
def nodes(comfy_inprocess, f2d_models_dir):
    return comfy_inprocess.pack_nodes()


def _options(nodes):
    schema = nodes["LoadF2DEncoder"].define_schema()
    return next(i for i in schema.inputs if i.id == "detector")


def test_the_detector_list_starts_with_auto_and_offers_dlib_only_when_installed(nodes):
    detector = _options(nodes)
    assert detector.options[0] == "auto" and detector.default == "auto"
    assert "buffalo_l" in detector.options and detector.options[-1].startswith("none")
    assert ("dlib" in detector.options) == DLIB


def test_auto_takes_the_insightface_pack_when_there_is_one(nodes):
    handle = nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "auto").result[0]
    assert handle.detector_name == "auto: buffalo_l" and "det_10g.onnx" in handle.detector.name


@pytest.mark.skipif(not DLIB, reason="dlib is not importable in ComfyUI's python (pip install -r requirements-dlib.txt)")
def test_an_encoder_with_the_dlib_detector_encodes_a_real_photo(nodes):
    from conftest import FACES
    handle = nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "dlib").result[0]
    assert handle.detector_name == "dlib" and handle.detector.name.startswith("dlib")
    photo = np.asarray(Image.open(FACES / "f2d_input_1.jpg").convert("RGB"), np.float32) / 255
    out = nodes["F2DEncodeFace"].execute(handle, torch.from_numpy(photo)[None], "largest", 0, "error")
    aligned = out.result[1]
    assert tuple(aligned.shape) == (1, 112, 112, 3)
