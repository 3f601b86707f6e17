"""dlib's detector, 68 landmarks and 128-d recogniser on the real photos in ../shared/faces.

dlib-bin and face-recognition-models come from requirements-dlib.txt (included by
requirements-test.txt); they are real models, so these tests check real behaviour: a face where
there is one, the eyes on the ArcFace template after alignment, the same person ranked above
different people, and which face each selection policy picks on a photo of several people."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from PIL import Image

import f2d_core
from conftest import FACES
from f2d_core.errors import F2DError, ModelFilesMissing
from f2d_core.faces import dlib_detector
from f2d_core.faces.align import ARCFACE_TEMPLATE, align_face, landmarks68_to_5, similarity_matrix, warp

needs_dlib = pytest.mark.skipif(not dlib_detector.dlib_available(),
                                reason=f"dlib is not installed: {dlib_detector.INSTALL}")
PHOTOS = [FACES / f"f2d_input_{i}.jpg" for i in range(5)]


@pytest.fixture(scope="module")
def photos():
    if not all(p.is_file() for p in PHOTOS):
        pytest.skip(f"the shared face photos are not at {FACES}: put the project's shared folder beside the repo "
                    "(or set F2D_SHARED) to run the real-photo tests")
    return [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]


@pytest.fixture(scope="module")
def detector():
    if not dlib_detector.dlib_available():
        pytest.skip(f"dlib is not installed: {dlib_detector.INSTALL}")
    return f2d_core.load_detector("dlib")


@pytest.fixture(scope="module")
def recogniser():
    from f2d_core.evaluate.identity_models import DlibIdentity
    return DlibIdentity()


# --- without photos ----------------------------------------------------------------------------

@needs_dlib
def test_the_model_files_are_found_without_running_face_recognition_models_init():
    sys.modules.pop("face_recognition_models", None)
    path = dlib_detector.model_file(dlib_detector.SHAPE_PREDICTOR_68)
    assert path.endswith("shape_predictor_68_face_landmarks.dat")
    assert "face_recognition_models" not in sys.modules  # its __init__ imports pkg_resources


def test_auto_picks_an_insightface_pack_then_dlib_else_says_both_ways(monkeypatch):
    assert dlib_detector.auto_detector(["buffalo_l", "antelopev2"]) == "buffalo_l"
    monkeypatch.setattr(dlib_detector, "dlib_available", lambda: True)
    assert dlib_detector.auto_detector([]) == "dlib"
    monkeypatch.setattr(dlib_detector, "dlib_available", lambda: False)
    with pytest.raises(ModelFilesMissing, match=r"No face detector is available.*buffalo_l \(with det_10g.onnx\).*"
                                                r"pip install -r requirements-dlib.txt.*'none'"):
        dlib_detector.auto_detector([])


def test_the_detector_list_offers_dlib_only_when_it_is_installed(monkeypatch):
    monkeypatch.setattr(dlib_detector, "dlib_available", lambda: True)
    assert dlib_detector.detector_choices(["buffalo_l"], "none") == ["auto", "buffalo_l", "dlib", "none"]
    monkeypatch.setattr(dlib_detector, "dlib_available", lambda: False)
    assert dlib_detector.detector_choices([], "none") == ["auto", "none"]


def test_without_dlib_the_detector_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # what `import dlib` does when it is not installed
    with pytest.raises(ModelFilesMissing, match=r"needs the dlib package.*pip install -r requirements-dlib.txt"):
        dlib_detector.import_dlib()


@needs_dlib
def test_insightface_options_are_refused_by_name():
    with pytest.raises(F2DError, match="takes upsample, threshold and max_size, not det_size"):
        f2d_core.load_detector("dlib", det_size=640)


@needs_dlib
def test_a_picture_without_a_face_has_no_faces(detector):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert detector.detect(noise) == [] and detector.detect(np.zeros((128, 128, 3), np.uint8)) == []


# --- the real photos ---------------------------------------------------------------------------

def test_each_shared_photo_has_one_face_with_its_box_and_landmarks(photos, detector):
    for i, rgb in enumerate(photos):
        faces = detector.detect(rgb, PHOTOS[i].name)
        assert len(faces) == 1, PHOTOS[i].name
        f = faces[0]
        assert f.score > 0 and f.landmarks68.shape == (68, 2) and f.landmarks5.shape == (5, 2)
        x1, y1, x2, y2 = f.box
        assert 100 < x2 - x1 < 400 and 0 <= x1 and x2 <= rgb.shape[1]  # a face, not the whole photo
        inner = f.landmarks68[17:]  # brows, eyes, nose, mouth (HOG boxes may cut the jaw line)
        assert (inner[:, 0] >= x1).all() and (inner[:, 0] <= x2).all() and (inner[:, 1] >= y1).all() \
            and (inner[:, 1] <= y2).all()
        np.testing.assert_allclose(f.alignment_points(), landmarks68_to_5(f.landmarks68))  # the official reduction
        left_eye, right_eye = f.landmarks5[0], f.landmarks5[1]
        assert left_eye[0] < right_eye[0] and abs(left_eye[1] - right_eye[1]) < 20  # upright, image-left first


def _eyes_found_in(crop, detector, scale):
    faces = detector.detect(crop)
    return faces[0].alignment_points()[:2] / scale if faces else None


def test_alignment_puts_the_eyes_on_the_arcface_template(photos, detector):
    """Aligned from dlib's points (4x the 112 template, so dlib can find the face again), the eyes
    that dlib finds in the aligned crop lie within 3.5 px (of 112) of the template's eyes."""
    for i, rgb in enumerate(photos):
        points = detector.detect(rgb)[0].alignment_points()
        crop = warp(rgb, similarity_matrix(points, ARCFACE_TEMPLATE * 4), 448)
        eyes = _eyes_found_in(crop, detector, 4)
        assert eyes is not None, PHOTOS[i].name
        err = np.linalg.norm(eyes - ARCFACE_TEMPLATE[:2], axis=1)
        assert err.max() < 3.5, (PHOTOS[i].name, err)
        aligned, _ = align_face(rgb, points)
        assert aligned.shape == (112, 112, 3)


def test_the_dlib_metric_ranks_the_same_person_above_different_people(photos, recogniser):
    """A flipped, rescaled copy of each photo is more like it than any other person is."""
    refs = np.array([recogniser.reference([p]) for p in photos])
    for i, rgb in enumerate(photos):
        copy = np.asarray(Image.fromarray(rgb[:, ::-1]).resize((384, 384), Image.Resampling.BICUBIC))
        e = recogniser.embed(copy)
        sims = refs @ e
        others = np.delete(sims, i)
        assert sims[i] > others.max(), (PHOTOS[i].name, sims.round(3))


def _group(photos, scales=(1.0, 0.6, 0.35)):
    """Photos 0, 1, 2 side by side at decreasing scales on one canvas, and their x ranges."""
    parts = [np.asarray(Image.fromarray(photos[k]).resize((int(512 * s),) * 2, Image.Resampling.LANCZOS))
             for k, s in enumerate(scales)]
    width = sum(p.shape[1] for p in parts)
    canvas = np.full((512, width, 3), 128, np.uint8)
    x, spans = 0, []
    for p in parts:
        canvas[:p.shape[0], x:x + p.shape[1]] = p
        spans.append((x, x + p.shape[1]))
        x += p.shape[1]
    return canvas, spans


def _which(face, spans):
    cx = (face.box[0] + face.box[2]) / 2
    return next(i for i, (a, b) in enumerate(spans) if a <= cx < b)


def test_largest_confident_and_index_pick_the_right_face_in_a_group_photo(photos, detector, recogniser):
    canvas, spans = _group(photos)
    faces = detector.detect(canvas)
    assert len(faces) == 3
    largest = f2d_core.select_face(faces, "largest")
    assert _which(largest, spans) == 0
    assert [_which(f2d_core.select_face(faces, k), spans) for k in (0, 1, 2)] == [0, 1, 2]  # index: by size
    confident = f2d_core.select_face(faces, "confident")
    assert confident.score == max(f.score for f in faces)
    # the face each index picks is that photo's person to dlib's recogniser
    refs = np.array([recogniser.reference([photos[k]]) for k in range(3)])
    for k in range(3):
        x1, y1, x2, y2 = f2d_core.select_face(faces, k).box.astype(int)
        pad = (x2 - x1) // 2
        crop = canvas[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad]
        assert int(np.argmax(refs @ recogniser.embed(crop))) == k
    with pytest.raises(F2DError, match="face index 3 was requested but 3 face"):
        f2d_core.select_face(faces, 3)


def test_the_scrfd_stand_in_and_dlib_align_the_same_photo_differently(photos, detector, tmp_path, capsys):
    """The SCRFD stand-in of the tests (recognizer_onnx.fixed_face_detector: one face in the middle
    of any picture, keypoints where the template would put them) does not look at the photo; dlib
    does. Measured on the shared photos: the mean absolute difference of the two 112x112 crops, and
    how far dlib's own points land from the template inside the stand-in's crop."""
    import recognizer_onnx as ro
    stand_in = f2d_core.load_detector(str(ro.make_pack(tmp_path / "buffalo_test")), use_landmarks68=False, device="cpu")
    mad, offset = [], []
    for rgb in photos:
        ps, pd = stand_in.detect(rgb)[0].alignment_points(), detector.detect(rgb)[0].alignment_points()
        crop_s, m_s = align_face(rgb, ps)
        crop_d, _ = align_face(rgb, pd)
        mad.append(np.abs(crop_s.astype(float) - crop_d.astype(float)).mean())
        in_s = pd @ m_s[:2, :2].T + m_s[:2, 2]
        offset.append(np.linalg.norm(in_s - ARCFACE_TEMPLATE, axis=1).mean())
    with capsys.disabled():
        print(f"\nSCRFD stand-in vs dlib aligned crops: mean |difference| {np.min(mad):.1f}-{np.max(mad):.1f} levels; "
              f"dlib's points lie {np.min(offset):.1f}-{np.max(offset):.1f} px (mean of 5, of 112) off the template "
              "in the stand-in's crop")
    assert min(mad) > 10 and min(offset) > 3  # the stand-in's crop is not the face's alignment


def test_a_face_photo_without_a_face_for_dlib_leaves_its_dlib_scores_missing_and_says_so(photos, recogniser, tmp_path):
    from f2d_core.evaluate import report
    from f2d_core.evaluate.jobs import Face, make_jobs
    from f2d_core.evaluate.scoring import Scorer
    Image.fromarray(photos[0]).save(tmp_path / "anna.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "ben.png")
    faces = [Face("anna", (str(tmp_path / "anna.png"),)), Face("ben", (str(tmp_path / "ben.png"),))]
    jobs = make_jobs(faces, ["A photo of f l as a chef"], [0])
    for job in jobs:  # the "generated" images: anna's photo mirrored, for both faces
        path = job.path(str(tmp_path / "out"))
        (tmp_path / "out" / "images" / job.face.label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photos[0][:, ::-1]).save(path)
    scorer = Scorer({"dlib": recogniser})
    rows = scorer.score(jobs, str(tmp_path / "out"))
    anna, ben = (next(r for r in rows if r["face"] == f) for f in ("anna", "ben"))
    assert anna["dlib"] > 0.9 and ben["dlib"] is None
    columns = scorer.columns()
    assert columns["dlib"]["filled"] and columns["dlib"]["no_face_in_photos_of"] == ["ben"]
    assert columns["adaface"] == {"filled": False, "missing": "no model given"}
    summary = report.summarize(rows, {}, columns)
    assert summary["mean"]["dlib"] is None and "dlib" in summary["missing"]  # not a mean over anna alone
    # and the reason given is the photo, not a missing model (the CLI prints these)
    why = report.why_missing(summary)
    assert why["dlib"] == "its detector found no face in the photos of ben"
    assert why["adaface"] == "no model given"
    assert why["hmean"].startswith("needs all six of the paper's columns")
    assert why["hmean_filled"] == "needs an identity and a text column"  # dlib is its only filled column
