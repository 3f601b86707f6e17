"""Face detection: SCRFD / 1k3d68 model files run without the insightface package.

The synthetic models (tests/synthetic_onnx.py) turn painted squares into faces: a square
exactly over one cell of stride s, red R, green STRIDE_GREEN[s], is one face of score
R/255 whose box and keypoints are fixed offsets from the cell's top-left corner. So every
expected box below is computed by hand, and insightface's own classes decode the same
models for the parity tests; they run them with onnxruntime, ours with torch
(models/onnx_graph.py), so those comparisons hold the two runtimes together too.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import onnx
import pytest

import synthetic_onnx as om
from f2d_core.faces.detect import (Face, FaceDetector, find_detector_files, list_insightface_packs,
                             load_detector, select_face)
from f2d_core.errors import CheckpointError, F2DError, ModelFilesMissing, NoFaceError
from f2d_core.faces.onnx import load_graph, read_graph_summary


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "scrfd": om.save(om.scrfd_model(), d / "det_10g.onnx"),
        "scrfd_batched": om.save(om.scrfd_model(batched=True), d / "scrfd_batched.onnx"),
        "scrfd_5": om.save(om.scrfd_model(levels=5), d / "scrfd_5level.onnx"),
        "scrfd_nokps": om.save(om.scrfd_model(keypoints=False), d / "scrfd_nokps.onnx"),
        "lmk": om.save(om.landmark68_model(), d / "1k3d68.onnx"),
        "lmk_inside": om.save(om.landmark68_model(normalises_inside=True), d / "1k3d68_inside.onnx"),
        "rec": om.save(om.recognition_model(), d / "w600k_r50.onnx"),
    }


@pytest.fixture(scope="module")
def detector(models):
    return FaceDetector(models["scrfd"], device="cpu")


def paint(img, stride, cx, cy, red=255, blue=0, scale=1.0, green=None):
    """Paint one face into the cell (cx, cy) of `stride` (detector pixels; scale = detector px per
    source px) and return its expected (box, keypoints) in source pixels."""
    s = stride
    x0, x1 = round(cx * s / scale), round((cx + 1) * s / scale)
    y0, y1 = round(cy * s / scale), round((cy + 1) * s / scale)
    img[y0:y1, x0:x1] = (red, om.STRIDE_GREEN[s] if green is None else green, blue)
    f = 1 + 2 * blue / 255
    anchor = np.array([cx * s, cy * s], np.float64)
    d = om.BOX_DIST * s * f
    box = np.array([anchor[0] - d[0], anchor[1] - d[1], anchor[0] + d[2], anchor[1] + d[3]]) / scale
    kps = (anchor + om.KPS_OFFSET * s * f) / scale
    return box, kps


def as_arrays(faces):
    dets = np.array([list(f.box) + [f.score] for f in faces], np.float32).reshape(-1, 5)
    return dets, np.array([f.landmarks5 for f in faces], np.float32).reshape(-1, 5, 2)


# --- geometry: boxes and keypoints come back in source pixels -------------------------------

def test_a_face_at_each_stride_decodes_to_its_box_keypoints_and_score(detector):
    img = np.zeros((640, 640, 3), np.uint8)
    expected = [paint(img, 8, 20, 10, red=255), paint(img, 16, 30, 25, red=230),
                paint(img, 32, 2, 10, red=204)]
    faces = detector.detect(img)
    assert len(faces) == 3  # one per square: each location's weaker second anchor is removed by NMS
    for face, (box, kps), score in zip(faces, expected, [1.0, 230 / 255, 204 / 255]):
        np.testing.assert_allclose(face.box, box, atol=1e-4)
        np.testing.assert_allclose(face.landmarks5, kps, atol=1e-4)
        assert face.score == pytest.approx(score, abs=1e-5)
        assert face.box.dtype == np.float32 and face.landmarks5.shape == (5, 2)


def test_a_2048px_image_is_detected_downscaled_and_mapped_back_to_source_pixels(detector):
    img = np.zeros((2048, 2048, 3), np.uint8)
    scale = 640 / 2048
    box32, kps32 = paint(img, 32, 5, 7, scale=scale)
    box16, kps16 = paint(img, 16, 30, 30, red=220, scale=scale)
    faces = detector.detect(img)
    assert len(faces) == 2
    np.testing.assert_allclose(faces[0].box, box32, atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks5, kps32, atol=1e-3)
    np.testing.assert_allclose(faces[1].box, box16, atol=1e-3)
    np.testing.assert_allclose(faces[1].landmarks5, kps16, atol=1e-3)
    assert faces[1].box[2] > 1500  # source pixels, not detector pixels


@pytest.mark.parametrize("height, width", [(960, 1280), (1280, 960)])
def test_non_square_images_are_letterboxed_at_the_top_left_and_mapped_back(detector, height, width):
    img = np.zeros((height, width, 3), np.uint8)
    # 2x downscale; the face sits in the far corner, next to where the black padding starts
    cx, cy = (width // 2) // 32 - 1, (height // 2) // 32 - 1
    box, kps = paint(img, 32, cx, cy, scale=0.5)
    (face,) = detector.detect(img)
    np.testing.assert_allclose(face.box, box, atol=1e-3)
    np.testing.assert_allclose(face.landmarks5, kps, atol=1e-3)


def test_large_images_are_downscaled_with_area_averaging(models):
    """Deliberate difference from insightface (INTER_LINEAR, which aliases on big photos): a big
    image gives the candidates of its INTER_AREA-downscaled copy. NMS is switched off
    (nms_thresh=1) because its +1 pixel convention depends on the pixel scale it runs at."""
    from insightface.model_zoo.scrfd import SCRFD

    img = np.random.default_rng(3).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    small = cv2.resize(img, (640, 640), interpolation=cv2.INTER_AREA)
    theirs = SCRFD(model_file=models["scrfd"])
    theirs.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=1.0)
    dets, kpss = theirs.detect(np.ascontiguousarray(small[:, :, ::-1]))
    ours, our_kps = as_arrays(FaceDetector(models["scrfd"], device="cpu", nms_thresh=1.0).detect(img))
    assert len(ours) == len(dets) > 100
    np.testing.assert_allclose(ours[:, :4], dets[:, :4] * 3.2, atol=1e-3)
    np.testing.assert_allclose(ours[:, 4], dets[:, 4], atol=1e-6)
    np.testing.assert_allclose(our_kps, kpss * 3.2, atol=1e-3)


# --- scores, NMS, colour order --------------------------------------------------------------

def test_overlapping_faces_are_merged_only_when_their_iou_exceeds_nms_thresh(models):
    img = np.zeros((640, 640, 3), np.uint8)
    strong, _ = paint(img, 8, 20, 20, red=255)
    weak, _ = paint(img, 8, 21, 20, red=200)  # one cell right: IoU 153/425 = 0.36 (+1 px convention)
    kept = FaceDetector(models["scrfd"], device="cpu", nms_thresh=0.4).detect(img)
    merged = FaceDetector(models["scrfd"], device="cpu", nms_thresh=0.3).detect(img)
    assert [f.score for f in kept] == pytest.approx([1.0, 200 / 255], abs=1e-5)
    np.testing.assert_allclose(kept[1].box, weak, atol=1e-4)
    assert len(merged) == 1
    np.testing.assert_allclose(merged[0].box, strong, atol=1e-4)


def test_det_thresh_drops_faces_scoring_below_it(models):
    img = np.zeros((640, 640, 3), np.uint8)
    paint(img, 8, 5, 5, red=255)
    paint(img, 8, 40, 40, red=140)  # score 0.55
    assert len(FaceDetector(models["scrfd"], device="cpu", det_thresh=0.5).detect(img)) == 2
    assert len(FaceDetector(models["scrfd"], device="cpu", det_thresh=0.6).detect(img)) == 1


def test_faces_are_returned_by_score_descending(detector):
    img = np.zeros((640, 640, 3), np.uint8)
    for i, red in enumerate([150, 250, 200, 180]):
        paint(img, 16, 4 + 8 * i, 10, red=red)
    scores = [f.score for f in detector.detect(img)]
    assert scores == pytest.approx([250 / 255, 200 / 255, 180 / 255, 150 / 255], abs=1e-5)


def test_images_are_read_as_rgb(detector):
    """The model reacts to red only: a red square is a face, the same square in blue is not."""
    red = np.zeros((640, 640, 3), np.uint8)
    paint(red, 8, 20, 20)
    blue = red[:, :, ::-1].copy()
    assert len(detector.detect(red)) == 1
    assert detector.detect(blue) == []


def test_comfyui_image_tensors_are_accepted(detector):
    torch = pytest.importorskip("torch")
    img = np.zeros((640, 640, 3), np.uint8)
    box, _ = paint(img, 16, 10, 12)
    tensor = torch.from_numpy(img.astype(np.float32) / 255.0)[None]  # [1, H, W, 3] floats 0..1
    (face,) = detector.detect(tensor, name="reference image")
    np.testing.assert_allclose(face.box, box, atol=1e-4)


def test_a_black_image_has_no_face(detector):
    assert detector.detect(np.zeros((512, 512, 3), np.uint8)) == []


# --- parity with insightface's SCRFD and Landmark classes -----------------------------------

def _scene(shape, seed, scale):
    """Uniform noise (hundreds of borderline candidates, a workout for sort and NMS) plus faces."""
    img = np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)
    paint(img, 8, 3, 4, scale=scale)
    paint(img, 32, 6, 5, red=240, blue=120, scale=scale)
    return img


@pytest.mark.parametrize("variant", ["scrfd", "scrfd_batched", "scrfd_5"])
@pytest.mark.parametrize("shape", [(640, 640), (480, 640), (640, 426)])
def test_decoding_equals_insightface_scrfd(models, variant, shape):
    """Same boxes, scores and keypoints as insightface.model_zoo.scrfd.SCRFD (fed BGR, as it
    expects). These sizes letterbox into 640x640 without resizing (the padding goes right or
    below), so both sides feed the same blob and only the decoding, sort and NMS are compared."""
    from insightface.model_zoo.scrfd import SCRFD

    img = _scene(shape, seed=shape[0], scale=640 / max(shape))
    theirs = SCRFD(model_file=models[variant])
    theirs.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4)
    dets, kpss = theirs.detect(np.ascontiguousarray(img[:, :, ::-1]))
    ours, our_kps = as_arrays(FaceDetector(models[variant], device="cpu").detect(img))
    assert len(ours) == len(dets) >= 2
    np.testing.assert_allclose(ours, dets, atol=1e-3)
    np.testing.assert_allclose(our_kps, kpss, atol=1e-3)


def _pair_up(ours, theirs):
    """Index pairs (ours, theirs) of the same candidate: the nearest box, within 1 pixel."""
    dist = np.abs(ours[:, None, :4] - theirs[None, :, :4]).max(axis=2)
    nearest = dist.argmin(axis=1)
    pairs = [(i, int(j)) for i, j in enumerate(nearest) if dist[i, j] < 1.0]
    assert len({j for _, j in pairs}) == len(pairs), "two of our candidates matched one of theirs"
    return pairs


@pytest.mark.parametrize("variant, max_stride", [("scrfd", 32), ("scrfd_5", 128)])
@pytest.mark.parametrize("shape", [(320, 480), (480, 320), (512, 512), (100, 150)])
def test_enlarged_images_detect_within_the_effect_of_one_level(models, variant, max_stride, shape):
    """Enlarging, our exact float bilinear and OpenCV's 11-bit fixed point (insightface's resize)
    differ by at most 1 level (on ~13% of values, tests/test_preprocess.py). Through the synthetic
    model a 1-level change moves each pooled colour by at most 1/255, hence a score by at most
    5/255 (red, and the green gate of slope 4), a box side by at most 1.75 * 1.1 * 2/255 strides and
    a keypoint by 1.1 * 1.1 * 2/255 strides (the second anchor's 1.1x), in detector pixels. Those
    bounds must hold for every candidate both sides find; a candidate only one side finds must be
    within 5/255 of the threshold. Measured: boxes 0.06, keypoints 0.04 px, scores 0.003 at most.
    NMS is off (nms_thresh=1): one borderline candidate could otherwise change which ones it keeps."""
    from insightface.model_zoo.scrfd import SCRFD

    det_scale = 640 / max(shape)
    img = _scene(shape, seed=sum(shape), scale=det_scale)
    theirs = SCRFD(model_file=models[variant])
    theirs.prepare(-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=1.0)
    dets, kpss = theirs.detect(np.ascontiguousarray(img[:, :, ::-1]))
    ours, our_kps = as_arrays(FaceDetector(models[variant], device="cpu", nms_thresh=1.0).detect(img))
    score_bound = 5 / 255
    box_bound = 1.75 * 1.1 * 2 / 255 * max_stride / det_scale
    kps_bound = 1.1 * 1.1 * 2 / 255 * max_stride / det_scale
    pairs = _pair_up(ours, dets)
    mine, its = (np.array(ix) for ix in zip(*pairs))
    assert len(pairs) >= 2
    assert np.abs(ours[mine, 4] - dets[its, 4]).max() <= score_bound
    assert np.abs(ours[mine, :4] - dets[its, :4]).max() <= box_bound
    assert np.abs(our_kps[mine] - kpss[its]).max() <= kps_bound
    alone = np.concatenate([np.delete(ours[:, 4], mine), np.delete(dets[:, 4], its)])
    assert (np.abs(alone - 0.5) <= score_bound).all(), alone


@pytest.mark.parametrize("lmk", ["lmk", "lmk_inside"])
@pytest.mark.parametrize("shape", [(480, 640), (2048, 1536)])
def test_landmarks68_equal_insightface_landmark_get(models, lmk, shape):
    """Both input normalisations (insightface picks one from the graph's first node names) and a
    large image: the 68-point model must crop the full-resolution image, as Landmark.get does.
    The crops differ by at most 1 level (exact float against OpenCV's 1/32-pixel fixed point;
    on this noise texture a few % of values): the points then move by at most 0.015 px, measured,
    so 0.05 px leaves margin while a wrong crop, scale or mapping back is off by pixels."""
    from insightface.app.common import Face as InsightFace
    from insightface.model_zoo.landmark import Landmark

    rng = np.random.default_rng(7)
    img = np.zeros(shape + (3,), np.uint8)
    img[..., 1] = rng.integers(0, 30, shape)  # texture the crops see; low green keeps stride 8 gated only
    img[..., 2] = rng.integers(0, 256, shape)
    scale = 640 / max(shape)
    paint(img, 16, 10, 8, scale=scale)
    paint(img, 32, 12, 6, red=220, scale=scale)
    faces = FaceDetector(models["scrfd"], models[lmk], device="cpu").detect(img)
    theirs = Landmark(model_file=models[lmk])
    theirs.prepare(-1)
    assert len(faces) == 2
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    for face in faces:
        ref = theirs.get(bgr, InsightFace(bbox=face.box, kps=face.landmarks5, det_score=face.score))
        assert face.landmarks68.shape == (68, 2) and face.landmarks68.dtype == np.float32
        np.testing.assert_allclose(face.landmarks68, ref[:, :2], atol=0.05)


def test_alignment_points_are_the_5_keypoints_without_the_68_point_model(detector):
    img = np.zeros((640, 640, 3), np.uint8)
    paint(img, 16, 10, 10)
    (face,) = detector.detect(img)
    assert face.landmarks68 is None
    np.testing.assert_array_equal(face.alignment_points(), face.landmarks5)


def test_alignment_points_use_the_official_68_to_5_reduction(models):
    img = np.zeros((640, 640, 3), np.uint8)
    paint(img, 16, 10, 10)
    (face,) = FaceDetector(models["scrfd"], models["lmk"], device="cpu").detect(img)
    p = face.landmarks68
    official = np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
    np.testing.assert_allclose(face.alignment_points(), official, atol=1e-5)
    assert not np.allclose(face.alignment_points(), face.landmarks5, atol=1.0)


# --- choosing one face ----------------------------------------------------------------------

def _two_faces():
    big = Face(np.array([0, 0, 100, 100], np.float32), 0.6, np.zeros((5, 2), np.float32))
    small = Face(np.array([200, 0, 240, 40], np.float32), 0.95, np.zeros((5, 2), np.float32))
    return [small, big]  # detector order: by score


def test_select_face_largest_is_the_default():
    small, big = _two_faces()
    assert select_face([small, big]) is big
    assert big.area == pytest.approx(10000)


def test_select_face_confident_takes_the_highest_score():
    small, big = _two_faces()
    assert select_face([big, small], "confident") is small


def test_select_face_index_counts_from_the_largest():
    small, big = _two_faces()
    assert select_face([small, big], 0) is big
    assert select_face([small, big], np.int64(1)) is small


def test_select_face_index_out_of_range_says_how_many_faces_were_found():
    with pytest.raises(F2DError) as err:
        select_face(_two_faces(), 2, image_name="reference 3")
    msg = str(err.value)
    assert "reference 3" in msg and "index 2" in msg and "2 face(s)" in msg and "0..1" in msg


def test_select_face_rejects_unknown_policies():
    with pytest.raises(F2DError, match="'largest', 'confident' or a face index"):
        select_face(_two_faces(), "smallest")
    with pytest.raises(F2DError):
        select_face(_two_faces(), True)


def test_no_face_error_names_the_image_and_what_to_try(detector):
    faces = detector.detect(np.zeros((512, 512, 3), np.uint8))
    with pytest.raises(NoFaceError) as err:
        select_face(faces, image_name="reference 2")
    msg = str(err.value)
    assert "reference 2" in msg
    for hint in ("larger", "frontal", "threshold", "crop"):
        assert hint in msg


# --- model files: validation, packs, caching ------------------------------------------------

def test_a_detector_without_keypoints_is_rejected(models):
    with pytest.raises(CheckpointError) as err:
        FaceDetector(models["scrfd_nokps"], device="cpu")
    msg = str(err.value)
    assert "scrfd_nokps.onnx" in msg and "keypoints" in msg and "det_10g.onnx" in msg


def test_a_recognition_model_is_rejected_as_detector(models):
    with pytest.raises(CheckpointError, match=r"w600k_r50\.onnx is not an SCRFD face detector.*9 or 15 outputs"):
        FaceDetector(models["rec"], device="cpu")


def test_a_wrong_landmark_model_is_rejected(models):
    with pytest.raises(CheckpointError) as err:
        FaceDetector(models["scrfd"], models["rec"], device="cpu")
    msg = str(err.value)
    assert "w600k_r50.onnx" in msg and "1k3d68.onnx" in msg and "3309" in msg


def test_det_size_must_be_a_multiple_of_the_largest_stride(models):
    with pytest.raises(F2DError, match="multiple of 32.*640"):
        FaceDetector(models["scrfd"], device="cpu", det_size=600)


def _pack(root, name, files, models):
    d = root / name
    d.mkdir(parents=True)
    for fname, kind in files.items():
        (d / fname).write_bytes(open(models[kind], "rb").read())
    return d


def test_buffalo_l_gives_det_10g_and_1k3d68(tmp_path, models):
    d = _pack(tmp_path, "buffalo_l", {"det_10g.onnx": "scrfd", "1k3d68.onnx": "lmk", "2d106det.onnx": "lmk",
                                      "w600k_r50.onnx": "rec"}, models)
    assert find_detector_files(d) == (str(d / "det_10g.onnx"), str(d / "1k3d68.onnx"))


def test_antelopev2_gives_scrfd_10g_bnkps(tmp_path, models):
    d = _pack(tmp_path, "antelopev2", {"scrfd_10g_bnkps.onnx": "scrfd", "1k3d68.onnx": "lmk",
                                       "glintr100.onnx": "rec"}, models)
    assert find_detector_files(d) == (str(d / "scrfd_10g_bnkps.onnx"), str(d / "1k3d68.onnx"))


def test_a_doubly_nested_antelopev2_is_tolerated(tmp_path, models):
    inner = _pack(tmp_path / "antelopev2", "antelopev2", {"scrfd_10g_bnkps.onnx": "scrfd"}, models)
    assert find_detector_files(tmp_path / "antelopev2") == (str(inner / "scrfd_10g_bnkps.onnx"), None)


def test_another_scrfd_file_is_recognised_by_its_outputs(tmp_path, models):
    d = _pack(tmp_path, "buffalo_s", {"det_500m.onnx": "scrfd", "w600k_mbf.onnx": "rec"}, models)
    assert find_detector_files(d) == (str(d / "det_500m.onnx"), None)


def test_an_empty_pack_error_lists_what_is_expected(tmp_path):
    (tmp_path / "buffalo_l").mkdir()
    with pytest.raises(ModelFilesMissing) as err:
        find_detector_files(tmp_path / "buffalo_l")
    msg = str(err.value)
    assert "buffalo_l" in msg and "no .onnx files" in msg
    assert "det_10g.onnx" in msg and "scrfd_10g_bnkps.onnx" in msg and "Unpack" in msg


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_detector_link_is_named_not_reported_as_an_unpacked_pack(tmp_path, models, kind):
    d = _pack(tmp_path, "buffalo_l", {"w600k_r50.onnx": "rec"}, models)
    if kind == "dangling":
        (d / "det_10g.onnx").symlink_to(tmp_path / "moved" / "det_10g.onnx")
    else:
        (d / "det_10g.onnx").symlink_to(d / "other.onnx")
        (d / "other.onnx").symlink_to(d / "det_10g.onnx")
    with pytest.raises(ModelFilesMissing) as err:
        find_detector_files(d)
    msg = str(err.value)
    assert "broken symbolic link" in msg and "det_10g.onnx -> " in msg and "point each link at the real file" in msg
    assert "Unpack the whole" not in msg
    assert list_insightface_packs(tmp_path) == []
    from f2d_core.faces.recognize import find_recognizer_file
    assert find_recognizer_file(d).endswith("w600k_r50.onnx")  # the readable files still count


def test_a_pack_with_only_a_recognition_model_lists_what_is_there(tmp_path, models):
    d = _pack(tmp_path, "recognition_only", {"w600k_r50.onnx": "rec"}, models)
    with pytest.raises(ModelFilesMissing) as err:
        find_detector_files(d)
    msg = str(err.value)
    assert "found w600k_r50.onnx" in msg and "det_10g.onnx" in msg and "9 or 15 outputs" in msg


def test_a_pack_with_a_detector_lacking_keypoints_says_so(tmp_path, models):
    d = _pack(tmp_path, "old", {"scrfd_500m.onnx": "scrfd_nokps"}, models)
    with pytest.raises(ModelFilesMissing, match=r"scrfd_500m\.onnx: SCRFD without keypoints"):
        find_detector_files(d)


def test_a_missing_pack_folder_is_named(tmp_path):
    with pytest.raises(ModelFilesMissing, match="insightface model folder not found: .*nowhere.*buffalo_l"):
        find_detector_files(tmp_path / "nowhere")


def test_list_insightface_packs_names_only_folders_with_a_detector(tmp_path, models):
    _pack(tmp_path, "buffalo_l", {"det_10g.onnx": "scrfd", "1k3d68.onnx": "lmk"}, models)
    _pack(tmp_path / "antelopev2", "antelopev2", {"scrfd_10g_bnkps.onnx": "scrfd"}, models)
    _pack(tmp_path, "custom", {"det_2.5g.onnx": "scrfd"}, models)
    _pack(tmp_path, "recognition_only", {"w600k_r50.onnx": "rec"}, models)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a pack")
    assert list_insightface_packs(tmp_path) == ["antelopev2", "buffalo_l", "custom"]
    assert list_insightface_packs(tmp_path / "missing") == []


def test_load_detector_builds_each_model_once_and_reuses_it(tmp_path, models):
    d = _pack(tmp_path, "buffalo_l", {"det_10g.onnx": "scrfd", "1k3d68.onnx": "lmk"}, models)
    a = load_detector(d, device="cpu")
    assert load_detector(str(d), device="cpu") is a
    assert a.lmk_net is not None
    assert load_detector(d, use_landmarks68=False, device="cpu").lmk_net is None
    stricter = load_detector(d, device="cpu", det_thresh=0.7)
    assert stricter is not a and stricter.det_thresh == 0.7
    assert stricter.net is a.net  # other options, the same network


# --- ONNX files -----------------------------------------------------------------------------

def test_load_graph_on_a_missing_file_names_it_and_says_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_graph(tmp_path / "det_10g.onnx")
    msg = str(err.value)
    assert "not found" in msg and "det_10g.onnx" in msg and "models/insightface/models" in msg


def test_load_graph_on_a_garbage_file_says_it_is_not_onnx_and_to_download_again(tmp_path):
    bad = tmp_path / "det_10g.onnx"
    bad.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError) as err:
        load_graph(bad)
    msg = str(err.value)
    assert "det_10g.onnx" in msg and "not an ONNX model" in msg and "download" in msg


def test_load_graph_cpu_device_puts_every_weight_on_the_cpu(models):
    net = load_graph(models["lmk"], device="cpu")
    assert {b.device.type for b in net.buffers()} == {"cpu"}


def test_load_graph_rejects_unknown_devices(models):
    with pytest.raises(F2DError, match="'auto', 'cpu', 'cuda'"):
        load_graph(models["scrfd"], device="gpu0")


def test_load_graph_reads_each_file_once_per_device_and_again_when_it_changes(tmp_path, models):
    path = tmp_path / "det_10g.onnx"
    path.write_bytes(open(models["scrfd"], "rb").read())
    first = load_graph(path, "cpu")
    assert load_graph(path, "cpu") is first
    os.utime(path, ns=(1, 1))  # a replaced file has another mtime
    assert load_graph(path, "cpu") is not first


@pytest.mark.parametrize("kind", ["scrfd", "lmk_inside", "rec"])
def test_read_graph_summary_matches_the_onnx_package(models, kind):
    model = onnx.load(models[kind])
    summary = read_graph_summary(models[kind])
    assert summary.node_names == [n.name for n in model.graph.node[:8]]
    assert summary.num_outputs == len(model.graph.output)


def test_read_graph_summary_rejects_non_onnx_files(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(os.urandom(64) + b"\xff" * 16)
    with pytest.raises(ValueError):
        read_graph_summary(bad)
