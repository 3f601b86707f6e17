"""F2DEncodeFace: reference photo(s) of one person -> F2D_FACE."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
from comfy_api.v0_0_2 import io

from ..f2d_core import choices
from ..f2d_core.identity.pipeline import encode_images
from .types import F2DEncoder, F2DFace


class F2DEncodeFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="F2DEncodeFace",
            display_name="Encode Face (Face2Diffusion)",
            category="Face2Diffusion",
            description="Finds the face in each reference photo, aligns it and encodes it with MSID. Several "
                        "photos of the same person (an image batch) are averaged into one identity. Also "
                        "outputs the aligned 112x112 crops, so you can see what was encoded.",
            inputs=[
                F2DEncoder.Input("encoder", tooltip="From Load Face2Diffusion Encoder."),
                io.Image.Input("image", tooltip="One or more photos of the same person (batch them with "
                                                "Batch Images to use several)."),
                io.Combo.Input("face", options=list(choices.FACE_CHOICES), default="largest",
                               tooltip="Which face to use when a photo shows several: the largest, the one "
                                       "the detector is most sure of (what the official code takes), or the "
                                       "one at 'index'."),
                io.Int.Input("index", default=0, min=0, max=63,
                             tooltip="With face = index: 0 is the largest face, 1 the second largest, ..."),
                io.Combo.Input("on_no_face", options=list(choices.ON_NO_FACE), default="error",
                               tooltip="error: stop when a photo has no face. skip: leave that photo out "
                                       "(still an error when no photo is left)."),
            ],
            outputs=[F2DFace.Output(display_name="face", tooltip="The identity: connect to Inject Face Token "
                                                                  "or Save Face."),
                     io.Image.Output(display_name="aligned", tooltip="The aligned 112x112 face crops that "
                                                                     "were encoded.")],
        )

    @classmethod
    def execute(cls, encoder, image, face="largest", index=0, on_no_face="error"):
        policy = choices.face_policy(face, index)
        pbar = comfy.utils.ProgressBar(int(image.shape[0]))
        identity = encode_images(encoder, image, encoder.detector, policy=policy,
                                 on_no_face=choices.on_no_face(on_no_face),
                                 progress=lambda i, n: pbar.update_absolute(i, n),
                                 check_interrupt=mm.throw_exception_if_processing_interrupted)
        crops = identity.aligned.float() / 255.0
        return io.NodeOutput(identity, crops)
