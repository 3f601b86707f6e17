"""A face's identity tokens S1*, S2*: from the mapping network, or stored in its identity file."""
from __future__ import annotations

import torch

from ..errors import F2DError
from ..models.families import Family
from ..text.prompt import Subject
from .encoder import F2DEncoder
from .face_file import FaceIdentity


def subject_tokens(face: FaceIdentity, encoder: F2DEncoder | None = None, expression: torch.Tensor | None = None,
                   label: str = "face") -> tuple[torch.Tensor, torch.Tensor]:
    """(S1*, S2*), each (family.token_width,) float32 on the CPU (SD1.x: 768; SDXL: 768 + 1280).

    With an encoder the mapping network runs on the face's features (and the (64,) expression,
    None = the learned null_exp); without one the tokens stored with the face are used, which
    were made with null_exp, so an expression then needs the encoder.
    """
    if encoder is not None:
        exp = None if expression is None else torch.as_tensor(expression).reshape(1, -1)
        s1, s2 = encoder.face_tokens(face.features.reshape(1, -1), exp)
        return s1[0].cpu(), s2[0].cpu()
    if expression is not None:
        raise F2DError(f"{label}: an expression needs the mapping network: connect the encoder input too.")
    if face.s1 is None or face.s2 is None:
        raise F2DError(f"{label}: this face has no stored identity tokens; connect the encoder input.")
    return face.s1, face.s2


def tokens_family(face: FaceIdentity, encoder: F2DEncoder | None = None) -> Family:
    """The base model family of subject_tokens' result: the encoder's mapping when it makes them,
    else the mapping the stored tokens were made with."""
    return encoder.family if encoder is not None else face.family


def face_subject(face: FaceIdentity, encoder: F2DEncoder | None, expression: torch.Tensor | None, trigger: str,
                 label: str) -> Subject:
    """One person for text.prompt.build_face_prompt: their tokens, trigger and family."""
    return Subject(*subject_tokens(face, encoder, expression, label), trigger, label, tokens_family(face, encoder))
