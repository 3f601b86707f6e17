"""F2DInjectFaceToken: a prompt with "f l" -> CONDITIONING carrying the identity in those words."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.text import inject
from ..f2d_core.text.conditioning import blend_conditioning, require_sd1
from ..f2d_core.errors import F2DError
from .types import F2DEncoder, F2DExpression, F2DFace


def _face_tokens(face, encoder, expression, label):
    if encoder is not None:
        exp = None if expression is None else expression.vector[None]
        s1, s2 = encoder.face_tokens(face.features[None], exp)
        return s1[0], s2[0]
    if expression is not None:
        raise F2DError(f"{label}: an expression needs the mapping network: connect the encoder input too.")
    if face.s1 is None or face.s2 is None:
        raise F2DError(f"{label}: this face has no stored identity tokens; connect the encoder input.")
    return face.s1, face.s2


def _position_embedding(clip) -> torch.Tensor:
    clip.load_model()  # applies LoRA/CLIP patches, so we read the weights the encoder will use
    return clip.cond_stage_model.clip_l.transformer.text_model.embeddings.position_embedding.weight


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
                        "keep working). SD1.x checkpoints only. For two people connect face_2 and use its "
                        "trigger too.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint."),
                F2DFace.Input("face", tooltip="From Encode Face or Load Face."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="a photo of f l",
                                tooltip="The prompt. Write the trigger where the person goes."),
                io.String.Input("trigger", default=inject.DEFAULT_TRIGGER,
                                tooltip="The words the identity replaces; 'f l' is what the model was trained "
                                        "with. Any other words work as placeholders."),
                io.Float.Input("identity_strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1 = the identity as in the paper; 0 = the class word instead; in "
                                       "between, a linear blend of the two encodings."),
                io.String.Input("class_word", default="person",
                                tooltip="What stands in the trigger's place at identity strength 0."),
                F2DEncoder.Input("encoder", optional=True,
                                 tooltip="Needed with an expression; otherwise the face's stored tokens are "
                                         "used."),
                F2DExpression.Input("expression", optional=True,
                                    tooltip="From Expression, applied to face (face_2 keeps the neutral one). Without it: the learned neutral expression."),
                F2DFace.Input("face_2", optional=True, tooltip="A second person, placed at trigger_2."),
                io.String.Input("trigger_2", default="g k", optional=True,
                                tooltip="Where the second person goes (only used with face_2)."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Connect to the sampler's positive input.")],
        )

    @classmethod
    def execute(cls, clip, face, text, trigger="f l", identity_strength=1.0, class_word="person",
                encoder=None, expression=None, face_2=None, trigger_2="g k"):
        if clip is None:
            raise F2DError("clip input is invalid: None. Connect the CLIP output of an SD1.x checkpoint loader.")
        strength = float(identity_strength)
        if not 0.0 <= strength <= 1.0:
            raise F2DError(f"identity_strength must lie in [0, 1], got {strength}")
        tokens = clip.tokenize(text)
        require_sd1(tokens.keys())
        tokenizer = clip.tokenizer.clip_l
        decode = tokenizer.inv_vocab
        people = [(face, trigger, "face")] + ([(face_2, trigger_2, "face_2")] if face_2 is not None else [])
        if len(people) == 2 and trigger.strip().lower() == (trigger_2 or "").strip().lower():
            raise F2DError(f"face and face_2 use the same trigger {trigger!r}; give face_2 its own, e.g. 'g k'.")
        position = _position_embedding(clip) if strength > 0 else None
        if strength < 1:
            if not (class_word or "").strip():
                raise F2DError("class_word is empty: below identity strength 1 the trigger is blended with it. "
                               "Write a word such as 'person', 'woman' or 'man'.")
            word_ids = inject.trigger_token_ids(tokenizer.tokenizer, class_word)
        with_identity, with_class = tokens, tokens
        for person, trig, label in people:
            ids = inject.trigger_token_ids(tokenizer.tokenizer, trig)
            if strength > 0:
                s1, s2 = _face_tokens(person, encoder, expression if label == "face" else None, label)
                with_identity = inject.inject_face(with_identity, ids, s1, s2, position, decode=decode,
                                                   trigger_text=trig)
            if strength < 1:
                with_class = inject.replace_trigger(with_class, ids, word_ids, decode=decode, trigger_text=trig)
        if strength == 1:
            return io.NodeOutput(clip.encode_from_tokens_scheduled(with_identity))
        reference = clip.encode_from_tokens_scheduled(with_class)
        if strength == 0:
            return io.NodeOutput(reference)
        return io.NodeOutput(blend_conditioning(clip.encode_from_tokens_scheduled(with_identity), reference,
                                                strength))
