"""F2DExpressionEmbed: the 64-d expression input of the mapping network."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import torch
from comfy_api.v0_0_2 import io

from ..f2d_core.choices import parse_vector
from ..f2d_core.errors import F2DError
from ..f2d_core.identity.expression import expression_from_strength
from .types import F2DEncoder, F2DExpression

NEUTRAL, VECTOR, REFERENCE = "neutral", "vector", "from reference image(s)"
MODES = (NEUTRAL, VECTOR, REFERENCE)


@dataclass
class Expression:
    vector: torch.Tensor  # (64,) float32, what the mapping network receives
    source: str


class F2DExpressionEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="F2DExpressionEmbed",
            display_name="Expression (Face2Diffusion)",
            category="Face2Diffusion",
            description="The expression given to the mapping network. neutral: the learned neutral vector "
                        "(the paper's default, also used by Inject Face Token without this node), which lets "
                        "the prompt choose the expression. vector: 64 3DMM expression coefficients. from "
                        "reference image(s): the expression of the face in a photo, measured by "
                        "Deep3DFaceRecon (experimental; load its weights in the encoder loader).",
            inputs=[
                F2DEncoder.Input("encoder", tooltip="From Load Face2Diffusion Encoder (holds the learned "
                                                    "neutral vector and the optional expression model)."),
                io.Combo.Input("mode", options=list(MODES), default=NEUTRAL,
                               tooltip="neutral: the learned null expression. vector: the 64 numbers below. "
                                       "from reference image(s): the mean expression of the reference photos."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="0 = neutral, 1 = the given or reference expression, above 1 "
                                       "exaggerates it."),
                io.String.Input("vector", default="", multiline=True, optional=True,
                                tooltip="mode = vector: 64 expression coefficients (Deep3DFaceRecon / BFM), "
                                        "separated by commas."),
                io.Image.Input("reference", optional=True,
                               tooltip="mode = from reference image(s): photo(s) showing the expression "
                                       "(any person); several are averaged."),
            ],
            outputs=[F2DExpression.Output(display_name="expression",
                                          tooltip="Connect to Inject Face Token's expression input.")],
        )

    @classmethod
    def execute(cls, encoder, mode=NEUTRAL, strength=1.0, vector="", reference=None):
        with encoder.loaded() as f2d:
            null = f2d.null_exp.cpu()  # float32
        if not 0.0 <= float(strength) <= 2.0:
            raise F2DError(f"strength must lie in [0, 2], got {strength}")
        if mode == NEUTRAL:
            return io.NodeOutput(Expression(null, "neutral"))
        if mode == VECTOR:
            target, name = parse_vector(vector, dim=null.numel()), "expression vector"
        elif mode == REFERENCE:
            if reference is None:
                raise F2DError("mode 'from reference image(s)' needs a photo: connect the reference input.")
            if encoder.expression_model is None:
                raise F2DError("mode 'from reference image(s)' needs the Deep3DFaceRecon weights: put "
                               "epoch_20.pth in models/face2diffusion and choose it as expression_model in "
                               "Load Face2Diffusion Encoder (see the pack's README).")
            target = encoder.reference_expression(reference,
                                                  check_interrupt=mm.throw_exception_if_processing_interrupted)
            target, name = target.mean(0), "expression of the reference image(s)"
        else:
            raise F2DError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        vector = expression_from_strength(null, target, strength, name)
        return io.NodeOutput(Expression(vector, f"{mode} x{strength:g}"))
