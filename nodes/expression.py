"""F2DExpressionEmbed: the 64-d expression input of the mapping network."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..f2d_core.choices import parse_vector
from .types import F2DEncoder, F2DExpression

MODES = ("neutral", "vector")


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
                        "(the default of the paper and of Inject Face Token without this node), which lets the "
                        "prompt choose the expression. vector: 64 3DMM expression coefficients, blended from "
                        "neutral by strength.",
            inputs=[
                F2DEncoder.Input("encoder", tooltip="From Load Face2Diffusion Encoder (holds the learned "
                                                    "neutral vector)."),
                io.Combo.Input("mode", options=list(MODES), default="neutral",
                               tooltip="neutral: the learned null expression. vector: the 64 numbers below."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="0 = neutral, 1 = the given expression, above 1 exaggerates it."),
                io.String.Input("vector", default="", multiline=True, optional=True,
                                tooltip="mode = vector: 64 expression coefficients (Deep3DFaceRecon / BFM), "
                                        "separated by commas."),
            ],
            outputs=[F2DExpression.Output(display_name="expression",
                                          tooltip="Connect to Inject Face Token's expression input.")],
        )

    @classmethod
    def execute(cls, encoder, mode="neutral", strength=1.0, vector=""):
        null = encoder.null_exp.float()
        if mode == "neutral":
            return io.NodeOutput(Expression(null, "neutral"))
        if mode != "vector":
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        target = parse_vector(vector, dim=null.numel())
        return io.NodeOutput(Expression(torch.lerp(null, target, float(strength)), f"vector x{strength:g}"))
