"""Prompts -> UNet conditioning during training, with S* injected exactly as at inference.

Every sample's identity tokens S1*, S2* go through `f2d_core.text.inject.inject_face` (which
puts S* - position_embedding[slot] where "f l" stands, since the official code overwrites
token + position embeddings) and `f2d_core.text.clip.encode_token_chunks` (which writes
them into the frozen CLIP text encoder's token embeddings); both keep the autograd graph,
so the loss reaches the mapping network through the frozen text encoder.

The prompts the paper trains with have fixed CLIP BPE token ids, listed below, so the
default training needs no tokenizer files; other prompts need one (--tokenizer).
"""
from __future__ import annotations

import torch

from ..text import inject
from ..errors import F2DError
from ..text.clip import encode_token_chunks, position_embedding

BOS, EOS = inject.BOS, inject.EOS
TRAIN_PROMPT = "a photo of f l"
CLASS_PROMPT = "a photo of a person"
TRIGGER = "f l"
# ids of the SD1.x CLIP tokenizer (checked against it by the tests)
KNOWN_TOKEN_IDS = {
    "": [],
    "a photo of f l": [320, 1125, 539, 325, 331],
    "a photo of a person": [320, 1125, 539, 320, 2533],
    "a photo of f l wearing sunglasses": [320, 1125, 539, 325, 331, 3309, 12906],
    "a painting of f l in a garden": [320, 3086, 539, 325, 331, 530, 320, 2756],
    "f l": [325, 331],
}


def prompt_ids(prompt: str, tokenizer=None) -> list[int]:
    """Token ids of `prompt` without BOS/EOS."""
    if tokenizer is not None:
        return [int(t) for t in tokenizer(prompt)["input_ids"] if int(t) not in (BOS, EOS)]
    key = " ".join(prompt.lower().split())
    if key in KNOWN_TOKEN_IDS:
        return list(KNOWN_TOKEN_IDS[key])
    raise F2DError(f"the prompt {prompt!r} needs the CLIP tokenizer: pass --tokenizer with a folder holding "
                   "vocab.json and merges.txt (e.g. ComfyUI/comfy/sd1_tokenizer), or use one of the built-in "
                   f"prompts: {', '.join(repr(p) for p in KNOWN_TOKEN_IDS)}.")


def token_chunk(ids: list[int]) -> list:
    """One 77-token chunk: BOS, the prompt, EOS padding (ComfyUI's SD1 layout)."""
    if len(ids) > 75:
        raise F2DError(f"training prompts must fit in 75 tokens, this one has {len(ids)}")
    return [(t, 1.0) for t in [BOS] + ids + [EOS] * (76 - len(ids))]


class PromptEncoder:
    """Encodes one prompt template for a batch of identities (or none)."""

    def __init__(self, text_encoder, prompt: str, tokenizer=None, trigger: str = TRIGGER):
        self.text_encoder = text_encoder
        self.prompt = prompt
        self.tokens = {"l": [token_chunk(prompt_ids(prompt, tokenizer))]}
        self.trigger_ids = prompt_ids(trigger, tokenizer)
        self.has_trigger = bool(inject.find_trigger(self.tokens["l"], self.trigger_ids))

    def plain(self) -> torch.Tensor:
        """(1, 77, 768) conditioning of the prompt as written (e.g. the class prompt)."""
        return encode_token_chunks(self.text_encoder, self.tokens["l"])

    def with_identity(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """(B, 77, 768): the prompt with sample b's S1*, S2* in place of the trigger."""
        if not self.has_trigger:
            raise F2DError(f"the prompt {self.prompt!r} does not contain the trigger; write it with 'f l' where "
                           "the person goes, e.g. 'a photo of f l'.")
        pos = position_embedding(self.text_encoder)
        chunks = []
        for b in range(s1.shape[0]):
            chunks += inject.inject_face(self.tokens, self.trigger_ids, s1[b], s2[b], pos)["l"]
        hidden = encode_token_chunks(self.text_encoder, chunks)
        return hidden.reshape(s1.shape[0], -1, hidden.shape[-1])
