"""Face2Diffusion engine: the official F2D inference, checkpoint-compatible, host-independent.

Layers, each importing only the ones above it in this list:
    errors, choices     user-facing errors and option values
    models/             the networks (MSID, mapping, Deep3DFaceRecon) and ONNX graphs run by torch
    faces/              photos, detection, alignment, recognition (numpy; insightface's networks on torch)
    weights/            reading, checking and finding weight files
    text/               trigger search, S1*/S2* injection, prompt variants, CONDITIONING
    identity/           photos -> identity: encoder, pipeline, expression, identity file
Apart from the node engine: client/ (a ComfyUI server), evaluate/, train/, bench.

Stable API (see docs/engine.md):
    load_encoder(msid_path, mapping_path, device="cpu", dtype=torch.float32) -> F2DEncoder
    F2DEncoder.identity_features(pixels) -> (B, 1536)
    F2DEncoder.face_tokens(features, expression=None, mask=None) -> (s1, s2)
    align.landmarks68_to_5, align.align_face, to_pixels
    inject.inject_face(tokens, trigger_ids, s1, s2, position_embedding)
    load_detector(pack_dir), select_face(faces, policy)

This package never imports ComfyUI.
"""
from .errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError, TriggerError
from .faces import align
from .faces.detect import load_detector, select_face
from .identity.encoder import F2DEncoder, load_encoder
from .models.msid import to_pixels
from .text import inject

__all__ = ["load_encoder", "F2DEncoder", "align", "inject", "to_pixels", "load_detector", "select_face",
           "F2DError", "CheckpointError", "NoFaceError", "TriggerError", "ModelFilesMissing"]
__version__ = "0.1.0"
