"""Alignment: the similarity fit against scikit-image, the warp, and the image forms accepted."""
import numpy as np
import pytest
import torch

from f2d_core import to_pixels
from f2d_core.faces import align
from f2d_core import F2DError
from f2d_core.faces.images import to_rgb_uint8


def random_face_points(rng):
    """Five template points moved by a random similarity plus landmark noise, as float32."""
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 6.0)
    R = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = align.ARCFACE_TEMPLATE @ R.T + rng.uniform(-200, 800, 2) + rng.normal(0, 2.0, (5, 2))
    return pts.astype(np.float32)


def test_similarity_matches_scikit_image_on_float32_points():
    from skimage.transform import SimilarityTransform
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(200):
        pts = random_face_points(rng)
        t = SimilarityTransform()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # estimate() is deprecated in skimage 0.26 but is the reference
            t.estimate(pts, align.ARCFACE_TEMPLATE)
        worst = max(worst, np.abs(align.similarity_matrix(pts) - t.params).max())
    assert worst < 1e-5


def test_fit_is_a_rotation_never_a_reflection():
    mirrored = align.ARCFACE_TEMPLATE * np.array([-1, 1], np.float32) + np.array([200, 0], np.float32)
    M = align.similarity_matrix(mirrored)
    assert np.linalg.det(M[:2, :2]) > 0


def test_exact_template_points_give_the_identity():
    np.testing.assert_allclose(align.similarity_matrix(align.ARCFACE_TEMPLATE), np.eye(3), atol=1e-5)


def test_degenerate_landmarks_are_reported():
    with pytest.raises(F2DError, match="degenerate"):
        align.similarity_matrix(np.full((5, 2), 10.0))


def test_wrong_landmark_shapes_are_reported():
    with pytest.raises(F2DError, match=r"68 \(x, y\) landmarks"):
        align.landmarks68_to_5(np.zeros((5, 2)))
    with pytest.raises(F2DError, match=r"expected 5 \(x, y\) landmarks"):
        align.similarity_matrix(np.zeros((4, 2)))


def test_warp_has_a_black_border_outside_the_image():
    img = np.full((50, 50, 3), 200, np.uint8)
    M = np.eye(3)
    out = align.warp(img, M)
    assert out.shape == (112, 112, 3)
    assert (out[:49, :49] == 200).all() and (out[60:, 60:] == 0).all()


def test_comfyui_float_images_align_like_uint8(parity):
    E, _ = parity
    u8 = E["align.source_image_uint8"].numpy()
    l5 = E["align.landmarks5"].numpy()
    as_float = torch.from_numpy(u8).float()[None] / 255.0  # ComfyUI IMAGE [1, H, W, 3]
    assert np.array_equal(align.align_face(as_float, l5)[0], align.align_face(u8, l5)[0])


def test_gray_and_rgba_are_converted_not_rejected():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_uint8(rgba), rgb)
    gray = rgb[:, :, 0]
    assert np.array_equal(to_rgb_uint8(gray), np.repeat(gray[:, :, None], 3, 2))
    assert np.array_equal(to_rgb_uint8(gray[:, :, None].astype(np.float32) / 255), np.repeat(gray[:, :, None], 3, 2))


def test_float_pixels_round_to_the_nearest_level():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    assert np.array_equal(to_rgb_uint8(levels.astype(np.float32) / 255.0), levels)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 10, 10, 3)), r"shape \(2, 10, 10, 3\)"),
    (np.zeros((10, 10, 2)), r"shape \(10, 10, 2\)"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.full((4, 4, 3), 300, np.int32), "0..255"),
])
def test_unusable_images_are_explained(bad, match):
    with pytest.raises(F2DError, match=match):
        to_rgb_uint8(bad, "photo.png")


def test_to_pixels_refuses_unaligned_input():
    with pytest.raises(F2DError, match=r"\(112, 112, 3\).*Align the face first"):
        to_pixels(np.zeros((100, 100, 3), np.uint8))


def test_to_pixels_batches():
    crops = np.zeros((3, 112, 112, 3), np.uint8)
    crops[1] = 255
    px = to_pixels(crops)
    assert px.shape == (3, 3, 112, 112) and px.dtype == torch.float32
    assert px[0].eq(-1).all() and px[1].eq(1).all()
