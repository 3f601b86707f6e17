"""F2DSaveFace / F2DLoadFace: an identity kept as output/face2diffusion/NAME.f2d.safetensors."""
from __future__ import annotations

import os

import torch
from comfy_api.v0_0_2 import io, ui

from ..f2d_core.errors import F2DError
from ..f2d_core.identity.face_file import FaceIdentity, listed_face_path, save_face
from . import paths
from .types import F2DFace


def _crops(face: FaceIdentity) -> torch.Tensor:
    if face.aligned is None:
        return torch.zeros(1, 112, 112, 3)
    return face.aligned.float() / 255.0


class F2DSaveFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="F2DSaveFace",
            display_name="Save Face (Face2Diffusion)",
            category="Face2Diffusion",
            description="Saves an identity (features, tokens, aligned crops, model hashes) as "
                        "output/face2diffusion/NAME.f2d.safetensors, so Load Face can reuse it without the "
                        "detector or the encoder. An existing file of that name is replaced.",
            inputs=[F2DFace.Input("face", tooltip="From Encode Face."),
                    io.String.Input("name", default="person",
                                    tooltip="File name without extension; '/' makes subfolders.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, face, name="person"):
        path = save_face(face, paths.identity_dir(), name)
        rel = os.path.relpath(path, paths.identity_dir()).replace(os.sep, "/")
        return io.NodeOutput(ui=ui.PreviewText(f"saved {rel} ({face.num_faces} face(s))"))


class F2DLoadFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = paths.identity_files()
        return io.Schema(
            node_id="F2DLoadFace",
            display_name="Load Face (Face2Diffusion)",
            category="Face2Diffusion",
            description="Loads an identity saved by Save Face from output/face2diffusion.",
            inputs=[io.Combo.Input("name", options=files, default=files[0] if files else None,
                                   tooltip="A .f2d.safetensors file in output/face2diffusion (press R to "
                                           "refresh after saving).")],
            outputs=[F2DFace.Output(display_name="face"),
                     io.Image.Output(display_name="aligned", tooltip="The aligned crops stored with the face.")],
        )

    @classmethod
    def validate_inputs(cls, name):
        return paths.validation(paths.face_refusal(name))

    @classmethod
    def fingerprint_inputs(cls, name):
        try:
            path = listed_face_path(paths.identity_dir(), name)
        except F2DError:
            return name  # execute() reports it
        return os.path.getmtime(path) if os.path.exists(path) else name  # re-run when the file changes

    @classmethod
    def execute(cls, name):
        refusal = paths.face_refusal(name) if name is not None else "no saved face chosen"
        if refusal:
            raise F2DError(refusal)
        path = listed_face_path(paths.identity_dir(), name)
        if not os.path.isfile(path):
            found = ", ".join(paths.identity_files()) or "none"
            raise F2DError(f"no saved face {name!r} in {paths.identity_dir()} (found: {found}). Save one with "
                           "Save Face first.")
        face = FaceIdentity.load(path)
        return io.NodeOutput(face, _crops(face))
