"""Node logic that needs no ComfyUI: option parsing, identity strength, SD1 checks."""
import pytest
import torch

from f2d_core.text import inject
from f2d_core import F2DError
from f2d_core.choices import face_policy, on_no_face, parse_vector, precision
from f2d_core.text.conditioning import blend_conditioning, clip_family, text_family
from f2d_core.models.families import SD1, SDXL


def test_face_choices_map_to_selection_policies():
    assert face_policy("largest") == "largest"
    assert face_policy("most confident") == "confident"
    assert face_policy("index", 2) == 2
    with pytest.raises(F2DError, match="face must be one of"):
        face_policy("smallest")
    with pytest.raises(F2DError, match="0 or more"):
        face_policy("index", -1)


def test_on_no_face_and_precision_values_are_checked():
    assert on_no_face("skip") == "skip"
    assert precision("auto") is None and precision("bf16") is torch.bfloat16
    with pytest.raises(F2DError, match="precision must be one of"):
        precision("fp8")
    with pytest.raises(F2DError, match="on no face must be one of"):
        on_no_face("ignore")


def test_expression_vectors_parse_from_pasted_text():
    text = "[" + ", ".join(str(i / 10) for i in range(64)) + "]"
    assert torch.equal(parse_vector(text), torch.arange(64, dtype=torch.float32) / 10)
    assert parse_vector("\n".join(["1e-2"] * 64)).eq(0.01).all()


@pytest.mark.parametrize("text, match", [("1, 2, 3", "expected 64 numbers, got 3"),
                                         (", ".join(["1"] * 63 + ["x"]), "'x' is not a number"),
                                         (", ".join(["nan"] * 64), "NaN")])
def test_bad_expression_vectors_are_explained(text, match):
    with pytest.raises(F2DError, match=match):
        parse_vector(text)


@pytest.mark.parametrize("separator", ["; ", " ", "\n"])
def test_decimal_commas_are_named_rather_than_counted_as_twice_the_numbers(separator):
    text = separator.join(f"{i / 100:.2f}".replace(".", ",") for i in range(-32, 32))  # 64 numbers as de_DE writes
    with pytest.raises(F2DError, match=r"^expression vector: expected 64 numbers, got 128: the text writes decimals "
                                       r"with a comma \('-0,32'\), and ',' also separates the numbers, so each "
                                       r"number is read as two\. Write decimals with a point \(0\.5, not 0,5\)"):
        parse_vector(text)


def cond(value, pooled):
    return [[torch.full((1, 77, 768), value), {"pooled_output": torch.full((1, 768), pooled), "area": (1, 2)}]]


def test_identity_strength_blends_linearly_and_keeps_other_keys():
    out = blend_conditioning(cond(2.0, 4.0), cond(0.0, 0.0), 0.25)
    assert out[0][0].eq(0.5).all() and out[0][1]["pooled_output"].eq(1.0).all()
    assert out[0][1]["area"] == (1, 2)
    assert torch.equal(blend_conditioning(cond(2.0, 4.0), cond(1.0, 3.0), 1.0)[0][0], cond(2.0, 4.0)[0][0])
    assert torch.equal(blend_conditioning(cond(2.0, 4.0), cond(1.0, 3.0), 0.0)[0][0], cond(1.0, 3.0)[0][0])


def test_blending_mismatched_conditioning_is_refused():
    longer = [[torch.zeros(1, 154, 768), {}]]
    with pytest.raises(F2DError, match="shapes"):
        blend_conditioning(cond(1, 1), longer, 0.5)


def test_class_word_replaces_the_trigger_at_strength_zero(tokenizer):
    from f2d_core.text.clip import tokenize
    tokens = tokenize(tokenizer, "a photo of f l at the beach")
    replaced = inject.replace_trigger(tokens, [325, 331], inject.trigger_token_ids(tokenizer, "person"))
    assert replaced == tokenize(tokenizer, "a photo of person at the beach")


@pytest.mark.parametrize("keys, family", [({"l"}, "SD1.x"), ({"g", "l"}, "SDXL"), ({"h"}, "SD2.x"),
                                          ({"g", "l", "t5xxl"}, "SD3"), ({"l", "t5xxl"}, "Flux")])
def test_clip_families_are_recognised(keys, family):
    assert clip_family(keys) == family


def test_sd1_and_sdxl_clips_are_families_and_others_get_a_plain_message():
    assert text_family({"l"}) is SD1 and text_family({"g", "l"}) is SDXL
    with pytest.raises(F2DError, match=r"works with SD1\.x checkpoints .* and SDXL-family ones .* this CLIP belongs "
                                       r"to SD3\. Load one of those"):
        text_family({"g", "l", "t5xxl"})


def test_errors_carry_a_short_module_for_hosts_that_print_module_and_class():
    from f2d_core.errors import NoFaceError
    from f2d_core.client.workflow import WorkflowError
    assert f"{NoFaceError.__module__}.{NoFaceError.__qualname__}" == "face2diffusion.NoFaceError"
    assert WorkflowError.__module__ == "face2diffusion" and issubclass(WorkflowError, F2DError)


def test_a_missing_expression_model_is_named_with_where_it_goes():
    """What Load Face2Diffusion Encoder says for each slot (nodes/paths.py weight_path)."""
    from f2d_core.weights.files import DEEP3D_URL, MAPPING_URL, where_to_get
    msg = where_to_get("deep3d", "/m/face2diffusion")
    assert msg == (f"Put epoch_20.pth (Deep3DFaceRecon's expression model, optional, from the Google Drive folders "
                   f"linked in the README of {DEEP3D_URL}) in /m/face2diffusion")
    assert "msid.pt" not in msg and "mapping.pt" not in msg
    assert where_to_get("mapping", "/m/face2diffusion") == (
        f"Put mapping.pt (the mapping network, from {MAPPING_URL}) in /m/face2diffusion")
