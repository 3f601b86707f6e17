"""Putting S1*, S2* into ComfyUI-style token lists, exactly as the official code does.

A token list is `{"l": [chunk, ...]}` (SD1.x) or `{"g": [...], "l": [...]}` (SDXL), each chunk
77 `(token, weight)` or `(token, weight, word_id)` tuples: BOS, up to 75 prompt tokens, EOS,
padding (EOS for clip_l, 0 for clip_g: `TextStream.pad_token`). A token may be a tensor
instead of an id; the text encoder then uses it as the token embedding and adds the position
embedding of its slot.

The official code *overwrites* token+position embeddings with S*, so S* must carry
no position embedding: we put `S - position_embedding[slot]` in the token stream.
Matching is on token ids over the prompt's tokens across chunk boundaries, so a
trigger split between two chunks is still found, and each vector gets its own slot.
With several text encoders (`inject_family`) each stream gets its own part of S* minus its
own encoder's position table; the streams share the tokenizer, so the slots are the same.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from ..errors import TriggerError
from ..models.families import Family

BOS, EOS = 49406, 49407  # SD1.x CLIP start / end (and pad) tokens
DEFAULT_TRIGGER = "f l"


def trigger_token_ids(tokenizer, trigger: str) -> list[int]:
    """Token ids of `trigger` without BOS/EOS, e.g. "f l" -> [325, 331].

    `tokenizer` is a transformers CLIPTokenizer (ComfyUI: clip.tokenizer.clip_l.tokenizer).
    """
    if not trigger or not trigger.strip():
        raise TriggerError("the trigger is empty; use the two words the identity should replace, e.g. 'f l'.")
    ids = [int(t) for t in tokenizer(trigger.strip())["input_ids"] if int(t) not in (BOS, EOS)]
    if not ids:
        raise TriggerError(f"the trigger {trigger!r} produced no tokens; use plain words such as 'f l'.")
    return ids


class _Pending:
    """An identity vector whose final slot (hence position embedding) is not known yet."""

    def __init__(self, vector: torch.Tensor):
        self.vector = vector


def _is_id(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _content_span(chunk) -> tuple[int, int]:
    start = 1 if chunk and _is_id(chunk[0][0]) and chunk[0][0] == BOS else 0
    end = next((i for i in range(start, len(chunk)) if _is_id(chunk[i][0]) and chunk[i][0] == EOS), len(chunk))
    return start, end


def _name(token, decode) -> str:
    if not _is_id(token):
        return "<embedding>"
    if decode is None:
        return str(token)
    name = decode[token] if isinstance(decode, Mapping) else decode(token)
    return str(name).replace("</w>", "")


def describe_tokens(chunks, decode=None, limit=40) -> str:
    """The prompt as the tokenizer split it, e.g. "a | photo | of | fl | person"."""
    words = []
    for chunk in chunks:
        s, e = _content_span(chunk)
        words += [_name(item[0], decode) for item in chunk[s:e]]
    more = f" ... (+{len(words) - limit})" if len(words) > limit else ""
    return " | ".join(words[:limit]) + more if words else "(empty prompt)"


def find_trigger(chunks, trigger_ids: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Every non-overlapping occurrence of `trigger_ids`, as [(chunk, slot), ...] per occurrence."""
    stream = []  # (chunk, slot) of every prompt token, across chunks
    for c, chunk in enumerate(chunks):
        s, e = _content_span(chunk)
        stream += [(c, i) for i in range(s, e)]
    n, found, i = len(trigger_ids), [], 0
    while i + n <= len(stream):
        window = [chunks[c][s][0] for c, s in stream[i:i + n]]
        if all(_is_id(t) and t == want for t, want in zip(window, trigger_ids)):
            found.append(stream[i:i + n])
            i += n
        else:
            i += 1
    return found


def replace_trigger(tokens: dict, trigger_ids: Sequence[int], replacement: Sequence, key: str = "l",
                    decode=None, trigger_text: str | None = None, pad_token: int = EOS) -> dict:
    """A copy of `tokens` with every occurrence of the trigger replaced by `replacement` items.

    Items fill the trigger's slots in order and keep each slot's weight (and word id);
    surplus trigger slots are removed, surplus items are inserted after the trigger.
    Every chunk keeps its length: padding absorbs the difference (the chunk's own padding, or
    `pad_token` when a full chunk had none).
    """
    if key not in tokens:
        raise TriggerError(f"the token lists have no {key!r} entry (found {sorted(tokens)}); "
                           "Face2Diffusion works with SD1.x and SDXL checkpoints only.")
    chunks = [list(c) for c in tokens[key]]
    occurrences = find_trigger(chunks, trigger_ids)
    label = repr(trigger_text) if trigger_text else f"with token ids {list(trigger_ids)}"
    if not occurrences:
        raise TriggerError(
            f"the trigger {label} was not found in the prompt. The prompt tokenized as: "
            f"{describe_tokens(chunks, decode)}. Write the trigger as separate words where the person should "
            "appear, e.g. 'a photo of f l as a chef'.")
    inserts: dict[tuple[int, int], list] = {}  # (chunk, slot) -> items to insert after that slot
    removed: set[tuple[int, int]] = set()
    for occ in occurrences:
        for j, (c, s) in enumerate(occ):
            if j < len(replacement):
                chunks[c][s] = (replacement[j],) + tuple(chunks[c][s][1:])
            else:
                removed.add((c, s))
        if len(replacement) > len(occ):
            c, s = occ[-1]
            inserts[(c, s)] = [(r,) + tuple(chunks[c][s][1:]) for r in replacement[len(occ):]]
    out = []
    for c, chunk in enumerate(chunks):
        start, end = _content_span(chunk)
        content = []
        for i in range(start, end):
            if (c, i) not in removed:
                content.append(chunk[i])
            content += inserts.get((c, i), [])
        tail = chunk[end:] or [(EOS, 1.0) + tuple(chunk[-1][2:])]
        # a full chunk ends in EOS with no padding: then the encoder's own pad (clip_g pads with 0)
        eos_item = tail[0]
        pad_item = tail[-1] if len(tail) > 1 else (pad_token, 1.0) + tuple(eos_item[2:])
        n_pad = len(chunk) - start - len(content) - 1
        if n_pad < 0:
            raise TriggerError(
                f"the prompt fills its {len(chunk) - 2}-token chunk, so the trigger {label} cannot become "
                f"{len(replacement)} tokens there. Shorten the prompt near the trigger, or use a two-word "
                "trigger such as 'f l' (it takes exactly the two slots the identity needs).")
        out.append(chunk[:start] + content + [eos_item] + [pad_item] * n_pad)
    return {**tokens, key: out}


def _resolve(tokens: dict, key: str, position_embedding: torch.Tensor) -> dict:
    chunks = []
    for chunk in tokens[key]:
        chunk = list(chunk)
        for slot, item in enumerate(chunk):
            if isinstance(item[0], _Pending):
                vec = item[0].vector - position_embedding[slot].to(item[0].vector)
                chunk[slot] = (vec,) + tuple(item[1:])
        chunks.append(chunk)
    return {**tokens, key: chunks}


def inject_face(tokens: dict, trigger_ids: Sequence[int], s1: torch.Tensor, s2: torch.Tensor,
                position_embedding: torch.Tensor, key: str = "l",
                decode: Mapping[int, str] | Callable[[int], str] | None = None,
                trigger_text: str | None = None, pad_token: int = EOS) -> dict:
    """Replace every occurrence of the trigger in the `key` stream with S1*, S2* (minus their
    slots' position embeddings).

    s1, s2: (W,) or (1, W). position_embedding: (77, W), that text encoder's table (SD1.x: W = 768).
    A one-token trigger grows to two slots, a longer one shrinks to two; the chunk keeps
    77 slots (padded with `pad_token` where it had no padding). `decode` (id -> token string)
    only makes error messages readable.
    """
    vecs = []
    for name, s in (("s1", s1), ("s2", s2)):
        s = torch.as_tensor(s).float().cpu()  # not detached: training backpropagates into S* (f2d_core.train)
        if s.numel() != position_embedding.shape[-1]:
            raise TriggerError(f"{name} has {s.numel()} values but the {key!r} text encoder is "
                               f"{position_embedding.shape[-1]}-wide: the identity tokens are for another base "
                               "model (SD1.x: 768; SDXL: 768 + 1280).")
        vecs.append(s.reshape(-1))
    pos = position_embedding.detach().float().cpu()
    # a fresh _Pending per occurrence is unnecessary: _resolve creates a new tensor per slot
    pending = [_Pending(vecs[0]), _Pending(vecs[1])]
    replaced = replace_trigger(tokens, trigger_ids, pending, key, decode, trigger_text, pad_token)
    return _resolve(replaced, key, pos)


def check_word_width(family: Family, s: torch.Tensor, name: str = "s1") -> torch.Tensor:
    """S* as the mapping network gives it, flattened: family.token_width values, or a TriggerError."""
    s = torch.as_tensor(s)
    if s.numel() != family.token_width:
        widths = " + ".join(f"{st.width} ({st.key})" for st in family.streams)
        raise TriggerError(f"{name} has {s.numel()} values, but an identity word for {family.label} has "
                           f"{family.token_width} = {widths}: the tokens were made by another base model's "
                           "mapping network.")
    return s.reshape(-1)


def inject_family(tokens: dict, family: Family, trigger_ids: Sequence[int], s1: torch.Tensor, s2: torch.Tensor,
                  position_embeddings: Mapping[str, torch.Tensor],
                  decode: Mapping[int, str] | Callable[[int], str] | None = None,
                  trigger_text: str | None = None) -> dict:
    """inject_face into every text encoder of `family`: stream k gets `split(S)[k] - pos_k[slot]`.

    s1, s2: (family.token_width,), the mapping network's words (SDXL: 768 for "l" then 1280 for "g").
    position_embeddings: {stream key: (77, width)} table of each text encoder.
    """
    words1 = family.split(check_word_width(family, s1, "s1"))
    words2 = family.split(check_word_width(family, s2, "s2"))
    for stream in family.streams:
        if stream.key not in position_embeddings:
            raise TriggerError(f"no position table for the {stream.key!r} text encoder of {family.label} "
                               f"(given: {sorted(position_embeddings)}).")
        tokens = inject_face(tokens, trigger_ids, words1[stream.key], words2[stream.key],
                             position_embeddings[stream.key], stream.key, decode, trigger_text, stream.pad_token)
    return tokens


def replace_family(tokens: dict, family: Family, trigger_ids: Sequence[int], replacement: Sequence[int],
                   decode=None, trigger_text: str | None = None) -> dict:
    """replace_trigger in every text encoder's token list of `family` (e.g. the class word)."""
    for stream in family.streams:
        tokens = replace_trigger(tokens, trigger_ids, replacement, stream.key, decode, trigger_text,
                                 stream.pad_token)
    return tokens
