"""The paper's evaluation metrics (Appendix E.3, Eq. 10-14; §4.2; Fig. 7) on cases small enough
to compute by hand, and how missing columns travel through the per-image combination and the summary."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import TOKENIZER_DIR
from f2d_core.evaluate import metrics, report
from f2d_core.evaluate.scoring import PAPER_SIX, SCORE_COLUMNS, combine


# --- Eq. 10: identity ---------------------------------------------------------------------------

def test_eq10_identity_is_the_cosine_of_the_recogniser_features():
    assert metrics.identity_similarity([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    assert metrics.identity_similarity([3, 4], [6, 8]) == pytest.approx(1.0)  # scale does not matter


def test_eq10_identity_is_clipped_at_zero_for_unlike_faces():
    assert metrics.identity_similarity([1, 0], [-1, 1]) == 0.0  # cosine -0.707 -> 0
    assert metrics.identity_similarity([1, 0], [0, 1]) == 0.0


def test_eq10_identity_is_zero_when_no_face_is_detected():
    assert metrics.identity_similarity([1, 0], None) == 0.0


def test_a_zero_vector_has_cosine_zero_not_nan():
    assert metrics.cosine([0, 0], [1, 2]) == 0.0


# --- Eq. 11-14: text ----------------------------------------------------------------------------

def test_eq11_clip_is_the_cosine_of_image_and_prompt_clipped_at_zero():
    assert metrics.clip_score([1, 0, 0], [1, 1, 0]) == pytest.approx(1 / math.sqrt(2))
    assert metrics.clip_score([1, 0, 0], [-1, 1, 0]) == 0.0  # -0.707 -> 0


def test_eq12_13_dclip_compares_the_image_change_with_the_text_change():
    ref_img, ref_txt = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    # the image moved along +z, the text moved along +z: aligned
    assert metrics.directional_clip([1, 0, 2], ref_img, [0, 1, 3], ref_txt) == pytest.approx(1.0)
    # half aligned: image change (1, 0, 1), text change (0, 0, 1)
    assert metrics.directional_clip([2, 0, 1], ref_img, [0, 1, 1], ref_txt) == pytest.approx(1 / math.sqrt(2))
    # the image moved the other way: cos -1, clipped to 0 (Eq. 12's max(., 0))
    assert metrics.directional_clip([1, 0, -2], ref_img, [0, 1, 3], ref_txt) == 0.0
    # no change at all is 0, not NaN
    assert metrics.directional_clip(ref_img, ref_img, [0, 1, 1], ref_txt) == 0.0


def test_eq14_siglip_is_the_sigmoid_of_the_scaled_and_shifted_cosine():
    # cos([3, 4], [1, 0]) = 0.6; 10 * 0.6 - 5 = 1; sigmoid(1) = 0.7310585786
    assert metrics.siglip_score([3, 4], [1, 0], scale=10.0, bias=-5.0) == pytest.approx(0.7310585786)
    # SigLIP's usual learnt values (scale ~117, bias ~ -12.9): an unrelated pair is near 0
    assert metrics.siglip_score([1, 0], [0, 1], scale=117.33, bias=-12.93) == pytest.approx(1 / (1 + math.exp(12.93)))


# --- §4.2: hMean / gMean of the six -----------------------------------------------------------

def test_hmean_and_gmean_of_six_scores_by_hand():
    six = [0.5, 0.25, 0.5, 0.25, 1.0, 0.5]
    assert metrics.harmonic_mean(six) == pytest.approx(6 / (2 + 4 + 2 + 4 + 1 + 2))  # 0.4
    assert metrics.geometric_mean(six) == pytest.approx(2 ** (-7 / 6))  # (2^-7)^(1/6)


def test_one_failed_metric_zeroes_both_means_and_negatives_count_as_zero():
    assert metrics.harmonic_mean([0.9, 0.8, 0.0, 0.7, 0.6, 0.5]) == 0.0
    assert metrics.geometric_mean([0.9, 0.8, 0.7, -0.2, 0.6, 0.5]) == 0.0


def test_means_are_per_image_over_the_last_axis():
    rows = np.array([[0.5, 0.5], [0.25, 1.0]])
    np.testing.assert_allclose(metrics.harmonic_mean(rows), [0.5, 2 / (4 + 1)])
    np.testing.assert_allclose(metrics.geometric_mean(rows), [0.5, 0.5])


def test_scores_are_averaged_over_images_not_combined_from_the_averages():
    per_image = metrics.harmonic_mean(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert metrics.mean_of_per_image(per_image) == 0.0  # each image fails one side
    assert metrics.harmonic_mean([0.5, 0.5]) == 0.5  # what the means of the averages would say


def _row(**scores):
    return {c: scores.get(c) for c in SCORE_COLUMNS}


def _combine(**scores):
    return combine(_row(**scores), [c for c, v in scores.items() if v is not None])


def test_the_paper_hmean_needs_all_six_columns():
    full = _combine(adaface=0.5, sphereface=0.25, facenet=0.5, clip=0.25, dclip=1.0, siglip=0.5)
    assert full["hmean"] == pytest.approx(0.4) and full["gmean"] == pytest.approx(2 ** (-7 / 6))
    partial = _combine(arcface=0.5, dlib=0.5, clip=0.25, dclip=1.0)
    assert partial["hmean"] is None and partial["gmean"] is None  # never computed from substitutes
    assert partial["hmean_filled"] == pytest.approx(4 / (2 + 2 + 4 + 1))
    assert _combine(arcface=0.5, dlib=0.5)["hmean_filled"] is None  # no text side: no Identity x Text
    # a filled column without a value in this image (no reference image for dclip): no combination
    assert combine(_row(arcface=0.5, clip=0.25), ["arcface", "clip", "dclip"])["hmean_filled"] is None


# --- Fig. 7: the upper bound --------------------------------------------------------------------

def test_best_of_n_uses_the_n_of_fig_7_that_the_seeds_allow():
    assert metrics.best_of_ns(1) == [1]
    assert metrics.best_of_ns(4) == [1, 2, 4]
    assert metrics.best_of_ns(6) == [1, 2, 4]
    assert metrics.best_of_ns(16) == [1, 2, 4, 8, 16]
    assert metrics.best_of_ns(40) == [1, 2, 4, 8, 16]


def test_expected_best_of_n_by_hand():
    rank, value = [0.1, 0.4, 0.3], [10.0, 40.0, 30.0]
    assert metrics.expected_best_of_n(rank, value, 1) == pytest.approx(80 / 3)  # N=1 is the mean
    # pairs {1,2}->40, {1,3}->30, {2,3}->40
    assert metrics.expected_best_of_n(rank, value, 2) == pytest.approx(110 / 3)
    assert metrics.expected_best_of_n(rank, value, 3) == 40.0  # N=S is the best one
    # the reported value is that of the sample picked by rank, not the largest value
    assert metrics.expected_best_of_n([0.9, 0.1], [1.0, 5.0], 2) == 1.0


def test_expected_best_of_n_matches_enumerating_every_subset():
    from itertools import combinations
    rng = np.random.default_rng(0)
    rank, value = rng.random(6), rng.random(6)
    for n in (1, 2, 3, 6):
        subsets = list(combinations(range(6), n))
        brute = np.mean([value[max(s, key=lambda i: rank[i])] for s in subsets])
        assert metrics.expected_best_of_n(rank, value, n) == pytest.approx(brute)


def test_expected_best_of_n_rejects_impossible_n():
    with pytest.raises(ValueError, match="1 <= N <= 2"):
        metrics.expected_best_of_n([1, 2], [1, 2], 3)


# --- the summary: which model filled which column ---------------------------------------------

def _rows(seeds=2):
    rows = []
    for seed in range(seeds):
        r = combine({"face": "anna", "prompt_index": 0, "seed": seed, "no_face": "arcface" if seed else "",
                     **_row(arcface=0.2 + 0.4 * seed, dlib=0.5, clip=0.25, dclip=0.5)},
                    ["arcface", "dlib", "clip", "dclip"])
        rows.append(r)
    return rows


def test_summary_marks_columns_without_a_model_missing_and_names_the_others():
    columns = {"arcface": {"filled": True, "model": "ArcFace w600k_r50.onnx"},
               "adaface": {"filled": False, "missing": "no --adaface file given"}}
    s = report.summarize(_rows(), {}, columns)
    assert s["mean"]["adaface"] is None and s["mean"]["siglip"] is None and s["mean"]["hmean"] is None
    assert s["mean"]["arcface"] == pytest.approx(0.4)
    assert {"adaface", "sphereface", "facenet", "siglip", "hmean", "gmean"} <= set(s["missing"])
    assert s["columns"]["adaface"]["missing"] == "no --adaface file given"
    assert s["columns"]["combined"] == {"hmean_gmean": None,
                                        "hmean_filled_gmean_filled": ["arcface", "dlib", "clip", "dclip"]}
    assert s["detection_rate"] == {"arcface": 0.5}  # the second image had no face for ArcFace


def test_the_upper_bound_ranks_by_hmean_filled_when_the_paper_hmean_is_missing():
    ub = report.upper_bound(_rows(), ["arcface", "hmean_filled"])
    assert ub["rank_by"] == "hmean_filled" and ub["n"] == [1, 2]
    assert ub["arcface"][1] == pytest.approx(0.6)  # seed 1 has the better hmean_filled: its arcface 0.6


def test_results_csv_leaves_missing_cells_empty(tmp_path):
    import csv
    rows = [{**r, "prompt": "p", "file": "f.png", "face_found": True} for r in _rows(1)]
    report.write_csv(rows, tmp_path / "r.csv")
    got = next(csv.DictReader(open(tmp_path / "r.csv")))
    assert got["adaface"] == "" and got["hmean"] == "" and got["arcface"] == "0.200000"


def test_every_paper_column_has_a_definition_with_its_equation():
    for column, eq in (("adaface", "Eq. 10"), ("sphereface", "Eq. 10"), ("facenet", "Eq. 10"),
                       ("clip", "Eq. 11"), ("dclip", "Eq. 12-13"), ("siglip", "Eq. 14"), ("upper_bound", "Fig. 7")):
        assert eq in report.DEFINITIONS[column]
    assert set(PAPER_SIX) == {"adaface", "sphereface", "facenet", "clip", "dclip", "siglip"}


# --- the text models: CLIP architecture, SigLIP's own scale and bias ---------------------------

def test_the_clip_report_says_whether_the_model_is_the_papers_vit_h14():
    from types import SimpleNamespace as C
    from f2d_core.evaluate.clip_score import clip_architecture
    assert clip_architecture(C(hidden_size=1280, num_hidden_layers=32, patch_size=14)) == "ViT-H/14"
    assert clip_architecture(C(hidden_size=1024, num_hidden_layers=24, patch_size=14)) == "ViT-L/14"
    assert clip_architecture(C(hidden_size=32, num_hidden_layers=2, patch_size=8)) == "ViT-32w2/8"


def save_tiny_siglip(folder, seed=0):
    """A random SiglipModel with non-trivial logit scale and bias, a 32 px image processor and the
    SD1 CLIP tokenizer (SigLIP's own sentencepiece model is not in the shared folder)."""
    import torch
    from transformers import CLIPTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel
    config = SiglipConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(-1.5)
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(folder)
    return folder


def test_eq14_siglip_score_equals_the_models_own_sigmoid_logit(tmp_path):
    """The score from the embedder's towers, scale and bias is sigmoid of SiglipModel's own
    logits_per_image for the same inputs: the scale and bias are the checkpoint's."""
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"SD1 CLIP tokenizer files not found at {TOKENIZER_DIR}")
    import torch
    from f2d_core.evaluate.clip_score import SiglipEmbedder
    siglip = SiglipEmbedder(save_tiny_siglip(tmp_path / "siglip"))
    assert siglip.scale == pytest.approx(7.0) and siglip.bias == pytest.approx(-1.5)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    text = "a photo of a person as a chef"
    ours = metrics.siglip_score(siglip.images([image])[0], siglip.texts([text])[0], siglip.scale, siglip.bias)
    tok = siglip.tokenizer([text], return_tensors="pt", padding="max_length", truncation=True, max_length=16)
    px = siglip.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logit = siglip.model(input_ids=tok["input_ids"], pixel_values=px).logits_per_image[0, 0]
    assert ours == pytest.approx(float(torch.sigmoid(logit)), abs=1e-6)


def test_a_siglip_folder_without_config_says_what_a_siglip_folder_holds(tmp_path):
    from f2d_core.errors import ModelFilesMissing
    from f2d_core.evaluate.clip_score import SiglipEmbedder
    with pytest.raises(ModelFilesMissing, match="has no config.json.*SiglipModel.*Nothing is downloaded"):
        SiglipEmbedder(tmp_path)
