"""A prompt with one or two people in it -> the token lists to encode, and how to combine them.

The host tokenizes and encodes (ComfyUI: `clip.tokenize`, `clip.encode_from_tokens_scheduled`);
everything between is here, so it is tested without a host:
- the CLIP's family (SD1.x, SDXL) comes from its token lists' keys, and each person's tokens
  must be of that family (made by a mapping network of that family);
- each person's S1*, S2* go in place of their trigger words in every text encoder's tokens
  (`inject.inject_family`);
- at identity strength s < 1 the same prompt with the class word in the triggers' place is
  encoded too, and the two CONDITIONINGs are blended linearly (s = 0: the class prompt only);
- two people need different triggers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from ..errors import F2DError
from . import inject
from ..models.families import SD1, Family
from .conditioning import blend_conditioning, text_family

DEFAULT_CLASS_WORD = "person"
SECOND_TRIGGER = "g k"  # the second person's default trigger: two rare single-letter words, like "f l"


@dataclass(frozen=True)
class Subject:
    """One person in the prompt: their identity tokens and the words they replace."""
    s1: torch.Tensor  # (family.token_width,): SD1.x 768, SDXL 768 + 1280
    s2: torch.Tensor
    trigger: str = inject.DEFAULT_TRIGGER
    label: str = "face"  # names the input in messages
    family: Family = SD1  # the base model family of the mapping network that made s1, s2


@dataclass(frozen=True)
class FacePrompt:
    """The token lists to encode for one prompt, and how to combine their encodings."""
    identity: dict | None  # the triggers replaced by S1*, S2*; None at strength 0
    reference: dict | None  # the triggers replaced by the class word; None at strength 1
    strength: float

    def encode(self, encode: Callable[[dict], list]) -> list:
        """CONDITIONING from the host's `encode(tokens) -> CONDITIONING`, blended by strength."""
        if self.reference is None:
            return encode(self.identity)
        if self.identity is None:
            return encode(self.reference)
        return blend_conditioning(encode(self.identity), encode(self.reference), self.strength)


def check_strength(strength) -> float:
    s = float(strength)
    if not 0.0 <= s <= 1.0:
        raise F2DError(f"identity_strength must lie in [0, 1], got {s}")
    return s


def check_families(family: Family, subjects: Sequence[Subject]) -> None:
    """Every person's tokens must come from a mapping network of the CLIP's family."""
    for s in subjects:
        if s.family != family:
            raise F2DError(
                f"{s.label}: its identity tokens were made by an {s.family.label} mapping network, which works with "
                f"{s.family.label} checkpoints only, but this CLIP belongs to {family.label}. Connect the CLIP of an "
                f"{s.family.label} checkpoint, or load an {family.label} mapping in Load Face2Diffusion Encoder and "
                "encode the face with it (or connect that encoder to Inject Face Token's encoder input).")


def build_face_prompt(tokens: dict, tokenizer, subjects: Sequence[Subject],
                      position_embedding: torch.Tensor | Mapping[str, torch.Tensor],
                      strength: float = 1.0, class_word: str = DEFAULT_CLASS_WORD, decode=None) -> FacePrompt:
    """Token lists of the prompt `tokens` (ComfyUI's `{"l": [chunk, ...]}`, SDXL's
    `{"g": [...], "l": [...]}`) with `subjects` in it.

    tokenizer: a transformers CLIPTokenizer, used for the trigger and class-word ids (SD1.x and
    SDXL's two encoders share the vocabulary).
    position_embedding: {stream key: (77, width)} table of each text encoder, or for SD1.x its
    one (77, 768) table (see inject.inject_family).
    decode: id -> token text, only for readable messages.
    """
    family = text_family(tokens.keys())
    check_families(family, subjects)
    tables = position_embedding if isinstance(position_embedding, Mapping) else {family.keys[0]: position_embedding}
    strength = check_strength(strength)
    triggers = [s.trigger.strip().lower() for s in subjects]
    if len(set(triggers)) != len(triggers):
        labels = " and ".join(s.label for s in subjects)
        raise F2DError(f"{labels} use the same trigger {subjects[0].trigger!r}; give each person their own, "
                       f"e.g. {SECOND_TRIGGER!r} for the second.")
    class_ids = None
    if strength < 1:
        if not (class_word or "").strip():
            raise F2DError("class_word is empty: below identity strength 1 the trigger is blended with it. "
                           "Write a word such as 'person', 'woman' or 'man'.")
        class_ids = inject.trigger_token_ids(tokenizer, class_word)
    identity = tokens if strength > 0 else None
    reference = tokens if strength < 1 else None
    for subject in subjects:
        ids = inject.trigger_token_ids(tokenizer, subject.trigger)
        if identity is not None:
            identity = inject.inject_family(identity, family, ids, subject.s1, subject.s2, tables,
                                            decode=decode, trigger_text=subject.trigger)
        if reference is not None:
            reference = inject.replace_family(reference, family, ids, class_ids, decode=decode,
                                              trigger_text=subject.trigger)
    return FacePrompt(identity, reference, strength)
