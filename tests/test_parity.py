"""Parity with the official Face2Diffusion code through the public API (../shared/parity).

Weights are regenerated from the recipe; every tensor must match at atol 1e-4."""
import numpy as np
import pytest
import torch

from f2d_core import to_pixels
from f2d_core.faces import align
from f2d_core.text import inject
from f2d_core.text import clip as text_encoder

ATOL = 1e-4


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), atol=ATOL, rtol=0)


def test_recipe_reproduces_the_kits_weights_on_this_machine(recipe, parity):
    E, J = parity
    for kind in ("msid", "mapping"):
        assert recipe.digest(recipe.make_state_dict(kind, J["seed"])) == J["recipe_digests"][kind]


def test_68_to_5_landmark_reduction(parity):
    E, _ = parity
    close(align.landmarks68_to_5(E["align.landmarks68"].numpy()), E["align.landmarks5"])


def test_similarity_matrix_matches_official(parity):
    E, _ = parity
    _, M = align.align_face(E["align.source_image_uint8"].numpy(), E["align.landmarks5"].numpy())
    close(M, E["align.M"])


# The warp is bilinear resampling, where exact float arithmetic and OpenCV's 1/32-pixel fixed
# point (whose rounding changed in 5.1) disagree by one level on a handful of pixels. Measured on
# this image: ours 4 values off by 1, OpenCV 5.1 5 values, OpenCV 5.0 none (of 37,632).
WARP_LSB = 1
WARP_MAX_FRACTION = 0.01


def assert_within_one_level(actual, expected):
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= WARP_LSB, f"warp differs by {diff.max()} levels"
    assert (diff > 0).mean() < WARP_MAX_FRACTION, f"{(diff > 0).mean():.2%} of the values differ"


def test_warp_matches_the_official_within_one_level_given_its_matrix(parity):
    E, _ = parity
    warped = align.warp(E["align.source_image_uint8"].numpy(), E["align.M"].numpy())
    assert_within_one_level(warped, E["align.warped_uint8"].numpy())


def test_full_alignment_from_68_landmarks_within_one_level(parity):
    E, _ = parity
    l5 = align.landmarks68_to_5(E["align.landmarks68"].numpy())
    aligned, _ = align.align_face(E["align.source_image_uint8"].numpy(), l5)
    assert_within_one_level(aligned, E["align.warped_uint8"].numpy())


def test_pixels_are_rgb_in_minus_one_one(parity):
    E, _ = parity
    close(to_pixels(E["align.warped_uint8"].numpy()), E["input.pixel_values"])


def test_msid_features(parity, encoder):
    E, _ = parity
    close(encoder.identity_features(E["input.pixel_values"]), E["msid.features"])


# One-level flips on 4 of 37,632 warped values move the features by 2.2e-4 here (OpenCV 5.1's
# own warp: 2.7e-4; the kit saw 4.5e-4 for float64 landmarks). Everything after the warp is
# ours and held to ATOL above; through the warp the bound is 1e-3, about twice the worst seen.
END_TO_END_ATOL = 1e-3


def test_msid_features_from_the_source_image_end_to_end(parity, encoder):
    E, _ = parity
    aligned, _ = align.align_face(E["align.source_image_uint8"].numpy(),
                                  align.landmarks68_to_5(E["align.landmarks68"].numpy()))
    torch.testing.assert_close(encoder.identity_features(to_pixels(aligned)), E["msid.features"],
                               atol=END_TO_END_ATOL, rtol=0)


def test_tokens_with_the_learned_null_expression(parity, encoder):
    E, _ = parity
    s1, s2 = encoder.face_tokens(E["msid.features"])
    close(s1, E["map.tokens_uncond_first"])
    close(s2, E["map.tokens_uncond_last"])


def test_tokens_with_an_expression_vector(parity, encoder):
    E, _ = parity
    s1, s2 = encoder.face_tokens(E["msid.features"].repeat(2, 1), E["map.exp_vector"])
    close(s1, E["map.tokens_cond_first"])
    close(s2, E["map.tokens_cond_last"])


def test_tokens_with_an_expression_mask(parity, encoder):
    E, _ = parity
    s1, s2 = encoder.face_tokens(E["msid.features"].repeat(2, 1), E["map.exp_vector"], E["map.exp_mask"])
    close(s1, E["map.tokens_masked_first"])
    close(s2, E["map.tokens_masked_last"])


@pytest.mark.parametrize("name", ["demo", "late"])
def test_injected_conditioning_equals_official_prompt_embeds(parity, encoder, tokenizer, clip_text, name):
    E, J = parity
    prompt = J["prompts"][name]["prompt"]
    tokens = text_encoder.tokenize(tokenizer, prompt)
    ids = torch.tensor([t for t, _ in tokens["l"][0]])
    assert torch.equal(ids, E[f"text.{name}.input_ids"][0])
    s1, s2 = encoder.face_tokens(encoder.identity_features(E["input.pixel_values"]))
    injected = inject.inject_face(tokens, inject.trigger_token_ids(tokenizer, "f l"), s1, s2,
                                  text_encoder.position_embedding(clip_text))
    assert [i for i, item in enumerate(injected["l"][0]) if torch.is_tensor(item[0])] == \
        [int(E[f"text.{name}.pos_id"]), int(E[f"text.{name}.pos_id"]) + 1]
    close(text_encoder.encode_token_chunks(clip_text, injected["l"]), E[f"text.{name}.prompt_embeds"])


def test_negative_prompt_is_plain_encoding(parity, tokenizer, clip_text):
    E, _ = parity
    tokens = text_encoder.tokenize(tokenizer, "")
    close(text_encoder.encode_token_chunks(clip_text, tokens["l"]), E["text.negative.prompt_embeds"])


def test_identity_vectors_without_position_correction_would_miss(parity, tokenizer, clip_text):
    """Guards the subtle point: S* replaces token+position embeddings, so inserting S* as a
    plain token embedding (position added on top) must be measurably wrong."""
    E, J = parity
    tokens = text_encoder.tokenize(tokenizer, J["prompts"]["demo"]["prompt"])
    wrong = inject.inject_face(tokens, [325, 331], E["map.tokens_uncond_first"], E["map.tokens_uncond_last"],
                               torch.zeros(77, 768))
    err = (text_encoder.encode_token_chunks(clip_text, wrong["l"]) - E["text.demo.prompt_embeds"]).abs().max()
    assert err > 1e-2
