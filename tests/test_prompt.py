"""Prompt building for Inject Face Token, without a host: people, triggers, class word, strength."""
import pytest
import torch

from f2d_core import F2DError, TriggerError
from f2d_core.text import clip as text_encoder
from f2d_core.text.inject import EOS
from f2d_core.text.prompt import FacePrompt, Subject, build_face_prompt

WIDTH = 768


def subject(value, trigger="f l", label="face"):
    return Subject(torch.full((WIDTH,), float(value)), torch.full((WIDTH,), float(value) + 0.5), trigger, label)


def ids(tokens):
    return [t if isinstance(t, int) else "S" for t, *_ in tokens["l"][0]]


def prompt(tokenizer, text, *subjects, strength=1.0, class_word="person"):
    position = torch.zeros(77, WIDTH)  # zero table: the injected vectors are S1*, S2* themselves
    return build_face_prompt(text_encoder.tokenize(tokenizer, text), tokenizer, subjects, position, strength,
                             class_word)


def test_full_strength_puts_both_tokens_in_the_trigger_and_encodes_once(tokenizer):
    p = prompt(tokenizer, "a photo of f l", subject(1))
    assert p.reference is None
    chunk = p.identity["l"][0]
    assert ids(p.identity)[:7] == [49406, 320, 1125, 539, "S", "S", EOS]
    assert torch.equal(chunk[4][0], torch.full((WIDTH,), 1.0)) and torch.equal(chunk[5][0], torch.full((WIDTH,), 1.5))
    calls = []
    assert p.encode(lambda t: calls.append(t) or "cond") == "cond" and len(calls) == 1


def test_zero_strength_is_the_class_word_prompt_only(tokenizer):
    p = prompt(tokenizer, "a photo of f l", subject(1), strength=0.0)
    assert p.identity is None
    person = tokenizer("person")["input_ids"][1]
    assert ids(p.reference)[:7] == [49406, 320, 1125, 539, person, EOS, EOS]


def test_partial_strength_blends_the_identity_and_class_encodings_linearly(tokenizer):
    p = prompt(tokenizer, "a photo of f l", subject(1), strength=0.25)
    assert p.identity is not None and p.reference is not None

    def encode(tokens):
        value = 4.0 if tokens is p.identity else 0.0
        return [[torch.full((1, 77, WIDTH), value), {"pooled_output": torch.full((1, WIDTH), value)}]]

    out = p.encode(encode)
    assert out[0][0].eq(1.0).all() and out[0][1]["pooled_output"].eq(1.0).all()


def test_two_people_each_take_their_own_trigger(tokenizer):
    p = prompt(tokenizer, "f l and g k at the beach", subject(1), subject(3, "g k", "face_2"))
    chunk = p.identity["l"][0]
    assert [float(chunk[i][0][0]) for i in (1, 2, 4, 5)] == [1.0, 1.5, 3.0, 3.5]


def test_two_people_with_the_same_trigger_are_refused(tokenizer):
    with pytest.raises(F2DError, match="face and face_2 use the same trigger 'f l'"):
        prompt(tokenizer, "f l and f l", subject(1), subject(2, "F L ", "face_2"))


def test_a_missing_trigger_names_the_trigger_and_shows_the_tokens(tokenizer):
    with pytest.raises(TriggerError, match=r"the trigger 'g k' was not found in the prompt. The prompt tokenized as"):
        prompt(tokenizer, "f l alone", subject(1), subject(2, "g k", "face_2"))


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_zero_one_is_refused(tokenizer, strength):
    with pytest.raises(F2DError, match=r"identity_strength must lie in \[0, 1\]"):
        prompt(tokenizer, "a photo of f l", subject(1), strength=strength)


def test_an_empty_class_word_is_refused_below_full_strength(tokenizer):
    with pytest.raises(F2DError, match="class_word is empty"):
        prompt(tokenizer, "a photo of f l", subject(1), strength=0.5, class_word=" ")
    assert isinstance(prompt(tokenizer, "a photo of f l", subject(1), class_word=""), FacePrompt)


def test_non_sd1_token_lists_are_refused(tokenizer):
    tokens = {"g": [], "l": []}
    with pytest.raises(F2DError, match="this CLIP belongs to SDXL"):
        build_face_prompt(tokens, tokenizer, [subject(1)], torch.zeros(77, WIDTH))
