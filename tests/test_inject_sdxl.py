"""SDXL's two text encoders: the identity goes into both token streams at the trigger, each part
minus its own encoder's position embedding, with each stream's own padding (the engine, no host).

Token lists are built here as ComfyUI's SDXLTokenizer builds them: the same ids in `l` and `g`
(one vocabulary), `l` padded with EOS, `g` with 0 (comfy/sdxl_clip.py, pad_with_end=False)."""
import pytest
import torch

from f2d_core import F2DError, TriggerError
from f2d_core.models.families import SD1, SDXL
from f2d_core.text import inject
from f2d_core.text.inject import BOS, EOS
from f2d_core.text.prompt import Subject, build_face_prompt

F, L = 325, 331
G_PAD = 0
POS = {"l": torch.randn(77, 768, generator=torch.Generator().manual_seed(0)),
       "g": torch.randn(77, 1280, generator=torch.Generator().manual_seed(1))}
S1 = torch.randn(2048, generator=torch.Generator().manual_seed(2))
S2 = torch.randn(2048, generator=torch.Generator().manual_seed(3))


def stream_chunk(ids, pad, weights=None):
    weights = weights or [1.0] * len(ids)
    body = [(BOS, 1.0)] + list(zip(ids, weights)) + [(EOS, 1.0)]
    return body + [(pad, 1.0)] * (77 - len(body))


def sdxl_tokens(*chunks_ids, weights=None):
    return {"g": [stream_chunk(ids, G_PAD, weights) for ids in chunks_ids],
            "l": [stream_chunk(ids, EOS, weights) for ids in chunks_ids]}


def sdxl_prompt_tokens(tokenizer, text):
    ids = [t for t in tokenizer(text)["input_ids"] if t not in (BOS, EOS)]
    return sdxl_tokens(*[ids[i:i + 75] for i in range(0, max(len(ids), 1), 75)])


def vector_slots(chunk):
    return [i for i, item in enumerate(chunk) if torch.is_tensor(item[0])]


def test_each_stream_gets_its_part_of_the_word_minus_its_own_position_embedding():
    out = inject.inject_family(sdxl_tokens([320, F, L, 2533]), SDXL, [F, L], S1, S2, POS)
    for key, part in (("l", slice(0, 768)), ("g", slice(768, 2048))):
        c = out[key][0]
        assert vector_slots(c) == [2, 3] and len(c) == 77
        torch.testing.assert_close(c[2][0] + POS[key][2], S1[part])
        torch.testing.assert_close(c[3][0] + POS[key][3], S2[part])
        assert c[4][0] == 2533 and c[5][0] == EOS
    assert {t for t, _ in out["l"][0][6:]} == {EOS} and {t for t, _ in out["g"][0][6:]} == {G_PAD}


def test_a_trigger_shrinking_in_a_full_chunk_pads_each_stream_with_its_own_pad():
    three = [F, L, 539]  # a three-token trigger becomes the two identity slots
    full = sdxl_tokens([320] * 72 + three)
    assert all(len(c[0]) == 77 and c[0][-1][0] == EOS for c in full.values())  # no padding at all
    out = inject.inject_family(full, SDXL, three, S1, S2, POS)
    assert [t for t, _ in out["l"][0][-2:]] == [EOS, EOS]
    assert [t for t, _ in out["g"][0][-2:]] == [EOS, G_PAD]
    assert vector_slots(out["g"][0]) == vector_slots(out["l"][0]) == [73, 74]


def test_a_trigger_straddling_chunks_gets_each_slots_position_in_both_streams():
    out = inject.inject_family(sdxl_tokens([320] * 74 + [F], [L, 2533]), SDXL, [F, L], S1, S2, POS)
    for key, part in (("l", slice(0, 768)), ("g", slice(768, 2048))):
        first, second = out[key]
        torch.testing.assert_close(first[75][0] + POS[key][75], S1[part])
        torch.testing.assert_close(second[1][0] + POS[key][1], S2[part])


def test_prompt_weights_stay_on_the_trigger_slots_of_both_streams():
    out = inject.inject_family(sdxl_tokens([320, F, L], weights=[1.0, 1.2, 1.2]), SDXL, [F, L], S1, S2, POS)
    for key in "gl":
        assert [w for _, w in out[key][0][:5]] == [1.0, 1.0, 1.2, 1.2, 1.0]


def test_sd1_words_into_sdxl_streams_are_refused_naming_the_widths():
    with pytest.raises(TriggerError, match=r"s1 has 768 values, but an identity word for SDXL has 2048 = "
                                           r"768 \(l\) \+ 1280 \(g\)"):
        inject.inject_family(sdxl_tokens([F, L]), SDXL, [F, L], S1[:768], S2[:768], POS)


def test_a_missing_trigger_shows_the_prompt_once(tokenizer):
    with pytest.raises(TriggerError, match=r"'f l' was not found .* a \| photo \| of \| fl \| person\. Write"):
        inject.inject_family(sdxl_prompt_tokens(tokenizer, "a photo of fl person"), SDXL, [F, L], S1, S2, POS,
                             decode=tokenizer.convert_ids_to_tokens, trigger_text="f l")


def subject(value, trigger="f l", label="face", family=SDXL):
    w = family.token_width
    return Subject(torch.full((w,), float(value)), torch.full((w,), float(value) + 0.5), trigger, label, family)


ZERO_POS = {"l": torch.zeros(77, 768), "g": torch.zeros(77, 1280)}  # the injected vectors are S* themselves


def test_an_sdxl_prompt_puts_two_people_into_both_streams(tokenizer):
    tokens = sdxl_prompt_tokens(tokenizer, "f l and g k at the beach")
    p = build_face_prompt(tokens, tokenizer, [subject(1), subject(3, "g k", "face_2")], ZERO_POS)
    for key, width in (("l", 768), ("g", 1280)):
        chunk = p.identity[key][0]
        assert [tuple(chunk[i][0].shape) for i in (1, 2, 4, 5)] == [(width,)] * 4
        assert [float(chunk[i][0][0]) for i in (1, 2, 4, 5)] == [1.0, 1.5, 3.0, 3.5]


def test_below_full_strength_the_class_word_replaces_the_trigger_in_both_streams(tokenizer):
    p = build_face_prompt(sdxl_prompt_tokens(tokenizer, "a photo of f l"), tokenizer, [subject(1)], ZERO_POS,
                          strength=0.5)
    assert p.reference == sdxl_prompt_tokens(tokenizer, "a photo of person")


@pytest.mark.parametrize("face_family, clip_tokens, clip_label", [
    (SD1, lambda t: sdxl_prompt_tokens(t, "a photo of f l"), "SDXL"),
    (SDXL, lambda t: {"l": sdxl_prompt_tokens(t, "a photo of f l")["l"]}, "SD1.x"),
])
def test_a_face_of_one_family_with_the_clip_of_the_other_names_both(tokenizer, face_family, clip_tokens, clip_label):
    with pytest.raises(F2DError, match=rf"face: its identity tokens were made by an {face_family.label} mapping "
                                       rf"network, which works with {face_family.label} checkpoints only, but this "
                                       rf"CLIP belongs to {clip_label}\. Connect the CLIP of an {face_family.label} "
                                       rf"checkpoint, or load an {clip_label} mapping"):
        build_face_prompt(clip_tokens(tokenizer), tokenizer, [subject(1, family=face_family)], ZERO_POS)
