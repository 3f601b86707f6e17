"""Face2Diffusion engine: the official F2D inference, checkpoint-compatible, host-independent.

Stable API (see README):
    load_encoder(msid_path, mapping_path, device="cpu", dtype=torch.float32) -> F2DEncoder
    F2DEncoder.identity_features(pixels) -> (B, 1536)
    F2DEncoder.face_tokens(features, expression=None, mask=None) -> (s1, s2)
    align.landmarks68_to_5, align.align_face, align.to_pixels
    inject.inject_face(tokens, trigger_ids, s1, s2, position_embedding)

This package never imports ComfyUI.
"""
from . import align, inject
from .encoder import F2DEncoder, load_encoder
from .errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError, TriggerError

__all__ = ["load_encoder", "F2DEncoder", "align", "inject",
           "F2DError", "CheckpointError", "NoFaceError", "TriggerError", "ModelFilesMissing"]
__version__ = "0.1.0"
