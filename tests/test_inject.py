"""Injection of S1*, S2* into ComfyUI-style token lists."""
import pytest
import torch

from f2d_core.text import inject
from f2d_core.text import clip as text_encoder
from f2d_core import TriggerError
from f2d_core.text.inject import BOS, EOS

F, L = 325, 331  # "f", "l"
POS = torch.randn(77, 768, generator=torch.Generator().manual_seed(0))
S1 = torch.randn(768, generator=torch.Generator().manual_seed(1))
S2 = torch.randn(768, generator=torch.Generator().manual_seed(2))


def chunk(ids, weight=1.0):
    row = [BOS] + list(ids) + [EOS] * (76 - len(ids))
    return [(t, weight) for t in row]


def tensor_slots(c):
    return [i for i, item in enumerate(c) if torch.is_tensor(item[0])]


def test_trigger_ids_of_the_default_trigger(tokenizer):
    assert inject.trigger_token_ids(tokenizer, "f l") == [F, L]
    assert inject.trigger_token_ids(tokenizer, "F L") == [F, L]  # CLIP lower-cases


def test_identity_vectors_carry_no_position_embedding():
    out = inject.inject_face({"l": [chunk([320, F, L, 2533])]}, [F, L], S1, S2, POS)
    c = out["l"][0]
    assert tensor_slots(c) == [2, 3]
    torch.testing.assert_close(c[2][0] + POS[2], S1)
    torch.testing.assert_close(c[3][0] + POS[3], S2)
    assert [t for t, _ in c[:2]] == [BOS, 320] and c[4][0] == 2533 and len(c) == 77


def test_the_input_is_not_modified():
    tokens = {"l": [chunk([F, L])]}
    inject.inject_face(tokens, [F, L], S1, S2, POS)
    assert tokens["l"][0][1][0] == F


def test_missing_trigger_shows_how_the_prompt_tokenized(tokenizer):
    tokens = text_encoder.tokenize(tokenizer, "a photo of fl person")
    with pytest.raises(TriggerError) as e:
        inject.inject_face(tokens, [F, L], S1, S2, POS, decode=tokenizer.convert_ids_to_tokens,
                           trigger_text="f l")
    msg = str(e.value)
    assert "'f l' was not found" in msg and "a | photo | of | fl | person" in msg


def test_every_occurrence_is_injected():
    out = inject.inject_face({"l": [chunk([F, L, 539, F, L])]}, [F, L], S1, S2, POS)
    assert tensor_slots(out["l"][0]) == [1, 2, 4, 5]
    torch.testing.assert_close(out["l"][0][5][0] + POS[5], S2)


def test_a_lone_f_elsewhere_is_not_mistaken_for_the_trigger():
    out = inject.inject_face({"l": [chunk([F, 539, F, L])]}, [F, L], S1, S2, POS)
    assert tensor_slots(out["l"][0]) == [3, 4]


def test_trigger_straddling_a_chunk_boundary_gets_each_slots_position():
    first = chunk([320] * 74 + [F])        # "f" is the 75th prompt token: slot 75
    second = chunk([L, 2533])              # "l" opens the next chunk: slot 1
    out = inject.inject_face({"l": [first, second]}, [F, L], S1, S2, POS)
    assert tensor_slots(out["l"][0]) == [75] and tensor_slots(out["l"][1]) == [1]
    torch.testing.assert_close(out["l"][0][75][0] + POS[75], S1)
    torch.testing.assert_close(out["l"][1][1][0] + POS[1], S2)
    assert [len(c) for c in out["l"]] == [77, 77]


def test_weights_and_word_ids_are_kept():
    c = [(BOS, 1.0, 0)] + [(F, 1.2, 1), (L, 1.2, 1), (2533, 1.0, 2)] + [(EOS, 1.0, 0)] * 73
    out = inject.inject_face({"l": [c]}, [F, L], S1, S2, POS)["l"][0]
    assert out[1][1:] == (1.2, 1) and out[2][1:] == (1.2, 1) and out[3] == (2533, 1.0, 2)


def test_a_one_token_trigger_grows_to_two_slots_and_the_chunk_stays_77():
    sks = 48136
    out = inject.inject_face({"l": [chunk([320, sks, 2533])]}, [sks], S1, S2, POS)["l"][0]
    assert len(out) == 77 and tensor_slots(out) == [2, 3]
    torch.testing.assert_close(out[3][0] + POS[3], S2)
    assert out[4][0] == 2533 and out[5][0] == EOS


def test_a_one_token_trigger_in_a_full_chunk_is_explained():
    with pytest.raises(TriggerError, match=r"fills its 75-token chunk.*two-word trigger"):
        inject.inject_face({"l": [chunk([320] * 74 + [48136])]}, [48136], S1, S2, POS, trigger_text="sks")


def test_a_longer_trigger_shrinks_to_two_slots():
    trig = [283, 5, 6, 7, 285]  # e.g. "<f2d>"
    out = inject.inject_face({"l": [chunk([320] + trig + [2533])]}, trig, S1, S2, POS)["l"][0]
    assert len(out) == 77 and tensor_slots(out) == [2, 3]
    assert out[4][0] == 2533 and all(t == EOS for t, _ in out[5:])


def test_two_identities_with_different_triggers():
    S3, S4 = S1 * 2, S2 * 2
    tokens = {"l": [chunk([F, L, 537, 1, 2, 3])]}
    once = inject.inject_face(tokens, [F, L], S1, S2, POS)
    twice = inject.inject_face(once, [1, 2], S3, S4, POS)["l"][0]
    assert tensor_slots(twice) == [1, 2, 4, 5]
    torch.testing.assert_close(twice[1][0] + POS[1], S1)
    torch.testing.assert_close(twice[4][0] + POS[4], S3)
    assert twice[6][0] == 3


def test_non_sd1_widths_and_token_lists_are_refused():
    with pytest.raises(TriggerError, match="SD1.x"):
        inject.inject_face({"l": [chunk([F, L])]}, [F, L], torch.zeros(1280), S2, POS)
    with pytest.raises(TriggerError, match="SD1.x"):
        inject.inject_face({"g": [chunk([F, L])]}, [F, L], S1, S2, POS)


def test_empty_trigger_is_refused(tokenizer):
    with pytest.raises(TriggerError, match="trigger is empty"):
        inject.trigger_token_ids(tokenizer, "  ")


def official_overwrite(model, chunks_ids, rows):
    """The official mechanism, independently: overwrite rows of token+position embeddings."""
    tt = text_encoder.text_transformer(model)

    def hook(_m, _i, out):
        out = out.clone()
        for (c, s), v in rows.items():
            out[c, s] = v
        return out

    h = tt.embeddings.register_forward_hook(hook)
    try:
        return tt(input_ids=torch.tensor(chunks_ids)).last_hidden_state.reshape(1, -1, 768)
    finally:
        h.remove()


def test_straddling_injection_encodes_like_the_official_overwrite(clip_text):
    first, second = chunk([320] * 74 + [F]), chunk([L, 2533])
    out = inject.inject_face({"l": [first, second]}, [F, L], S1, S2,
                             text_encoder.position_embedding(clip_text))
    ours = text_encoder.encode_token_chunks(clip_text, out["l"])
    ref = official_overwrite(clip_text, [[t for t, _ in first], [t for t, _ in second]],
                             {(0, 75): S1, (1, 1): S2})
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
