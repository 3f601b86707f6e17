"""Encoding ComfyUI-style token lists with transformers CLIP text encoders, per base model family.

Hosts other than ComfyUI (the CLI, benchmarks, tests, training) use this: tensor
tokens are written into the token-embedding output through a forward hook, so the
position embedding is added afterwards exactly as ComfyUI's `process_tokens` does.
A family (models/families.py) says which encoders there are and how each is read:
SD1.x: CLIP-L's last layer after the final LayerNorm; SDXL: CLIP-L and OpenCLIP bigG
(`CLIPTextModelWithProjection`), both at the penultimate layer without the final
LayerNorm, concatenated, plus bigG's projected pooled output (diffusers `encode_prompt`).
Works with transformers 4.x (`model.text_model`) and 5.x (flattened CLIPTextModel).
Token weights are not applied here (ComfyUI applies them in its own encode).
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..models.families import SD1, Family, TextStream
from .inject import BOS, EOS

CHUNK = 77


def text_transformer(model):
    return getattr(model, "text_model", model)


def position_embedding(model) -> torch.Tensor:
    """(77, width) position-embedding table of a CLIPTextModel (or CLIPTextModelWithProjection)."""
    return text_transformer(model).embeddings.position_embedding.weight


def tokenize(tokenizer, prompt: str, family: Family = SD1) -> dict:
    """{key: [chunk, ...]} per text encoder of `family`, like ComfyUI's tokenizers for a plain prompt
    (no weights syntax): BOS + up to 75 tokens + EOS, padded to 77 per chunk with the stream's pad
    token (SD1.x and SDXL's clip_l: EOS; SDXL's clip_g: 0). Both SDXL encoders share CLIP's BPE
    vocabulary, so one tokenizer serves every stream."""
    ids = [int(t) for t in tokenizer(prompt)["input_ids"] if int(t) not in (BOS, EOS)]
    return {s.key: token_chunks(ids, s.pad_token) for s in family.streams}


def token_chunks(ids, pad: int = EOS) -> list:
    """Prompt ids (no BOS/EOS) -> 77-token chunks: BOS, up to 75 ids, EOS, `pad` padding."""
    chunks = []
    for i in range(0, max(len(ids), 1), CHUNK - 2):
        body = list(ids[i:i + CHUNK - 2])
        row = [BOS] + body + [EOS] + [pad] * (CHUNK - 2 - len(body))
        chunks.append([(t, 1.0) for t in row])
    return chunks


def clip_text_model(state_dict, config: dict, source: str = "the text encoder weights", projection: bool = False):
    """A transformers CLIPTextModel (CLIPTextModelWithProjection with `projection`: SDXL's bigG) in eval
    mode from a state dict, without a random init first.

    Keys may carry transformers 4.x names (`text_model.` prefix, as SD1.4 and the parity recipe)
    or 5.x names; the int64 `position_ids` buffer is rebuilt rather than read. `config` holds
    CLIPTextConfig keyword arguments (e.g. the parity recipe's CLIP_TEXT_CONFIG). Missing weights
    raise a CheckpointError naming `source`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**config))
    want = model.state_dict()
    sd = {}
    for k, v in state_dict.items():
        for cand in (k, k.removeprefix("text_model."), "text_model." + k):
            if cand in want:
                sd[cand] = v
    missing = want.keys() - sd.keys()
    wrong = sorted(k for k in want.keys() & sd.keys() if tuple(sd[k].shape) != tuple(want[k].shape))
    if missing or wrong:
        what = f"a {config['hidden_size']}-wide CLIP text encoder of {config['num_hidden_layers']} layers"
        raise CheckpointError(f"{source}: its text encoder is not {what} ({len(missing)} weights missing, e.g. "
                              f"{sorted(missing)[:2]}; {len(wrong)} with other shapes, e.g. {wrong[:2]}).")
    model.load_state_dict(sd, strict=True, assign=True)
    # non-persistent buffers are not in a state dict: rebuild them off the meta device
    emb = text_transformer(model).embeddings
    emb.register_buffer("position_ids", torch.arange(config["max_position_embeddings"])[None], persistent=False)
    return model.eval().requires_grad_(False)


def encode_chunks(model, chunks, stream: TextStream | None = None, pooled: bool = False):
    """k token chunks -> ((k, 77, width) hidden state, (k, projection) pooled output or None).

    `stream` says which hidden state (models/families.py); None: the last one after the final
    LayerNorm (SD1.x). The pooled output is the projected final-LayerNorm state at each chunk's
    first EOS (needs a CLIPTextModelWithProjection). Tensor tokens are written into the token
    embedding; the position embedding of their slot is added by the model."""
    tt = text_transformer(model)
    table = tt.embeddings.token_embedding
    ids, overrides = [], []
    for c, chunk in enumerate(chunks):
        row = []
        for s, item in enumerate(chunk):
            token = item[0]
            if isinstance(token, torch.Tensor):
                overrides.append((c, s, token.reshape(-1)))
                row.append(0)  # placeholder id (not EOS, so the pooled slot stays the EOS one); overwritten below
            else:
                row.append(int(token))
        ids.append(row)
    device = table.weight.device

    def put_vectors(_module, _inputs, out):
        if not overrides:
            return out
        out = out.clone()
        for c, s, vec in overrides:
            out[c, s] = vec.to(out)
        return out

    last = stream is None or (stream.hidden_layer == -1 and stream.final_norm)
    handle = table.register_forward_hook(put_vectors)
    try:
        out = (model if pooled else tt)(input_ids=torch.tensor(ids, device=device), output_hidden_states=not last)
    finally:
        handle.remove()
    if last:
        hidden = out.last_hidden_state
    else:
        hidden = out.hidden_states[stream.hidden_layer]
        if stream.final_norm:
            hidden = tt.final_layer_norm(hidden)
    if not pooled:
        return hidden, None
    if not hasattr(out, "text_embeds"):
        raise CheckpointError("the pooled output needs a CLIPTextModelWithProjection (SDXL's clip_g); this text "
                              f"encoder is a {type(model).__name__}.")
    return hidden, out.text_embeds


def encode_token_chunks(model, chunks, stream: TextStream | None = None) -> torch.Tensor:
    """(1, 77*k, width) hidden state of k token chunks (default: SD1.x's last layer after final_layer_norm)."""
    hidden, _ = encode_chunks(model, chunks, stream)
    return hidden.reshape(1, -1, hidden.shape[-1])


def encode_family(encoders: dict, tokens: dict, family: Family = SD1):
    """One prompt through every text encoder of `family` -> ((1, 77*k, token_width) conditioning, the
    streams side by side in the family's order; (1, projection) pooled output of the first chunk, as
    ComfyUI takes it, or None when the family has none).

    encoders, tokens: {stream key: model}, {stream key: [chunk, ...]} (every stream the same number
    of chunks, as ComfyUI's SDXL tokenizer pads them)."""
    parts, pooled = [], None
    for s in family.streams:
        if s.key not in encoders or s.key not in tokens:
            raise KeyError(f"{family.label} needs the {s.key!r} text encoder and its tokens (got encoders "
                           f"{sorted(encoders)}, tokens {sorted(tokens)})")
        hidden, p = encode_chunks(encoders[s.key], tokens[s.key], s, pooled=family.pooled == s.key)
        parts.append(hidden.reshape(1, -1, hidden.shape[-1]))
        if p is not None:
            pooled = p[0:1]
    return torch.cat(parts, dim=-1), pooled
