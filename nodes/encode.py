"""F2DEncodeFace: reference photo(s) of one person -> F2D_FACE."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.v0_0_2 import io

from ..f2d_core import choices
from ..f2d_core.faces.images import photos_from_inputs
from ..f2d_core.faces.preview import preview_sheet
from ..f2d_core.identity.pipeline import MIN_FACE_PX, encode_images
from .types import F2DEncoder, F2DFace


class F2DEncodeFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="F2DEncodeFace",
            display_name="Encode Face (Face2Diffusion)",
            category="Face2Diffusion",
            description="Finds the face in each reference photo, aligns it and encodes it with MSID. Several "
                        "photos of the same person (image_2..image_4, or a batch) are averaged into one "
                        "identity. Also outputs the aligned 112x112 crops, so you can see what was encoded, "
                        "and the photos with every face found numbered as 'index' counts them.",
            inputs=[
                F2DEncoder.Input("encoder", tooltip="From Load Face2Diffusion Encoder."),
                io.Image.Input("image", tooltip="A photo of the person (or a batch of photos)."),
                io.Combo.Input("face", options=list(choices.FACE_CHOICES), default="largest",
                               tooltip="Which face to use when a photo shows several: the largest, the one "
                                       "the detector is most sure of (what the official code takes), or the "
                                       "one at 'index'."),
                io.Int.Input("index", default=0, min=0, max=63,
                             tooltip="With face = index: 0 is the largest face, 1 the second largest, ..."),
                io.Combo.Input("on_no_face", options=list(choices.ON_NO_FACE), default="error",
                               tooltip="error: stop when a photo has no usable face (none found, too small, "
                                       "a blank, saturated or cut-off image). skip: leave that photo out (still an "
                                       "error when no photo is left)."),
                io.Int.Input("min_face_px", default=MIN_FACE_PX, min=0, max=4096,
                             tooltip=f"Smallest face encoded: pixels on the longer side of its box (default "
                                     f"{MIN_FACE_PX}; smaller faces give a blurred, upscaled crop). 0 allows "
                                     "any size."),
                *[io.Image.Input(f"image_{k}", optional=True,
                                 tooltip="More photos of the same person, of any size: each is encoded as it "
                                         "is, never cropped to the others (core Batch Images would crop).")
                  for k in (2, 3, 4)],
            ],
            outputs=[F2DFace.Output(display_name="face", tooltip="The identity: connect to Inject Face Token "
                                                                  "or Save Face."),
                     io.Image.Output(display_name="aligned", tooltip="The aligned 112x112 face crops that "
                                                                     "were encoded."),
                     io.Image.Output(display_name="faces", tooltip="The photo(s) with every detected face boxed "
                                                                   "and numbered as 'index' counts them (0 = "
                                                                   "largest); the encoded face is green.")],
        )

    @classmethod
    def execute(cls, encoder, image, face="largest", index=0, on_no_face="error", min_face_px=MIN_FACE_PX,
                image_2=None, image_3=None, image_4=None):
        policy = choices.face_policy(face, index)
        photos, names, batched = photos_from_inputs([("image", image), ("image_2", image_2), ("image_3", image_3),
                                                     ("image_4", image_4)])
        pbar = comfy.utils.ProgressBar(len(photos))
        with encoder.loaded() as f2d:  # the identity comes back on the CPU
            identity = encode_images(f2d, photos, encoder.detector, policy=policy, names=names,
                                     on_no_face=choices.on_no_face(on_no_face), min_face_px=min_face_px,
                                     batched=batched,
                                     progress=lambda i, n: pbar.update_absolute(i, n),
                                     check_interrupt=mm.throw_exception_if_processing_interrupted)
        crops = identity.aligned.float() / 255.0
        sheet = preview_sheet(photos, identity.meta["detections"])
        return io.NodeOutput(identity, crops, torch.from_numpy(sheet)[None].float() / 255.0)
