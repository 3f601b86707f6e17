"""Face2Diffusion engine: the official F2D inference, checkpoint-compatible, host-independent.

Stable API (see README):
    load_encoder(msid_path, mapping_path, device="cpu", dtype=torch.float32) -> F2DEncoder
    F2DEncoder.identity_features(pixels) -> (B, 1536)
    F2DEncoder.face_tokens(features, expression=None, mask=None) -> (s1, s2)
    align.landmarks68_to_5, align.align_face, align.to_pixels
    inject.inject_face(tokens, trigger_ids, s1, s2, position_embedding)

This package never imports ComfyUI. Names that need torch are imported on first use, so
torch-free tools (the headless runner) start without it.
"""
import importlib

from .errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError, TriggerError

_LAZY = {"load_encoder": "encoder", "F2DEncoder": "encoder", "align": "align", "inject": "inject"}

__all__ = ["load_encoder", "F2DEncoder", "align", "inject",
           "F2DError", "CheckpointError", "NoFaceError", "TriggerError", "ModelFilesMissing"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = module if _LAZY[name] == name else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
