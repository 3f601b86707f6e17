"""Photos -> identity file: the encode pipeline, the identity file and the `encode` command."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import synthetic_onnx as om
from f2d_core import to_pixels
from f2d_core.faces import align
from f2d_core import F2DError, ModelFilesMissing, NoFaceError
from f2d_core.faces.detect import FaceDetector
from f2d_core.identity.face_file import FaceIdentity
from f2d_core.weights.files import find_models
from f2d_core.identity.pipeline import encode_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def det_path(tmp_path_factory):
    return om.save(om.scrfd_model(), tmp_path_factory.mktemp("det") / "det_10g.onnx")


@pytest.fixture(scope="module")
def detector(det_path):
    return FaceDetector(det_path, device="cpu")


def photo(cx, cy, blue=60, size=640):
    """A synthetic photo the test detector sees one face in (a painted stride-32 cell)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[cy * 32:(cy + 1) * 32, cx * 32:(cx + 1) * 32] = (255, om.STRIDE_GREEN[32], blue)
    img[::7, ::5, 0] = 40  # texture, so crops of different faces differ
    return img


def test_identity_is_the_mean_of_the_faces_features(encoder, detector):
    imgs = [photo(5, 5), photo(10, 8, blue=120)]
    ident = encode_images(encoder, imgs, detector)
    crops = [align.align_face(im, detector.detect(im)[0].alignment_points())[0] for im in imgs]
    per_face = encoder.identity_features(to_pixels(np.stack(crops)))
    torch.testing.assert_close(ident.features_per_face, per_face)
    torch.testing.assert_close(ident.features, per_face.mean(0))
    s1, s2 = encoder.face_tokens(per_face.mean(0, keepdim=True))
    torch.testing.assert_close(ident.s1, s1[0])
    torch.testing.assert_close(ident.s2, s2[0])
    assert ident.num_faces == 2 and ident.aligned.shape == (2, 112, 112, 3)
    assert np.array_equal(ident.aligned[1].numpy(), crops[1])
    assert ident.meta["faces"][0]["faces_in_image"] == 1 and len(ident.meta["model_sha256"]) == 2


def test_a_comfyui_image_batch_is_accepted(encoder, detector):
    batch = torch.from_numpy(np.stack([photo(5, 5), photo(6, 9)])).float() / 255.0
    assert encode_images(encoder, batch, detector).num_faces == 2


def test_no_face_stops_with_the_images_name_by_default(encoder, detector):
    with pytest.raises(NoFaceError, match="No face found in holiday.jpg"):
        encode_images(encoder, [photo(5, 5), np.zeros((300, 300, 3), np.uint8)], detector,
                      names=["me.jpg", "holiday.jpg"])


def test_skip_leaves_faceless_images_out_and_says_so(encoder, detector):
    ident = encode_images(encoder, [np.zeros((300, 300, 3), np.uint8), photo(5, 5)], detector,
                          on_no_face="skip", names=["empty.png", "me.jpg"])
    assert ident.num_faces == 1 and [f["image"] for f in ident.meta["faces"]] == ["me.jpg"]
    assert ident.meta["skipped"][0]["image"] == "empty.png"


def test_skip_still_errors_when_no_image_is_left(encoder, detector):
    with pytest.raises(NoFaceError, match="no face was found in any of the 2 images"):
        encode_images(encoder, [np.zeros((64, 64, 3), np.uint8)] * 2, detector, on_no_face="skip")


def test_without_a_detector_images_must_be_aligned_crops(encoder, parity):
    E, _ = parity
    ident = encode_images(encoder, [E["align.warped_uint8"].numpy()], detector=None)
    torch.testing.assert_close(ident.features, E["msid.features"][0], atol=1e-4, rtol=0)
    with pytest.raises(F2DError, match=r"must be ArcFace-aligned 112x112 face crops, but this one is 640x640"):
        encode_images(encoder, [photo(5, 5)], detector=None)


def test_progress_and_interrupts(encoder, detector):
    seen = []
    encode_images(encoder, [photo(5, 5), photo(6, 6)], detector, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]

    class Interrupted(Exception):
        pass

    def interrupt():
        raise Interrupted

    with pytest.raises(Interrupted):
        encode_images(encoder, [photo(5, 5)], detector, check_interrupt=interrupt)


def test_unknown_on_no_face_is_refused(encoder, detector):
    with pytest.raises(F2DError, match="on_no_face must be one of"):
        encode_images(encoder, [photo(5, 5)], detector, on_no_face="ignore")


def test_identity_file_round_trip_is_exact_and_atomic(encoder, detector, tmp_path):
    ident = encode_images(encoder, [photo(5, 5)], detector, names=["me.jpg"])
    path = ident.save(tmp_path / "me.f2d.safetensors")
    assert os.listdir(tmp_path) == ["me.f2d.safetensors"]  # no temp file left behind
    back = FaceIdentity.load(path)
    for k in ("features", "s1", "s2", "features_per_face", "aligned"):
        assert torch.equal(getattr(back, k), getattr(ident, k)), k
    assert back.meta == ident.meta and back.meta["faces"][0]["image"] == "me.jpg"


def test_loading_something_else_as_an_identity_is_explained(official_weights, tmp_path):
    from f2d_core.weights.checkpoint import convert
    p = str(tmp_path / "mapping.safetensors")
    convert(official_weights["mapping"], p)
    with pytest.raises(F2DError, match="not a Face2Diffusion identity file"):
        FaceIdentity.load(p)
    (tmp_path / "bad.f2d.safetensors").write_bytes(b"garbage")
    with pytest.raises(F2DError, match="not a readable identity file"):
        FaceIdentity.load(tmp_path / "bad.f2d.safetensors")


@pytest.fixture
def models_dir(tmp_path, official_weights, det_path):
    f2d = tmp_path / "models" / "face2diffusion"
    f2d.mkdir(parents=True)
    os.symlink(official_weights["msid"], f2d / "msid.pt")
    os.symlink(official_weights["mapping"], f2d / "mapping.pt")
    pack = tmp_path / "models" / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    os.symlink(det_path, pack / "det_10g.onnx")
    return tmp_path / "models"


def test_missing_model_files_are_listed_with_where_they_go(tmp_path):
    with pytest.raises(ModelFilesMissing) as e:
        find_models(tmp_path)
    msg = str(e.value)
    for needle in ("msid.pt", "mapping.pt", "an insightface detector pack",
                   os.path.join("face2diffusion", "msid.pt"), os.path.join("buffalo_l", "det_10g.onnx"),
                   "drive.google.com", "CC BY-NC-SA 4.0"):
        assert needle in msg


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "f2d_core", *args], cwd=REPO, capture_output=True, text=True)


def test_encode_command_writes_an_identity_file(models_dir, encoder, detector, tmp_path):
    Image.fromarray(photo(5, 5)).save(tmp_path / "me.png")
    Image.fromarray(photo(9, 4)).save(tmp_path / "me2.png")
    r = run_cli("encode", "--image", str(tmp_path / "me.png"), "--image", str(tmp_path / "me2.png"),
                "--models", str(models_dir), "--out", str(tmp_path / "me"), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path / 'me.f2d.safetensors'} (2 face(s))" in r.stdout
    ident = FaceIdentity.load(tmp_path / "me.f2d.safetensors")
    expected = encode_images(encoder, [photo(5, 5), photo(9, 4)], detector)
    torch.testing.assert_close(ident.features, expected.features)


def test_encode_command_without_models_says_what_goes_where(tmp_path):
    Image.fromarray(photo(5, 5)).save(tmp_path / "me.png")
    r = run_cli("encode", "--image", str(tmp_path / "me.png"), "--models", str(tmp_path / "nothing"),
                "--out", str(tmp_path / "me"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model files missing" in r.stderr and "msid.pt" in r.stderr and "det_10g.onnx" in r.stderr


def test_encode_command_with_an_unreadable_image(models_dir, tmp_path):
    (tmp_path / "me.jpg").write_text("not an image")
    r = run_cli("encode", "--image", str(tmp_path / "me.jpg"), "--models", str(models_dir), "--out", "x")
    assert r.returncode == 2 and "not a readable image" in r.stderr and "Traceback" not in r.stderr


def test_skip_also_leaves_out_a_photo_without_the_requested_face_index(encoder, detector):
    two = photo(2, 2)
    two[8 * 32:9 * 32, 12 * 32:13 * 32] = (255, om.STRIDE_GREEN[32], 200)  # a second, larger face
    ident = encode_images(encoder, [two, photo(5, 5)], detector, policy=1, on_no_face="skip",
                          names=["group.jpg", "solo.jpg"])
    assert [f["image"] for f in ident.meta["faces"]] == ["group.jpg"]
    assert "face index 1 was requested but 1 face(s) were found" in ident.meta["skipped"][0]["reason"]


def test_an_identity_file_with_wrong_token_shapes_is_explained(tmp_path):
    from safetensors.torch import save_file
    from f2d_core.identity.face_file import FORMAT
    p = tmp_path / "odd.f2d.safetensors"
    save_file({"features": torch.zeros(1536), "s1": torch.zeros(1024), "s2": torch.zeros(768)}, str(p),
              metadata={"format": FORMAT})
    with pytest.raises(F2DError, match=r"'s1' has shape \(1024,\), expected \(768,\)"):
        FaceIdentity.load(p)


def test_the_identity_records_which_detector_found_the_faces(encoder, detector, det_path, tmp_path):
    ident = encode_images(encoder, [photo(5, 5)], detector, names=["me.jpg"])
    assert ident.meta["detector"] == "det_10g.onnx" == detector.name and detector.paths == (str(det_path),)
    back = FaceIdentity.load(ident.save(tmp_path / "me.f2d.safetensors"))
    assert back.meta["detector"] == "det_10g.onnx"  # what Save Face writes, not null
    assert encode_images(encoder, [np.zeros((112, 112, 3), np.uint8)], None).meta["detector"] is None


def test_a_detector_with_68_point_landmarks_names_both_files(det_path, tmp_path):
    lmk = om.save(om.landmark68_model(), tmp_path / "1k3d68.onnx")
    assert FaceDetector(det_path, lmk, device="cpu").name == "det_10g.onnx + 1k3d68.onnx"
