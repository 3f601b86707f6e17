"""Prompts -> UNet conditioning during training, with S* injected exactly as at inference.

Every sample's identity tokens S1*, S2* are split per text encoder of the base family
(SD1.x: 768 for CLIP-L; SDXL: 768 for CLIP-L and 1280 for bigG, `Family.split`), and each
part goes through `f2d_core.text.inject.inject_family`, the inference injection (it puts
S* - position_embedding[slot] of each encoder where "f l" stands, since the official code
overwrites token + position embeddings) and `f2d_core.text.clip.encode_chunks` (which writes them into the frozen
encoder's token embeddings and reads the family's hidden layer, and bigG's pooled output);
both keep the autograd graph, so the loss reaches the mapping network through the frozen
text encoders.

The prompts the paper trains with have fixed CLIP BPE token ids, listed below, so the
default training needs no tokenizer files; other prompts need one (--tokenizer).
"""
from __future__ import annotations

import torch

from ..errors import F2DError
from ..models.families import SD1, Family
from ..text import inject
from ..text.clip import encode_chunks, encode_family, position_embedding, token_chunks

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
}  # (SDXL's two encoders share this BPE vocabulary: the same ids for both)


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


def token_chunk(ids: list[int], pad: int = EOS) -> list:
    """One 77-token chunk: BOS, the prompt, EOS, `pad` padding (ComfyUI's layout; SDXL's clip_g pads with 0)."""
    if len(ids) > 75:
        raise F2DError(f"training prompts must fit in 75 tokens, this one has {len(ids)}")
    return token_chunks(ids, pad)[0]


class PromptEncoder:
    """Encodes one prompt template for a batch of identities (or none), through every text encoder
    of `family`. text_encoders: {stream key: model}, or one model for a one-encoder family (SD1.x)."""

    def __init__(self, text_encoders, prompt: str, tokenizer=None, trigger: str = TRIGGER, family: Family = SD1):
        self.family = family
        self.encoders = text_encoders if isinstance(text_encoders, dict) else {family.keys[0]: text_encoders}
        self.prompt = prompt
        ids = prompt_ids(prompt, tokenizer)
        self.tokens = {s.key: [token_chunk(ids, s.pad_token)] for s in family.streams}
        self.trigger_ids = prompt_ids(trigger, tokenizer)
        self.has_trigger = bool(inject.find_trigger(self.tokens[family.keys[0]], self.trigger_ids))
        # the frozen encoders' position tables, read once (inject_face takes them as CPU fp32 copies)
        self.positions = {k: position_embedding(m).detach().float().cpu() for k, m in self.encoders.items()}

    def encode(self):
        """The prompt as written (e.g. the class prompt): ((1, 77, token_width) conditioning,
        (1, projection) pooled output or None)."""
        return encode_family(self.encoders, self.tokens, self.family)

    def identity(self, s1: torch.Tensor, s2: torch.Tensor):
        """The prompt with sample b's S1*, S2* (B, token_width) in place of the trigger in every
        encoder's tokens: ((B, 77, token_width) conditioning, (B, projection) pooled output or None)."""
        if not self.has_trigger:
            raise F2DError(f"the prompt {self.prompt!r} does not contain the trigger; write it with 'f l' where "
                           "the person goes, e.g. 'a photo of f l'.")
        chunks = {key: [] for key in self.family.keys}
        for b in range(s1.shape[0]):  # the inference injection, per sample, into every encoder's tokens
            tokens = inject.inject_family(self.tokens, self.family, self.trigger_ids, s1[b], s2[b], self.positions)
            for key in chunks:
                chunks[key] += tokens[key]
        hidden, pooled = [], None
        for stream in self.family.streams:
            key = stream.key
            h, p = encode_chunks(self.encoders[key], chunks[key], stream, pooled=self.family.pooled == key)
            hidden.append(h)
            pooled = p if p is not None else pooled
        return torch.cat(hidden, dim=-1), pooled

    def with_identity(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """(B, 77, token_width): the conditioning of `identity` without the pooled output."""
        return self.identity(s1, s2)[0]
