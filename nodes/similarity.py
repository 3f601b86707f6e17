"""F2DFaceSimilarity: how much generated images still show the reference person (ArcFace, not MSID)."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
from comfy_api.v0_0_2 import io, ui

from ..f2d_core.faces.similarity import load_identity_scorer
from . import paths
from .handle import devices, network_patchers

DEVICES = ("auto", "cpu")


class F2DFaceSimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        packs = paths.recognizer_packs()
        return io.Schema(
            node_id="F2DFaceSimilarity",
            display_name="Face Similarity (Face2Diffusion)",
            category="Face2Diffusion",
            description="Scores each image by how much its face looks like the reference person: the cosine "
                        "of ArcFace embeddings (insightface's recognition model, not Face2Diffusion's own "
                        "encoder), clipped to 0..1 as the paper does; 0 when no face is found. Higher means more "
                        "alike; compare settings or seeds by it rather than reading it as a yes/no.",
            inputs=[
                io.Image.Input("reference", tooltip="Photo(s) of the person (a batch of several photos of the "
                                                    "same person is averaged into one identity)."),
                io.Image.Input("images", tooltip="The images to score, e.g. the VAE Decode output; one score "
                                                 "per image of the batch."),
                io.Combo.Input("recognizer", options=packs, default=packs[0] if packs else None,
                               tooltip="insightface model pack in models/insightface/models with a face "
                                       "detector and a recognition model: buffalo_l (w600k_r50.onnx) or "
                                       "antelopev2 (glintr100.onnx). Its detector finds the faces."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device (the GPU when there is one), under its memory "
                                       "management. cpu: always the CPU."),
            ],
            outputs=[
                io.Float.Output(display_name="similarity", is_output_list=True,
                                tooltip="One score per image, 0..1 (0 = no face found)."),
                io.String.Output(display_name="summary", tooltip="Mean score, faces found and every score, "
                                                                 "as text."),
                io.Float.Output(display_name="detection_rate",
                                tooltip="Fraction of the images in which a face was found, 0..1."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, recognizer):
        return paths.validation(paths.pack_refusal(recognizer, "recognizer"))

    @classmethod
    def execute(cls, reference, images, recognizer, device="auto"):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        # the pack's own finders say what is missing in it; no need to rescan every pack here
        load_device, offload_device = devices(device)
        scorer = load_identity_scorer(paths.recognizer_pack_path(recognizer), device=offload_device)
        mm.load_models_gpu(network_patchers(scorer, load_device, offload_device), force_full_load=True)
        identity = scorer.reference(reference)
        pbar = comfy.utils.ProgressBar(int(images.shape[0]))
        result = scorer.score(identity, images, progress=lambda i, n: pbar.update_absolute(i, n),
                              check_interrupt=mm.throw_exception_if_processing_interrupted)
        text = result.summary()
        return io.NodeOutput(result.similarities, text, result.detection_rate, ui=ui.PreviewText(text))
