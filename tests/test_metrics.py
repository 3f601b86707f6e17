"""The evaluation metrics on cases small enough to compute by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from f2d_core.evaluate import metrics


def test_identity_similarity_is_the_cosine_of_the_embeddings():
    assert metrics.identity_similarity([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    assert metrics.identity_similarity([3, 4], [6, 8]) == pytest.approx(1.0)  # scale does not matter


def test_identity_similarity_is_clipped_to_zero_for_opposite_faces():
    assert metrics.identity_similarity([1, 0], [-1, 1]) == 0.0  # cosine -0.707 -> 0
    assert metrics.identity_similarity([1, 0], [0, 1]) == 0.0


def test_identity_similarity_is_zero_when_no_face_was_found():
    assert metrics.identity_similarity([1, 0], None) == 0.0


def test_a_zero_vector_has_cosine_zero_not_nan():
    assert metrics.cosine([0, 0], [1, 2]) == 0.0


def test_harmonic_and_geometric_means_per_image():
    identity, text = np.array([0.6, 0.5, 0.0, 0.8]), np.array([0.3, 0.5, 0.4, -0.2])
    np.testing.assert_allclose(metrics.harmonic_mean(identity, text), [2 * 0.18 / 0.9, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(metrics.geometric_mean(identity, text), [math.sqrt(0.18), 0.5, 0.0, 0.0])


def test_means_are_averaged_over_images_not_computed_from_the_averages():
    identity, text = [1.0, 0.0], [0.0, 1.0]
    per_image = metrics.mean_of_per_image(metrics.harmonic_mean(identity, text))
    assert per_image == 0.0  # each image fails one side
    assert float(metrics.harmonic_mean(np.mean(identity), np.mean(text))) == 0.5  # what it must not be


def test_clip_scores_are_cosines():
    assert metrics.clip_score([1, 0, 0], [1, 1, 0]) == pytest.approx(1 / math.sqrt(2))
    assert metrics.clip_image_score([0, 2], [0, 5]) == pytest.approx(1.0)


def test_directional_clip_compares_the_image_change_with_the_text_change():
    ref_img, ref_txt = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    # the image moved along +z, the text moved along +z: aligned
    assert metrics.directional_clip([1, 0, 2], ref_img, [0, 1, 3], ref_txt) == pytest.approx(1.0)
    # the image moved the other way
    assert metrics.directional_clip([1, 0, -2], ref_img, [0, 1, 3], ref_txt) == pytest.approx(-1.0)
    # half aligned: image change (1, 0, 1), text change (0, 0, 1)
    assert metrics.directional_clip([2, 0, 1], ref_img, [0, 1, 1], ref_txt) == pytest.approx(1 / math.sqrt(2))
    # no change at all is 0, not NaN
    assert metrics.directional_clip(ref_img, ref_img, [0, 1, 1], ref_txt) == 0.0


def test_best_of_ns_are_powers_of_two_and_the_total():
    assert metrics.best_of_ns(1) == [1]
    assert metrics.best_of_ns(4) == [1, 2, 4]
    assert metrics.best_of_ns(6) == [1, 2, 4, 6]


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
