"""Encoding ComfyUI-style token lists with a transformers CLIPTextModel (SD1.x text tower).

Hosts other than ComfyUI (the CLI, benchmarks, tests, training) use this: tensor
tokens are written into the token-embedding output through a forward hook, so the
position embedding is added afterwards exactly as ComfyUI's `process_tokens` does.
Works with transformers 4.x (`model.text_model`) and 5.x (flattened CLIPTextModel).
Token weights are not applied here (ComfyUI applies them in its own encode).
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError
from .inject import BOS, EOS

CHUNK = 77


def text_transformer(model):
    return getattr(model, "text_model", model)


def position_embedding(model) -> torch.Tensor:
    """(77, 768) position-embedding table of a CLIPTextModel."""
    return text_transformer(model).embeddings.position_embedding.weight


def tokenize(tokenizer, prompt: str) -> dict:
    """{"l": [chunk, ...]} like ComfyUI's SD1 tokenizer for a plain prompt (no weights syntax):
    BOS + up to 75 tokens + EOS, padded with EOS to 77 per chunk."""
    ids = [int(t) for t in tokenizer(prompt)["input_ids"] if int(t) not in (BOS, EOS)]
    chunks = []
    for i in range(0, max(len(ids), 1), CHUNK - 2):
        body = ids[i:i + CHUNK - 2]
        row = [BOS] + body + [EOS] * (CHUNK - 1 - len(body))
        chunks.append([(t, 1.0) for t in row])
    return {"l": chunks}


def clip_text_model(state_dict, config: dict, source: str = "the text encoder weights"):
    """A transformers CLIPTextModel in eval mode from a state dict, without a random init first.

    Keys may carry transformers 4.x names (`text_model.` prefix, as SD1.4 and the parity recipe)
    or 5.x names; the int64 `position_ids` buffer is rebuilt rather than read. `config` holds
    CLIPTextConfig keyword arguments (e.g. the parity recipe's CLIP_TEXT_CONFIG). Missing weights
    raise a CheckpointError naming `source`."""
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config))
    keys = set(model.state_dict())
    sd = {}
    for k, v in state_dict.items():
        for cand in (k, k.removeprefix("text_model."), "text_model." + k):
            if cand in keys:
                sd[cand] = v
    missing = keys - sd.keys()
    if missing:
        raise CheckpointError(f"{source}: its text encoder is not SD1.x's CLIP ViT-L/14 ({len(missing)} weights "
                              f"missing, e.g. {sorted(missing)[:2]}).")
    model.load_state_dict(sd, strict=True, assign=True)
    # non-persistent buffers are not in a state dict: rebuild them off the meta device
    emb = text_transformer(model).embeddings
    emb.register_buffer("position_ids", torch.arange(config["max_position_embeddings"])[None], persistent=False)
    return model.eval().requires_grad_(False)


def encode_token_chunks(model, chunks) -> torch.Tensor:
    """(1, 77*k, 768) last hidden state (after final_layer_norm) of k token chunks."""
    tt = text_transformer(model)
    table = tt.embeddings.token_embedding
    ids, overrides = [], []
    for c, chunk in enumerate(chunks):
        row = []
        for s, item in enumerate(chunk):
            token = item[0]
            if isinstance(token, torch.Tensor):
                overrides.append((c, s, token.reshape(-1)))
                row.append(0)  # placeholder id; its embedding row is overwritten below
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

    handle = table.register_forward_hook(put_vectors)
    try:
        hidden = tt(input_ids=torch.tensor(ids, device=device)).last_hidden_state
    finally:
        handle.remove()
    return hidden.reshape(1, -1, hidden.shape[-1])
