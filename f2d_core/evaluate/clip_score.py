"""CLIP and SigLIP embeddings from local model folders (transformers, no downloads).

    clip = ClipEmbedder("models/CLIP-ViT-H-14-laion2B-s32B-b79K")   # a folder saved by save_pretrained
    clip.images([pil_image, ...]), clip.texts(["a photo of a person", ...])   # L2-normalised (N, D)
    siglip = SiglipEmbedder("models/siglip-so400m-patch14-384")  # + siglip.scale, siglip.bias (Eq. 14)

The paper's text scores (E.3) use CLIP ViT-H/14 trained on LAION-2B (Eq. 11-13) and SigLIP trained
on WebLI (Eq. 14). A CLIP folder must hold a transformers CLIPModel (config.json + weights) and its
processor (tokenizer and image-processor files): laion/CLIP-ViT-H-14-laion2B-s32B-b79K ships in
that format; any other CLIP loads too and is named in the report as not the paper's. A SigLIP
folder holds a transformers SiglipModel with its tokenizer (SigLIP's sentencepiece tokenizer needs
the `sentencepiece` package) and image processor, e.g. google/siglip-so400m-patch14-384. Folders
are opened with local_files_only=True: nothing is fetched. The embeddings are computed from the
towers directly (vision/text model, pooled output, CLIP's projection), which is the same in
transformers 4.x and 5.x.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import CheckpointError, ModelFilesMissing

_BATCH = 16
PAPER_CLIP = "ViT-H/14"
_VIT_SIZES = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H", (1664, 48): "bigG"}


def clip_architecture(vision_config) -> str:
    """"ViT-H/14" and the like, from a CLIP vision config (width and depth name the size)."""
    size = _VIT_SIZES.get((vision_config.hidden_size, vision_config.num_hidden_layers),
                          f"{vision_config.hidden_size}w{vision_config.num_hidden_layers}")
    return f"ViT-{size}/{vision_config.patch_size}"


def _pil(images):
    from PIL import Image
    return [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8)).convert("RGB")
            for im in images]


class ClipEmbedder:
    def __init__(self, model_dir, device: str = "cpu"):
        import torch
        from transformers import AutoProcessor, CLIPModel
        path = os.path.abspath(os.path.expanduser(os.fspath(model_dir)))
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelFilesMissing(
                f"CLIP model folder {path} has no config.json. Give a folder holding a transformers CLIP model "
                "and its processor (config.json, model.safetensors or pytorch_model.bin, tokenizer and "
                "preprocessor files), e.g. a local copy of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the paper's CLIP). "
                "Nothing is downloaded.")
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
        self.architecture = clip_architecture(self.model.config.vision_config)
        self.is_paper_model = self.architecture == PAPER_CLIP

    def images(self, images) -> np.ndarray:
        """(N, D) normalised image embeddings of PIL images (or HWC uint8 arrays)."""
        images = _pil(images)
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(images), _BATCH):
                px = self.processor(images=images[i:i + _BATCH], return_tensors="pt")["pixel_values"]
                pooled = self.model.vision_model(pixel_values=px.to(self.device)).pooler_output
                out.append(_normalise(self.model.visual_projection(pooled)))
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
                out.append(_normalise(self.model.text_projection(pooled)))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class SiglipEmbedder:
    """SigLIP's towers, and its learnt `scale` (exp of logit_scale) and `bias` (logit_bias) for Eq. 14."""

    def __init__(self, model_dir, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel
        path = os.path.abspath(os.path.expanduser(os.fspath(model_dir)))
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelFilesMissing(
                f"SigLIP model folder {path} has no config.json. Give a folder holding a transformers SiglipModel "
                "with its tokenizer and image processor files, e.g. a local copy of "
                "google/siglip-so400m-patch14-384. Nothing is downloaded.")
        try:
            self.model = SiglipModel.from_pretrained(path, local_files_only=True).eval().to(device)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError) as e:
            raise CheckpointError(
                f"{path} could not be loaded as a SigLIP model with its tokenizer and image processor "
                f"({type(e).__name__}: {e}). The folder needs a SiglipModel (model_type 'siglip' in config.json) "
                "and the files saved with it; SigLIP's own tokenizer also needs `pip install sentencepiece`.") from None
        self.path, self.device, self.torch = path, device, torch
        self.name = os.path.basename(path.rstrip(os.sep))
        self.scale = float(self.model.logit_scale.detach().exp())
        self.bias = float(self.model.logit_bias.detach())

    def images(self, images) -> np.ndarray:
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(images), _BATCH):
                px = self.image_processor(images=_pil(images[i:i + _BATCH]), return_tensors="pt")["pixel_values"]
                out.append(_normalise(self.model.vision_model(pixel_values=px.to(self.device)).pooler_output))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def texts(self, texts) -> np.ndarray:
        """SigLIP was trained on text padded to its full length (64 tokens): padded the same here."""
        out = []
        with self.torch.inference_mode():
            for i in range(0, len(texts), _BATCH):
                tok = self.tokenizer(list(texts[i:i + _BATCH]), return_tensors="pt", padding="max_length",
                                     truncation=True, max_length=self.model.config.text_config.max_position_embeddings)
                out.append(_normalise(self.model.text_model(input_ids=tok["input_ids"].to(self.device)).pooler_output))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _normalise(x) -> np.ndarray:
    x = x.float().cpu().numpy()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
