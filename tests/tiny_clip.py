"""A tiny random transformers CLIP model with its processor, saved like a downloaded one.

The tokenizer is the real SD1/CLIP BPE (../shared/tokenizers/sd1_clip), the image processor a
32x32 CLIPImageProcessor, the towers 2 layers of width 32: random weights, so its scores mean
nothing, but every file a real CLIP folder has is there and loads with local_files_only=True."""
from __future__ import annotations

from pathlib import Path


def save_tiny_clip(folder, tokenizer_dir, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)))
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
