"""CLIP image and text embeddings from a local CLIP model folder (transformers, no downloads).

    clip = ClipEmbedder("models/clip-vit-large-patch14")      # a folder saved by save_pretrained
    clip.images([pil_image, ...]), clip.texts(["a photo of a person", ...])   # L2-normalised (N, D)

The folder must hold a transformers CLIPModel (config.json + weights) and its processor
(tokenizer and image-processor files), e.g. a local clone of openai/clip-vit-base-patch32 or
openai/clip-vit-large-patch14. It is opened with local_files_only=True: nothing is fetched.
The projected embeddings are computed from the towers directly (vision/text model, pooled
output, projection), which is the same in transformers 4.x and 5.x.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import CheckpointError, ModelFilesMissing

_BATCH = 16


class ClipEmbedder:
    def __init__(self, model_dir, device: str = "cpu"):
        import torch
        from transformers import AutoProcessor, CLIPModel
        path = os.path.abspath(os.path.expanduser(os.fspath(model_dir)))
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelFilesMissing(
                f"CLIP model folder {path} has no config.json. Give a folder holding a transformers CLIP model "
                "and its processor (config.json, model.safetensors or pytorch_model.bin, tokenizer and "
                "preprocessor files), e.g. a local copy of openai/clip-vit-large-patch14. Nothing is downloaded.")
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(device)
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{path} could not be loaded as a CLIP model with its processor ({type(e).__name__}: {e}). "
                "The folder needs a CLIPModel (model_type 'clip' in config.json) and the tokenizer and image "
                "processor files saved with it.") from None
        self.path, self.device, self.torch = path, device, torch
        self.name = os.path.basename(path.rstrip(os.sep))

    def _normalise(self, x) -> np.ndarray:
        x = x.float().cpu().numpy()
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def images(self, images) -> np.ndarray:
        """(N, D) normalised image embeddings of PIL images (or HWC uint8 arrays)."""
        from PIL import Image
        images = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8)).convert("RGB")
                  for im in images]
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(images), _BATCH):
                px = self.processor(images=images[i:i + _BATCH], return_tensors="pt")["pixel_values"]
                pooled = self.model.vision_model(pixel_values=px.to(self.device)).pooler_output
                out.append(self._normalise(self.model.visual_projection(pooled)))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def texts(self, texts) -> np.ndarray:
        """(N, D) normalised text embeddings (prompts truncated to CLIP's 77 tokens)."""
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), _BATCH):
                tok = self.processor(text=list(texts[i:i + _BATCH]), return_tensors="pt", padding=True,
                                     truncation=True, max_length=77)
                pooled = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                               attention_mask=tok["attention_mask"].to(self.device)).pooler_output
                out.append(self._normalise(self.model.text_projection(pooled)))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
