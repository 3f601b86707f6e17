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


def faceless(size=300):
    """A photo with no face for the test detector (red 0 everywhere), not blank: a blue gradient."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:, :, 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
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
        encode_images(encoder, [photo(5, 5), faceless()], detector, names=["me.jpg", "holiday.jpg"])


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
    assert encode_images(encoder, [photo(1, 1)[:112, :112]], None).meta["detector"] is None


def test_a_detector_with_68_point_landmarks_names_both_files(det_path, tmp_path):
    lmk = om.save(om.landmark68_model(), tmp_path / "1k3d68.onnx")
    assert FaceDetector(det_path, lmk, device="cpu").name == "det_10g.onnx + 1k3d68.onnx"


# --- photos no face can be taken from (issue 10 item 5) ------------------------------------------

def sixteen_bit_as_load_image_gives_it(tmp_path):
    """A 16-bit grayscale PNG through ComfyUI LoadImage's conversion (convert("RGB") clips 'I;16')."""
    levels = np.linspace(0, 65535, 256 * 256).astype(np.uint16).reshape(256, 256)
    Image.fromarray(levels).save(tmp_path / "gray16.png")
    return np.array(Image.open(tmp_path / "gray16.png").convert("RGB"))


def test_a_blank_photo_is_refused_by_name(encoder, detector):
    grey = np.full((300, 300, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match=r"^grey\.png is blank: the whole image is one flat colour "
                                          r"RGB\(128, 128, 128\)"):
        encode_images(encoder, [photo(5, 5), grey], detector, names=["me.jpg", "grey.png"])
    with pytest.raises(NoFaceError, match=r"^image 1 of 1 is blank"):  # aligned crops are checked too
        encode_images(encoder, [np.zeros((112, 112, 3), np.uint8)], None)


def test_a_saturated_photo_is_refused_by_name_with_the_16_bit_cause(encoder, detector, tmp_path):
    white = sixteen_bit_as_load_image_gives_it(tmp_path)
    with pytest.raises(NoFaceError, match=r"^image 2 of 2 is saturated: 99\.6% of its pixels are pure white\. "
                                          r"ComfyUI's Load Image does this to 16-bit grayscale PNGs"):
        encode_images(encoder, [photo(5, 5), white], detector)


def tiny_face_photo():
    """One 16x16 face (a stride-8 cell of the test detector) in a 640 photo."""
    img = photo(0, 0)
    img[:32, :32] = 0
    return om.paint_face(img, 8, 20, 20)


def test_a_face_under_min_face_px_is_refused_by_name(encoder, detector):
    assert max(detector.detect(tiny_face_photo())[0].box[2:] - detector.detect(tiny_face_photo())[0].box[:2]) < 32
    with pytest.raises(NoFaceError, match=r"^small\.jpg: the face is only 16x16 pixels \(at x=156, y=158\); "
                                          r"faces under 32 pixels on their longer side are too small to encode "
                                          r"\(the 112x112 crop would be mostly upscaled blur\)\. Use a photo where "
                                          r"the face is larger, or set min_face_px to 0 to allow any size\.$"):
        encode_images(encoder, [tiny_face_photo()], detector, names=["small.jpg"])


def test_min_face_px_0_or_lower_allows_a_small_face(encoder, detector):
    assert encode_images(encoder, [tiny_face_photo()], detector, min_face_px=0).num_faces == 1
    assert encode_images(encoder, [tiny_face_photo()], detector, min_face_px=16).num_faces == 1
    with pytest.raises(NoFaceError, match="the face is only 94x94 pixels"):  # the option cuts both ways
        encode_images(encoder, [photo(5, 5)], detector, min_face_px=100)
    with pytest.raises(F2DError, match="min_face_px must be 0 .any size. or more, got -1"):
        encode_images(encoder, [photo(5, 5)], detector, min_face_px=-1)


def test_skip_leaves_blank_saturated_and_tiny_photos_out_with_their_reasons(encoder, detector, tmp_path):
    ident = encode_images(encoder, [np.zeros((64, 64, 3), np.uint8), sixteen_bit_as_load_image_gives_it(tmp_path),
                                    tiny_face_photo(), photo(5, 5)], detector, on_no_face="skip",
                          names=["black.png", "gray16.png", "small.jpg", "me.jpg"])
    assert ident.num_faces == 1 and [f["image"] for f in ident.meta["faces"]] == ["me.jpg"]
    reasons = {s["image"]: s["reason"] for s in ident.meta["skipped"]}
    assert "black.png is blank" in reasons["black.png"] and "gray16.png is saturated" in reasons["gray16.png"]
    assert "the face is only 16x16 pixels" in reasons["small.jpg"]


# --- one phone photo, the CLI and the node see the same face ---------------------------------------

def phone_photo(path, upright):
    """`upright` as a phone stores it: pixels turned a quarter to the left, EXIF orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(path, "JPEG", quality=95, exif=exif)
    return str(path)


def textured_photo(h=480, w=640):
    """One face (a stride-32 cell) on a background with detail around it, red kept under the
    detector's 0.5 score."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    img[:, :, 0] //= 3
    img[3 * 32:4 * 32, 12 * 32:13 * 32] = (255, om.STRIDE_GREEN[32], 60)
    return img


def test_an_exif_rotated_phone_photo_gives_the_cli_and_the_node_the_same_crop(models_dir, encoder, detector,
                                                                              tmp_path):
    """CLI: `encode` on the file. Node: ComfyUI LoadImage's conversion (nodes.py: exif_transpose,
    convert("RGB"), /255) into what F2DEncodeFace calls. ComfyUI itself: tests/host."""
    from PIL import ImageOps
    upright = textured_photo()
    path = phone_photo(tmp_path / "phone.jpg", upright)
    r = run_cli("encode", "--image", path, "--models", str(models_dir), "--out", str(tmp_path / "me"),
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    cli = FaceIdentity.load(tmp_path / "me.f2d.safetensors")
    loaded = np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(np.float32) / 255.0
    node = encode_images(encoder, torch.from_numpy(loaded)[None], detector)
    assert torch.equal(cli.aligned, node.aligned)
    torch.testing.assert_close(cli.features, node.features)
    sideways = encode_images(encoder, [np.asarray(Image.open(path).convert("RGB"))], detector)
    assert (sideways.aligned.float() - node.aligned.float()).abs().mean() > 5  # what ignoring EXIF gave


def test_encode_command_refuses_a_truncated_photo(models_dir, tmp_path):
    Image.fromarray(photo(5, 5)).save(tmp_path / "me.jpg", quality=95)
    data = (tmp_path / "me.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    r = run_cli("encode", "--image", str(tmp_path / "cut.jpg"), "--models", str(models_dir), "--out",
                str(tmp_path / "x"), "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'cut.jpg'}: the image file is truncated (the file ends early)" in r.stderr


def test_encode_command_min_face_px_allows_a_small_face(models_dir, tmp_path):
    Image.fromarray(tiny_face_photo()).save(tmp_path / "small.png")
    args = ["encode", "--image", str(tmp_path / "small.png"), "--models", str(models_dir), "--out",
            str(tmp_path / "s"), "--device", "cpu"]
    r = run_cli(*args)
    assert r.returncode == 2 and "small.png: the face is only 16x16 pixels" in r.stderr
    r = run_cli(*args, "--min-face-px", "0")
    assert r.returncode == 0, r.stderr


# --- photos core Batch Images cut to the first one's size (issue 21) ------------------------------

def batch_images(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
    """ComfyUI's core Batch Images (nodes.py ImageBatch.batch with comfy.utils.common_upscale, bilinear,
    centre crop), copied line for line: ComfyUI cannot be imported here."""
    if image1.shape[1:] != image2.shape[1:]:
        samples, width, height = image2.movedim(-1, 1), image1.shape[2], image1.shape[1]
        old_width, old_height = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_width / old_height, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        s = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
        image2 = torch.nn.functional.interpolate(s, size=(height, width), mode="bilinear").movedim(1, -1)
    return torch.cat((image1, image2), dim=0)


def as_load_image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).float()[None] / 255.0


def wide_photo(face_x: int, face_size: int = 32, wall=None) -> np.ndarray:
    """A 640x1920 photo: a face (a painted square, a stride-32 cell for the test detector where it
    sees the picture at 640 px: 96 px in the whole photo, 32 px in a 640 crop) at x=face_x, y=288, on
    a textured background the test detector sees no face in, or on a plain wall (one colour with a
    level of noise)."""
    img = np.zeros((640, 1920, 3), np.uint8)
    img[:, :, 2] = np.linspace(0, 255, 1920, dtype=np.uint8)[None, :]
    img[::3, ::2, 1] = 90
    if wall is not None:
        img[:] = wall
        img[::2, ::3] += 1
    img[288:288 + face_size, face_x:face_x + face_size] = (255, om.STRIDE_GREEN[32], 60)
    return img


def encode_as_the_node_does(encoder, detector, image, **inputs):
    from f2d_core.faces.images import photos_from_inputs
    photos, names, batched = photos_from_inputs([("image", image), *inputs.items()])
    return encode_images(encoder, photos, detector, names=names, batched=batched)


BATCH_HINT = (r"image 2 of 2 came after the first image of one batch: core Batch Images resizes and centre-crops "
              r"every later image to the first one's size, which cuts the face out of a photo of another shape\. "
              r"Connect each photo to its own input instead \(image_2\.\.image_4 of Encode Face\), which keeps "
              r"every photo whole\.$")


def test_a_wide_photo_batch_images_cut_the_face_from_is_refused_naming_the_cause_and_image_2(encoder, detector):
    wide = wide_photo(face_x=96, face_size=96)  # the face near the left end: Batch Images keeps x 640..1280
    batch = batch_images(as_load_image(photo(5, 5)), as_load_image(wide))
    with pytest.raises(NoFaceError, match=r"^No face found in image 2 of 2\..* " + BATCH_HINT):
        encode_as_the_node_does(encoder, detector, batch)
    ident = encode_as_the_node_does(encoder, detector, as_load_image(photo(5, 5)), image_2=as_load_image(wide))
    assert ident.num_faces == 2  # the fix the message gives: the same photo on image_2 is used whole


def test_a_plain_wall_left_by_batch_images_is_blank_with_the_cause(encoder, detector):
    batch = batch_images(as_load_image(photo(5, 5)), as_load_image(wide_photo(face_x=96, face_size=96,
                                                                                  wall=(180, 170, 160))))
    with pytest.raises(NoFaceError, match=r"^image 2 of 2 is blank: the whole image is one flat colour "
                                          r"RGB\(180, 170, 160\).* " + BATCH_HINT):
        encode_as_the_node_does(encoder, detector, batch)
    from f2d_core.faces.images import photos_from_inputs
    photos, names, batched = photos_from_inputs([("image", batch)])
    skipped = encode_images(encoder, photos, detector, names=names, batched=batched, on_no_face="skip").meta["skipped"]
    assert [s["image"] for s in skipped] == ["image 2 of 2"] and "core Batch Images" in skipped[0]["reason"]


def test_a_face_batch_images_cut_by_the_edge_is_refused_not_encoded(encoder, detector):
    """The test detector boxes a face 2 cells wide around its painted cell (0.5 cell to its left): a face
    painted where Batch Images' crop begins keeps its cell, but its box is cut by the left edge."""
    batch = batch_images(as_load_image(photo(5, 5)), as_load_image(wide_photo(face_x=640)))
    with pytest.raises(NoFaceError, match=r"^image 2 of 2: the face found is cut by the image's left edge \(25% of its "
                                          r"box lies outside the image\), so only part of it could be encoded\. "
                                          + BATCH_HINT):
        encode_as_the_node_does(encoder, detector, batch)


def test_faces_at_the_edge_of_separate_photos_and_whole_batches_are_still_encoded(encoder, detector):
    edge = np.ascontiguousarray(wide_photo(face_x=640)[:, 640:1280])  # the same pixels, given on their own
    assert encode_as_the_node_does(encoder, detector, as_load_image(photo(5, 5)),
                                   image_2=as_load_image(edge)).num_faces == 2
    same_size = batch_images(as_load_image(photo(5, 5)), as_load_image(photo(9, 4)))  # nothing cropped
    assert encode_as_the_node_does(encoder, detector, same_size).num_faces == 2
