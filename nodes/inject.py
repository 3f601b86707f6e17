"""F2DInjectFaceToken: a prompt with "f l" -> CONDITIONING carrying the identity in those words."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from comfy_api.v0_0_2 import io

from ..f2d_core.errors import F2DError
from ..f2d_core.identity.tokens import face_subject
from ..f2d_core.models.families import Family
from ..f2d_core.text.conditioning import text_family
from ..f2d_core.text.inject import DEFAULT_TRIGGER
from ..f2d_core.text.prompt import DEFAULT_CLASS_WORD, SECOND_TRIGGER, build_face_prompt, check_families
from .types import F2DEncoder, F2DExpression, F2DFace


def _position_embeddings(clip, family: Family) -> dict[str, torch.Tensor]:
    """{stream: (77, width)} position table of each text encoder (clip_l, and clip_g for SDXL)."""
    clip.load_model()  # applies LoRA/CLIP patches, so we read the weights the encoder will use
    return {key: getattr(clip.cond_stage_model, f"clip_{key}").transformer.text_model.embeddings
            .position_embedding.weight for key in family.keys}


class F2DInjectFaceToken(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="F2DInjectFaceToken",
            display_name="Inject Face Token (Face2Diffusion)",
            category="Face2Diffusion",
            description="Encodes the prompt like CLIP Text Encode, with the person's identity in place of the "
                        "trigger words (\"f l\" by default): write e.g. 'a photo of f l as a chef'. The output "
                        "is ordinary CONDITIONING (timestep ranges, combine, masks, LoRA and (f l:1.2) weights "
                        "keep working). SD1.x checkpoints with the official mapping.pt; SDXL-family checkpoints "
                        "(SDXL, SSD-1B, Vega, Pony, Illustrious) with an F2D-SDXL mapping. For two people connect "
                        "face_2 and use its trigger too.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint (official mapping) or of an SDXL-family "
                                             "one (F2D-SDXL mapping): the family of the face's mapping."),
                F2DFace.Input("face", tooltip="From Encode Face or Load Face."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="a photo of f l",
                                tooltip="The prompt. Write the trigger where the person goes."),
                io.String.Input("trigger", default=DEFAULT_TRIGGER,
                                tooltip="The words the identity replaces; 'f l' is what the model was trained "
                                        "with. Any other words work as placeholders."),
                io.Float.Input("identity_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1 = the identity as in the paper; 0 = the class word instead; in "
                                       "between, a linear blend of the two encodings."),
                io.String.Input("class_word", default=DEFAULT_CLASS_WORD,
                                tooltip="What stands in the trigger's place at identity strength 0."),
                F2DEncoder.Input("encoder", optional=True,
                                 tooltip="Needed with an expression; otherwise the face's stored tokens are "
                                         "used."),
                F2DExpression.Input("expression", optional=True,
                                    tooltip="From Expression, applied to face (face_2 keeps the neutral one). Without it: the learned neutral expression."),
                F2DFace.Input("face_2", optional=True, tooltip="A second person, placed at trigger_2."),
                io.String.Input("trigger_2", default=SECOND_TRIGGER, optional=True,
                                tooltip="Where the second person goes (only used with face_2)."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Connect to the sampler's positive input.")],
        )

    @classmethod
    def execute(cls, clip, face, text, trigger=DEFAULT_TRIGGER, identity_strength=1.0, class_word=DEFAULT_CLASS_WORD,
                encoder=None, expression=None, face_2=None, trigger_2=SECOND_TRIGGER):
        if clip is None:
            raise F2DError("clip input is invalid: None. Connect the CLIP output of a checkpoint loader.")
        exp = None if expression is None else expression.vector
        with (encoder.loaded() if encoder is not None else nullcontext()) as f2d:  # tokens come back on the CPU
            subjects = [face_subject(face, f2d, exp, trigger, "face")]
            if face_2 is not None:
                subjects.append(face_subject(face_2, f2d, None, trigger_2, "face_2"))
        tokens = clip.tokenize(text)
        family = text_family(tokens.keys())
        check_families(family, subjects)  # before reaching for the text encoders' parts below
        tokenizer = clip.tokenizer.clip_l  # SDXL's clip_g shares its vocabulary
        prompt = build_face_prompt(tokens, tokenizer.tokenizer, subjects, _position_embeddings(clip, family),
                                   identity_strength, class_word, decode=tokenizer.inv_vocab)
        return io.NodeOutput(prompt.encode(clip.encode_from_tokens_scheduled))
