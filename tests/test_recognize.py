"""ArcFace recognition and identity similarity on test-built models whose outputs we know.

tests/recognizer_onnx.py builds a w600k_r50-format recogniser (a fixed projection of the mean
colours of a 4x4 grid of the crop, so `colour_embedding` predicts it) and a detector that sees
one face in the middle of any picture; insightface's own ArcFaceONNX runs the same files for
the parity tests.
"""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

import synthetic_onnx as om
import recognizer_onnx as ro
from conftest import FACES
from f2d_core.faces.detect import FaceDetector
from f2d_core.errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError
from f2d_core.faces.recognize import (ArcFaceRecognizer, find_recognizer_file, list_recognizer_packs,
                                load_recognizer)
from f2d_core.faces.similarity import IdentityScorer, load_identity_scorer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("recognition")
    return {"rec": ro.save(ro.colour_recognizer(), d / "w600k_r50.onnx"),
            "rec_inside": ro.save(ro.colour_recognizer(normalises_inside=True), d / "inside.onnx"),
            "fixed": ro.save(ro.fixed_face_detector(), d / "fixed_det.onnx"),
            "scrfd": om.save(om.scrfd_model(), d / "det_10g.onnx"),
            "lmk": om.save(om.landmark68_model(), d / "1k3d68.onnx")}


def photo(seed=0, size=(200, 160)):
    """A picture with structure (smooth colour blobs), so different seeds give different crops."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    return cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)


KPS = np.array([[70, 80], [130, 78], [100, 110], [75, 140], [125, 138]], np.float32)


# --- the recogniser reproduces insightface's ArcFaceONNX -------------------------------------

@pytest.mark.parametrize("which", ["rec", "rec_inside"])
def test_embeddings_equal_insightface_arcface_onnx(files, which):
    """Both input normalisations (insightface picks one from the graph's first node names); the
    same crops on both sides (insightface's norm_crop), so the blob and the model run are compared."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.utils.face_align import norm_crop
    theirs = ArcFaceONNX(model_file=files[which])
    ours = ArcFaceRecognizer(files[which], device="cpu")
    assert (ours.input_mean, ours.input_std) == (theirs.input_mean, theirs.input_std)
    crops = [norm_crop(photo(seed), KPS) for seed in range(3)]
    expected = theirs.get_feat([c[:, :, ::-1].copy() for c in crops])  # insightface takes BGR and swaps
    # torch against onnxruntime: float32 sums in another order, measured 1.9e-6 on values up to ~7
    np.testing.assert_allclose(ours.features(crops), expected, rtol=0, atol=1e-5)


def _moved(rng, kps):
    """The keypoints under a random similarity, as a face elsewhere in the picture."""
    angle, scale = rng.uniform(-0.5, 0.5), rng.uniform(0.6, 1.4)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = kps.mean(axis=0)
    return ((kps - centre) @ rot.T + centre + rng.uniform(-20, 20, 2)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_alignment_is_insightface_norm_crop_within_one_level(files, seed):
    """Exact float bilinear against OpenCV's 1/32-pixel fixed point (norm_crop's warpAffine): at most
    1 level, on under 1% of the values (measured: none on these photos; a few on noise)."""
    from insightface.utils.face_align import norm_crop
    ours = ArcFaceRecognizer(files["rec"], device="cpu")
    rng = np.random.default_rng(seed)
    for picture in (photo(seed), rng.integers(0, 256, (200, 160, 3), dtype=np.uint8)):
        kps = _moved(rng, KPS)
        diff = np.abs(ours.align(picture, kps).astype(int) - norm_crop(picture, kps))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_crops_of_another_size_are_refused_with_how_to_make_them(files):
    rec = ArcFaceRecognizer(files["rec"], device="cpu")
    with pytest.raises(F2DError) as err:
        rec.features([rec.align(photo(0), KPS), np.zeros((100, 100, 3), np.uint8)])
    msg = str(err.value)
    assert "face crop 2" in msg and "w600k_r50.onnx" in msg and "(112, 112, 3)" in msg and "align" in msg


def test_embedding_is_the_known_function_of_the_crop_and_normalised(files):
    rec = ArcFaceRecognizer(files["rec"], device="cpu")
    crops = [rec.align(photo(s), KPS) for s in range(3)]
    np.testing.assert_allclose(rec.features(crops), ro.colour_embedding(crops), rtol=1e-4, atol=1e-4)
    e = rec.embeddings(crops)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)


def test_a_detector_is_refused_as_recognizer_with_what_to_use(files):
    with pytest.raises(CheckpointError, match=r"fixed_det.onnx is not a face recognition model: it has 9 output"
                                              r"(.|\n)*w600k_r50.onnx"):
        ArcFaceRecognizer(files["fixed"], device="cpu")


def test_load_recognizer_loads_each_file_once(files):
    assert load_recognizer(files["rec"], "cpu") is load_recognizer(files["rec"], "cpu")


# --- finding the model in a pack ---------------------------------------------------------------

def pack(tmp_path, name, **members):
    d = tmp_path / name
    d.mkdir(parents=True)
    for fname, src in members.items():
        shutil.copy(src, d / fname.replace("__", "."))
    return d


def test_buffalo_l_gives_w600k_r50(tmp_path, files):
    d = pack(tmp_path, "buffalo_l", det_10g__onnx=files["scrfd"], w600k_r50__onnx=files["rec"],
             **{"1k3d68__onnx": files["lmk"]})
    assert os.path.basename(find_recognizer_file(d)) == "w600k_r50.onnx"


def test_a_nested_antelopev2_gives_glintr100(tmp_path, files):
    d = tmp_path / "antelopev2"
    pack(d, "antelopev2", scrfd_10g_bnkps__onnx=files["scrfd"], glintr100__onnx=files["rec"])
    assert find_recognizer_file(d).endswith(os.path.join("antelopev2", "antelopev2", "glintr100.onnx"))


def test_another_recognition_model_is_found_by_its_shape_not_by_the_landmark_or_detector(tmp_path, files):
    d = pack(tmp_path, "custom", det_10g__onnx=files["scrfd"], model_a__onnx=files["lmk"],
             my_arcface__onnx=files["rec"])
    assert os.path.basename(find_recognizer_file(d)) == "my_arcface.onnx"


def test_a_pack_without_recognizer_lists_what_is_there_and_what_is_expected(tmp_path, files):
    d = pack(tmp_path, "detonly", det_10g__onnx=files["scrfd"])
    with pytest.raises(ModelFilesMissing, match=r"No face recognition model in .*detonly: found det_10g.onnx\. "
                                                r"Expected w600k_r50.onnx \(buffalo_l\), glintr100.onnx"):
        find_recognizer_file(d)
    with pytest.raises(ModelFilesMissing, match="insightface model folder not found: .*nowhere"):
        find_recognizer_file(tmp_path / "nowhere")


def test_list_recognizer_packs_needs_a_detector_and_a_recognizer(tmp_path, files):
    pack(tmp_path, "buffalo_l", det_10g__onnx=files["scrfd"], w600k_r50__onnx=files["rec"])
    pack(tmp_path, "detonly", det_10g__onnx=files["scrfd"])
    pack(tmp_path, "reconly", w600k_r50__onnx=files["rec"])
    assert list_recognizer_packs(tmp_path) == ["buffalo_l"]
    assert list_recognizer_packs(tmp_path / "missing") == []


# --- identity similarity -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixed_scorer(files):
    return IdentityScorer(FaceDetector(files["fixed"], device="cpu"), ArcFaceRecognizer(files["rec"], device="cpu"))


@pytest.fixture(scope="module")
def painted_scorer(files):
    return IdentityScorer(FaceDetector(files["scrfd"], device="cpu"), ArcFaceRecognizer(files["rec"], device="cpu"))


def test_the_same_picture_scores_one_and_another_less(fixed_scorer):
    reference = fixed_scorer.reference([photo(0)])
    result = fixed_scorer.score(reference, [photo(0), photo(1), photo(2)])
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert max(result.similarities[1:]) < 0.9 and result.found == [True] * 3
    # the number is the clipped cosine of the known embeddings
    crops = [fixed_scorer.recognizer.align(photo(s), fixed_scorer.detector.detect(photo(s))[0].landmarks5)
             for s in (0, 1)]
    e = ro.colour_embedding(crops)
    cos = float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]))
    assert result.similarities[1] == pytest.approx(max(cos, 0.0), abs=1e-4)


def test_several_reference_photos_are_averaged(fixed_scorer):
    a, b = (fixed_scorer.embed(photo(s)) for s in (0, 1))
    mean = (a + b) / np.linalg.norm(a + b)
    np.testing.assert_allclose(fixed_scorer.reference([photo(0), photo(1)]), mean, atol=1e-6)


def test_no_face_scores_zero_and_lowers_the_detection_rate(painted_scorer):
    face = om.paint_face(np.zeros((640, 640, 3), np.uint8), 32, 8, 8, red=230)
    reference = painted_scorer.reference([face])
    result = painted_scorer.score(reference, [face, np.zeros((640, 640, 3), np.uint8)])
    assert result.similarities == [pytest.approx(1.0, abs=1e-5), 0.0]
    assert result.found == [True, False] and result.detection_rate == 0.5
    text = result.summary()
    assert "w600k_r50.onnx" in text and "face found in 1/2 (50%)" in text and "#2: 0.000 (no face)" in text


def test_a_reference_without_any_face_is_an_error_that_says_so(painted_scorer):
    with pytest.raises(NoFaceError, match="no face was found in the reference image"):
        painted_scorer.reference([np.zeros((64, 64, 3), np.uint8)])


@pytest.mark.skipif(not (FACES / "f2d_input_0.jpg").is_file(), reason="../shared/faces not found")
def test_real_photos_match_themselves_and_not_each_other(tmp_path):
    from PIL import Image
    scorer = load_identity_scorer(ro.make_pack(tmp_path / "pack"), device="cpu")
    photos = [np.asarray(Image.open(FACES / f"f2d_input_{i}.jpg").convert("RGB")) for i in range(3)]
    result = scorer.score(scorer.reference(photos[:1]), photos)
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert result.similarities[0] > max(result.similarities[1:]) + 0.1


def test_the_recognisers_template_is_the_alignment_template():
    from f2d_core.faces.align import ARCFACE_TEMPLATE
    from f2d_core.faces.recognize import ARCFACE_TEMPLATE_112
    assert np.array_equal(ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE)
