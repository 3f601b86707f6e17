"""LoadF2DEncoder: the MSID encoder, the mapping network and a face detector (an insightface
pack, dlib, or auto: a pack when there is one, else dlib)."""
from __future__ import annotations

from comfy_api.v0_0_2 import io, ui

from ..f2d_core import choices
from ..f2d_core.faces.detect import load_detector
from ..f2d_core.faces.dlib_detector import AUTO, NAME as DLIB, auto_detector, detector_choices
from . import paths
from .handle import load_expression, load_handle
from .types import F2DEncoder

DEVICES = ("auto", "cpu")
NO_EXPRESSION_MODEL = "none"


class LoadF2DEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = paths.weight_files()
        packs = paths.detector_packs()
        return io.Schema(
            node_id="LoadF2DEncoder",
            display_name="Load Face2Diffusion Encoder",
            category="Face2Diffusion",
            description="Loads the Face2Diffusion identity encoder (MSID) and mapping network from "
                        "models/face2diffusion, and an insightface face detector from "
                        "models/insightface/models. Loaded once and reused; ComfyUI moves it to the GPU "
                        "when needed and can offload it.",
            inputs=[
                io.Combo.Input("msid", options=files, default=paths.default_file(files, "msid"),
                               tooltip="The MSID identity encoder: msid.pt (or msid.safetensors) in "
                                       "models/face2diffusion."),
                io.Combo.Input("mapping", options=files, default=paths.default_file(files, "mapping"),
                               tooltip="The mapping network in models/face2diffusion: the official mapping.pt (or "
                                       "mapping.safetensors) for SD1.x checkpoints, or an F2D-SDXL "
                                       "mapping_sdxl.safetensors (trained with `python -m f2d_core.train mapping "
                                       "--base sdxl`) for SDXL-family checkpoints."),
                io.Combo.Input("detector", options=detector_choices(packs, paths.NO_DETECTOR), default=AUTO,
                               tooltip="How faces are found and aligned: an insightface model pack (buffalo_l or "
                                       "antelopev2 in models/insightface/models), 'dlib' (installed with "
                                       "requirements-dlib.txt; needs no model folder), or 'auto': an insightface "
                                       "pack when there is one, else dlib. Choose 'none' only if your images are "
                                       "already ArcFace-aligned 112x112 face crops."),
                io.Boolean.Input("landmarks_68", default=True,
                                 tooltip="Align with the pack's 68-point landmarks (1k3d68.onnx) when it has "
                                         "them: closest to the official alignment. Off: the detector's 5 "
                                         "keypoints. (dlib always aligns from its 68 points.)"),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device (your GPU, or the CPU with --cpu). cpu: always "
                                       "the CPU."),
                io.Combo.Input("precision", options=list(choices.PRECISIONS), default="auto",
                               tooltip="auto = fp32, as in the official code. fp16/bf16: half the memory, "
                                       "faster on most GPUs (fp16 is slow on CPUs), but the identity tokens move "
                                       "slightly (bf16 by a few 1e-2)."),
                io.Combo.Input("expression_model", options=[NO_EXPRESSION_MODEL] + files,
                               default=NO_EXPRESSION_MODEL,
                               tooltip="Optional: Deep3DFaceRecon's epoch_20.pth in models/face2diffusion, for "
                                       "Expression's 'from reference image(s)' mode (experimental)."),
            ],
            outputs=[F2DEncoder.Output(display_name="encoder",
                                       tooltip="Connect to Encode Face, Expression and Inject Face Token.")],
        )

    @classmethod
    def validate_inputs(cls, msid, mapping, detector, expression_model=NO_EXPRESSION_MODEL):
        special = (AUTO, DLIB, paths.NO_DETECTOR)
        return paths.validation(
            paths.weight_refusal(msid, "msid"), paths.weight_refusal(mapping, "mapping"),
            None if detector in special else paths.pack_refusal(detector, "detector"),
            None if expression_model == NO_EXPRESSION_MODEL else paths.weight_refusal(expression_model,
                                                                                       "expression_model"))

    @classmethod
    def execute(cls, msid, mapping, detector, landmarks_68=True, device="auto", precision="auto",
                expression_model=NO_EXPRESSION_MODEL):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        handle = load_handle(paths.weight_path(msid, "msid"), paths.weight_path(mapping, "mapping"),
                             device, choices.precision(precision))
        det, chosen = None, detector
        if detector == AUTO:
            detector = auto_detector(paths.detector_packs())
            chosen = f"auto: {detector}"
        if detector == DLIB:
            det = load_detector(DLIB)
        elif detector != paths.NO_DETECTOR:
            det = load_detector(paths.detector_pack_path(detector), use_landmarks68=bool(landmarks_68),
                                device=handle.offload_device)  # the handle moves it (ComfyUI's memory management)
        expr = None
        if expression_model and expression_model != NO_EXPRESSION_MODEL:
            expr = load_expression(paths.weight_path(expression_model, "expression_model"), handle.load_device,
                                   handle.offload_device)
        handle = handle.with_parts(det, None if det is None else chosen, expr)
        return io.NodeOutput(handle, ui=ui.PreviewText(handle.describe()))  # what was loaded, in which dtype
