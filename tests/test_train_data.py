"""Training samples: the FFHQ crop, landmark masks, flips, the data order, the face index."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import synthetic_onnx as om
import tiny_train as tt
from f2d_core.errors import F2DError
from f2d_core.train.crops import ffhq_quad, sd_crop_matrix, transform_points, warp
from f2d_core.train.data import FaceDataset, SampleStream, build_index
from f2d_core.train.masks import landmark_mask

# an upright face: eyes 40 px apart at y=100, mouth 48 px below the eyes
UPRIGHT = np.array([[80, 100], [120, 100], [100, 125], [84, 148], [116, 148]], np.float32)


def test_ffhq_quad_of_an_upright_face():
    q = ffhq_quad(UPRIGHT)
    # side = 2 * max(2 * eye distance, 1.8 * eye-to-mouth) = 2 * max(80, 86.4); centre = eyes + 0.1 * eye-to-mouth
    side, centre = 2 * 86.4, np.array([100, 100 + 4.8])
    np.testing.assert_allclose(q, [centre + [-side / 2, -side / 2], centre + [-side / 2, side / 2],
                                   centre + [side / 2, side / 2], centre + [side / 2, -side / 2]], atol=1e-4)


def test_sd_crop_puts_the_face_where_ffhq_does_whatever_the_rotation():
    size = 64
    m = sd_crop_matrix(UPRIGHT, size)
    eyes = transform_points(UPRIGHT[:2], m)
    # eye centre at x = size/2; eyes at 0.5 - 4.8/172.8 of the height (pixel centres at +0.5)
    assert eyes.mean(0)[0] + 0.5 == pytest.approx(size / 2, abs=1e-4)
    assert eyes.mean(0)[1] + 0.5 == pytest.approx(size * (0.5 - 4.8 / 172.8), abs=1e-4)
    rot = cv2.getRotationMatrix2D((100, 100), 30, 1.0)
    m_rot = sd_crop_matrix(transform_points(UPRIGHT, rot), size)
    np.testing.assert_allclose(transform_points(transform_points(UPRIGHT, rot), m_rot),
                               transform_points(UPRIGHT, m), atol=1e-3)


def test_warp_of_a_rotated_photo_gives_the_same_crop():
    img, lm = tt.face_image(3, 200, face=0.5)
    a = warp(img, sd_crop_matrix(lm, 64), 64)
    rot = cv2.getRotationMatrix2D((100, 100), 25, 1.0)
    img_r = cv2.warpAffine(img, rot, (200, 200), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    b = warp(img_r, sd_crop_matrix(transform_points(lm, rot), 64), 64)
    assert np.abs(a.astype(int) - b.astype(int))[8:-8, 8:-8].mean() < 6  # interpolation differences only


def test_large_reductions_are_antialiased():
    img = np.zeros((1024, 1024, 3), np.uint8)
    img[:, ::2] = 255  # finest possible stripes: any crop far smaller must come out uniform grey
    lm = UPRIGHT * 5
    out = warp(img, sd_crop_matrix(lm, 64), 64)
    assert out.std() < 8 and abs(out.mean() - 127.5) < 8


@pytest.mark.parametrize("with68", [False, True])
def test_landmark_mask_covers_the_face_and_not_the_corners(with68):
    l68 = None
    if with68:  # a face-like 68-point layout around UPRIGHT
        l68 = np.zeros((68, 2), np.float32)
        a = np.linspace(np.pi * 0.95, np.pi * 0.05, 17)
        l68[:17] = np.stack([100 - 45 * np.cos(a), 105 + 60 * np.sin(a)], 1)  # jaw, ear to ear under the face
        l68[17:27] = np.stack([np.linspace(70, 130, 10), np.full(10, 88)], 1)
        l68[36:42], l68[42:48] = UPRIGHT[0], UPRIGHT[1]
        l68[30], l68[48], l68[54] = UPRIGHT[2], UPRIGHT[3], UPRIGHT[4]
    m = sd_crop_matrix(UPRIGHT, 64)
    mask = landmark_mask(UPRIGHT, l68, m, 64)
    for x, y in np.round(transform_points(UPRIGHT, m)).astype(int):
        assert mask[y, x] == 1
    assert mask[:4, :4].sum() == 0 and mask[-4:, -4:].sum() == 0
    assert 0.15 < mask.mean() < 0.6


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    marks = tt.write_faces(d / "img", 3, 96)
    return d / "img", tt.write_landmarks(d / "lm.json", marks)


def test_a_flipped_sample_is_the_mirror_of_every_crop(faces):
    root, lm = faces
    ds = FaceDataset(root, build_index(root, landmarks_file=lm), size=64, expression_crops=True)
    a, b = ds[(1, False)], ds[(1, True)]
    for k in ("sd", "id", "mask", "exp"):
        assert torch.equal(b[k], a[k].flip(-1)), k
    assert a["sd"].shape == (3, 64, 64) and a["id"].shape == (3, 112, 112) and a["exp"].shape == (3, 224, 224)
    assert a["sd"].dtype == torch.uint8 and a["mask"].shape == (1, 64, 64)


def test_the_msid_crop_is_the_engines_alignment(faces):
    from f2d_core.faces.align import align_face
    root, lm = faces
    rec = build_index(root, landmarks_file=lm)[0]
    img = np.asarray(Image.open(os.path.join(root, rec.path)).convert("RGB"))
    want = align_face(img, rec.landmarks5)[0]
    assert np.array_equal(FaceDataset(root, [rec], 64)[0]["id"].permute(1, 2, 0).numpy(), want)


def test_sample_order_is_a_function_of_the_sample_number():
    s = SampleStream(5, seed=3)
    first = [s.item(k) for k in range(15)]
    for e in range(3):
        assert sorted(i for i, _ in first[5 * e:5 * e + 5]) == list(range(5))  # each epoch: every photo once
    assert first[:5] != first[5:10]  # reshuffled per epoch
    assert [SampleStream(5, seed=3).item(k) for k in range(15)] == first
    it = s.batches(start=6, batch=3)
    assert next(it) == first[6:9] and next(it) == first[9:12]  # resuming at sample 6 continues the same stream
    assert {f for _, f in first} == {True, False}
    assert not any(f for _, f in [SampleStream(5, 3, flip=False).item(k) for k in range(15)])


def test_index_detects_once_and_caches(tmp_path, caplog):
    from f2d_core.faces.detect import FaceDetector
    det = FaceDetector(om.save(om.scrfd_model(), tmp_path / "det_10g.onnx"), device="cpu")
    calls = []

    class Counting:
        def detect(self, image, name):
            calls.append(name)
            return det.detect(image, name)

    root = tmp_path / "photos"
    root.mkdir()
    for i, (cx, cy) in enumerate([(3, 3), (4, 2)]):
        img = np.zeros((256, 256, 3), np.uint8)
        om.paint_face(img, 32, cx, cy, scale=640 / 256)
        Image.fromarray(img).save(root / f"p{i}.png")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(root / "empty.png")
    cache = str(tmp_path / "faces.json")
    with caplog.at_level(logging.WARNING):
        recs = build_index(root, Counting(), cache_path=cache)
    assert [r.path for r in recs] == ["p0.png", "p1.png"] and len(calls) == 3
    assert "1 of 3 images have no detectable face" in caplog.text
    want = det.detect(np.asarray(Image.open(root / "p1.png")), "p1")[0].landmarks5
    np.testing.assert_allclose(recs[1].landmarks5, want, atol=1e-5)
    again = build_index(root, Counting(), cache_path=cache)
    assert len(calls) == 3 and [r.path for r in again] == ["p0.png", "p1.png"]  # nothing detected twice
    assert json.load(open(cache))["entries"]["empty.png"]["no_face"]


def test_without_landmarks_or_detector_the_error_says_what_to_give(faces):
    root, _ = faces
    with pytest.raises(F2DError, match="--detector .*--landmarks"):
        build_index(root)


def test_user_landmarks_may_be_68_points(tmp_path):
    from f2d_core.faces.align import landmarks68_to_5
    img, _ = tt.face_image(0, 96)
    Image.fromarray(img).save(tmp_path / "a.png")
    l68 = np.random.default_rng(0).uniform(20, 70, (68, 2)).astype(np.float32)
    lm = tt.write_landmarks(tmp_path / "lm.json", {"a.png": l68.tolist()})
    (rec,) = build_index(tmp_path, landmarks_file=lm)
    np.testing.assert_allclose(rec.landmarks5, landmarks68_to_5(l68), atol=1e-5)
    assert rec.landmarks68.shape == (68, 2)


def test_a_landmarks_file_that_is_not_json_is_explained(tmp_path):
    from f2d_core.errors import F2DError
    from f2d_core.train.data import _user_landmarks
    (tmp_path / "lm.json").write_text("{not json")
    with pytest.raises(F2DError, match=r"--landmarks .*lm\.json: not valid JSON"):
        _user_landmarks(str(tmp_path / "lm.json"))
