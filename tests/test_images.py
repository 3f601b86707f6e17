"""Photo files as the engine reads them (faces.images.read_image): what ComfyUI's LoadImage gives a
node, so the CLI, the runner and the scorer see the same pixels as the nodes; and the photos no
face can come from (check_photo). LoadImage itself cannot be imported without ComfyUI: `load_image`
below repeats its conversion line for line (ComfyUI 0.3.64 nodes.py, LoadImage.load_image, first
frame); tests/host/test_nodes_host.py runs the real one."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

import recognizer_onnx as ro
from conftest import SHARED
from f2d_core.errors import F2DError, NoFaceError
from f2d_core.faces.images import (BLANK_STD, SATURATED_FRACTION, check_photo, photos_from_inputs, read_image,
                                   to_rgb_uint8)

ORIENTATION = 0x0112  # the EXIF tag; 6: the stored picture is shown turned 90 degrees clockwise


def pillow(fn, arg):
    """ComfyUI's node_helpers.pillow, copied: on a decoding error, retry with LOAD_TRUNCATED_IMAGES."""
    prev_value = None
    try:
        x = fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        prev_value = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        x = fn(arg)
    finally:
        if prev_value is not None:
            ImageFile.LOAD_TRUNCATED_IMAGES = prev_value
    return x


def load_image(path) -> np.ndarray:
    """ComfyUI LoadImage's pixels (uint8, before its /255), copied from its code."""
    i = pillow(ImageOps.exif_transpose, pillow(Image.open, path))
    if i.mode == 'I':
        i = i.point(lambda i: i * (1 / 255))
    return np.array(i.convert("RGB"))


def load_image_tensor(path) -> np.ndarray:
    """What a node receives from LoadImage: float32 [1, H, W, 3] in 0..1."""
    return (load_image(path).astype(np.float32) / 255.0)[None]


def scene(h=120, w=200, seed=0) -> np.ndarray:
    """An upright picture whose every row and column differs, so any turn or flip shows."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (-(-h // 8), -(-w // 8), 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return np.ascontiguousarray(img[:h, :w])


def phone_photo(path, upright: np.ndarray, fmt="JPEG") -> str:
    """Save `upright` the way a phone held upright does: pixels stored turned a quarter to the left,
    EXIF orientation 6 saying to turn them back."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.rot90(upright)).save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return str(path)


def test_exif_orientation_6_is_applied_as_load_image_does(tmp_path):
    path = phone_photo(tmp_path / "phone.jpg", scene())
    got = read_image(path)
    assert got.shape == (120, 200, 3) and got.dtype == np.uint8  # upright: the stored file is 200 x 120
    assert np.array_equal(got, load_image(path))
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert stored.shape == (200, 120, 3)


def test_a_png_phone_photo_comes_back_exactly_upright(tmp_path):
    upright = scene()
    assert np.array_equal(read_image(phone_photo(tmp_path / "phone.png", upright, "PNG")), upright)


def sixteen_bit_gray(path) -> np.ndarray:
    levels = np.linspace(0, 65535, 64 * 256).round().astype(np.uint16).reshape(64, 256)
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode == "I;16"
    return levels


def test_16_bit_grayscale_is_scaled_to_8_bits_not_saturated(tmp_path):
    levels = sixteen_bit_gray(tmp_path / "gray16.png")
    got = read_image(tmp_path / "gray16.png")
    expected = np.floor(levels.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(got, np.repeat(expected[:, :, None], 3, axis=2))
    assert got.min() == 0 and got.max() == 255 and abs(got.mean() - 127.5) < 0.5
    check_photo(got, "gray16.png")  # a usable photo


def test_a_16_bit_photo_white_but_for_a_few_dark_pixels_gets_the_16_bit_hint_not_blank(tmp_path):
    """A real 16-bit photo keeps only its darkest pixels (levels under 255 of 65535) through Load Image:
    too few to count as spread, so it must not be called one flat colour."""
    levels = np.full((400, 400), 30000, np.uint16)
    levels[::97, ::89] = 100  # 25 near-black pixels
    Image.fromarray(levels).save(tmp_path / "scan16.png")
    host = load_image(tmp_path / "scan16.png")
    assert (host != 255).any(axis=2).sum() == 25
    with pytest.raises(NoFaceError, match=r"^scan16\.png is saturated: all but 25 of its 160000 pixels are pure "
                                          r"white\. ComfyUI's Load Image does this to 16-bit grayscale PNGs; save the "
                                          r"photo as an 8-bit PNG or a JPEG"):
        check_photo(to_rgb_uint8(load_image_tensor(tmp_path / "scan16.png")), "scan16.png")
    with pytest.raises(NoFaceError, match=r"^white\.png is blank: the whole image is one flat colour "
                                          r"RGB\(255, 255, 255\)"):  # all white: nothing says 16-bit
        check_photo(np.full((400, 400, 3), 255, np.uint8), "white.png")


def truncated(tmp_path, fmt: str, keep: float) -> str:
    """A real face photo saved as `fmt` and cut to `keep` of its bytes, as an interrupted copy leaves it."""
    buf = io.BytesIO()
    Image.open(SHARED / "faces" / "f2d_input_0.jpg").convert("RGB").save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[:int(len(buf.getvalue()) * keep)])
    return str(path)


@pytest.mark.parametrize("fmt, fill", [("JPEG", r"grey RGB\(128, 128, 128\)"), ("PNG", r"black RGB\(0, 0, 0\)")])
def test_a_photo_load_image_decoded_from_a_truncated_file_is_refused_with_the_cause(tmp_path, fmt, fill):
    path = truncated(tmp_path, fmt, 0.7)
    image = to_rgb_uint8(load_image_tensor(path))  # the pixels Encode Face gets from Load Image
    with pytest.raises(NoFaceError, match=rf"^image looks cut off: its lower \d+ of 512 rows \(from y=\d+ down\) "
                                          rf"are exactly one flat {fill}, which is what ComfyUI's Load Image fills in "
                                          r"for the missing part of a truncated file\. Copy or export the photo again "
                                          r"\(the file ends early\) and load that"):
        check_photo(image, "image")
    with pytest.raises(F2DError, match="truncated"):  # the engine's own reader refuses the file itself
        read_image(path)


def test_photos_ending_in_a_flat_bar_of_their_own_pass():
    photo = read_image(SHARED / "faces" / "f2d_input_0.jpg")
    check_photo(photo)
    padded = np.zeros((700, 600, 3), np.uint8)  # padded right and below, as pad nodes do
    padded[:512, :512] = photo
    check_photo(padded)
    letterboxed = np.full((700, 512, 3), 128, np.uint8)  # grey bars above and below
    letterboxed[94:606] = photo
    check_photo(letterboxed)
    check_photo(photo[:, :, ::-1][::-1].copy())  # its own dark edge at the bottom is not one exact colour


def test_load_image_saturates_16_bit_grayscale_and_check_photo_says_so(tmp_path):
    """What the node receives from ComfyUI's own LoadImage for the same file."""
    sixteen_bit_gray(tmp_path / "gray16.png")
    host = load_image(tmp_path / "gray16.png")
    assert (host == 255).all(axis=2).mean() > 0.99
    with pytest.raises(NoFaceError, match=r"^gray16\.png is saturated: 99\.6% of its pixels are pure white\. "
                                          r"ComfyUI's Load Image does this to 16-bit grayscale PNGs; save the photo "
                                          r"as an 8-bit PNG or a JPEG"):
        check_photo(host, "gray16.png")


def test_32_bit_integer_images_follow_load_image(tmp_path):
    levels = np.linspace(0, 65535, 32 * 64).astype(np.int32).reshape(32, 64)
    Image.fromarray(levels, mode="I").save(tmp_path / "int32.tif")
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    got = read_image(tmp_path / "int32.tif")
    assert np.array_equal(got, load_image(tmp_path / "int32.tif"))
    assert np.abs(got[:, :, 0] - np.minimum(levels / 255, 255)).max() <= 1  # LoadImage's 1/255, not 1/257


def palette_with_transparency():
    im = Image.fromarray(scene(48, 64)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.info["transparency"] = 0
    return im


@pytest.mark.parametrize("make, fmt", [
    (palette_with_transparency, "PNG"),
    (lambda: Image.fromarray(np.dstack([scene(48, 64), np.full((48, 64), 7, np.uint8)])), "PNG"),  # RGBA
    (lambda: Image.fromarray(scene(48, 64)).convert("LA"), "PNG"),
    (lambda: Image.fromarray(scene(48, 64)).convert("CMYK"), "JPEG"),
    (lambda: Image.fromarray(scene(48, 64)).convert("L"), "PNG"),
    (lambda: Image.fromarray(scene(48, 64)).convert("1"), "PNG"),
], ids=["P+transparency", "RGBA", "LA", "CMYK", "L", "1"])
def test_other_modes_become_the_rgb_load_image_makes(tmp_path, make, fmt):
    im = make()
    path = tmp_path / f"photo.{fmt.lower()}"
    im.save(path, fmt)
    got = read_image(path)
    assert got.shape == (48, 64, 3) and got.dtype == np.uint8
    assert np.array_equal(got, load_image(path))


def test_the_first_frame_of_an_animation_is_read(tmp_path):
    frames = [Image.fromarray(scene(32, 32, seed=s)).convert("P") for s in (1, 2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.array_equal(read_image(tmp_path / "anim.gif"), np.array(frames[0].convert("RGB")))


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, "JPEG")
    return buf.getvalue()


def test_a_truncated_photo_is_an_error_naming_it(tmp_path):
    """LoadImage would fill the missing rows with grey and encode them (LOAD_TRUNCATED_IMAGES)."""
    data = jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(F2DError, match=rf"^{tmp_path / 'cut.jpg'}: the image file is truncated \(the file ends "
                                       r"early\): image file is truncated .*Copy or export the photo again"):
        read_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("content, message", [
    (b"not an image", r"not a readable image \(not in an image format Pillow knows\)\. Use a JPEG or PNG photo\."),
    (None, r"image not found\. Check the path\."),
    ("folder", r"is a folder, not an image file"),
])
def test_unreadable_files_are_errors_naming_them(tmp_path, content, message):
    path = tmp_path / "me.jpg"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(F2DError, match=rf"^{path}: {message}"):
        read_image(path)


def test_bytes_already_read_are_decoded_and_the_path_only_names_them(tmp_path):
    with pytest.raises(F2DError, match=r"^elsewhere/me\.jpg: not a readable image"):
        read_image("elsewhere/me.jpg", b"garbage")
    assert read_image("elsewhere/me.jpg", jpeg_bytes()).shape == (120, 200, 3)


# --- photos no face can come from ------------------------------------------------------------

@pytest.mark.parametrize("colour", [(0, 0, 0), (128, 128, 128), (255, 255, 255), (200, 30, 30)])
def test_a_flat_image_is_refused_as_blank(colour):
    flat = np.empty((64, 80, 3), np.uint8)
    flat[:] = colour
    with pytest.raises(NoFaceError, match=rf"^image 2 of 3 is blank: the whole image is one flat colour "
                                          rf"RGB{re.escape(str(colour))} \(spread 0\.0 levels, a photo has tens\)\. "
                                          r"Connect the photo of the person"):
        check_photo(flat, "image 2 of 3")


def test_jpeg_noise_on_a_flat_colour_is_still_blank():
    flat = np.full((200, 200, 3), 120, np.uint8)
    flat += np.random.default_rng(0).integers(0, 3, flat.shape, dtype=np.uint8)  # +-1 level
    assert flat.std() < BLANK_STD
    with pytest.raises(NoFaceError, match="is blank"):
        check_photo(flat)


def test_real_photos_and_letterboxed_or_white_backdrop_ones_pass():
    photo = read_image(SHARED / "faces" / "f2d_input_0.jpg")
    check_photo(photo)
    letterboxed = np.zeros((2000, 2000, 3), np.uint8)  # 98.6% black borders, as a padded batch has
    letterboxed[:photo.shape[0] // 2, :photo.shape[1] // 2] = photo[::2, ::2]
    check_photo(letterboxed)
    backdrop = np.full((1000, 1000, 3), 255, np.uint8)  # a passport-style pure white background
    backdrop[700:, 400:650] = photo[:300, :250]
    assert (backdrop == 255).all(axis=2).mean() < SATURATED_FRACTION
    check_photo(backdrop)


# --- several photos, several sizes ---------------------------------------------------------------

def test_photos_from_several_inputs_keep_their_sizes_and_say_where_they_came_from():
    a, b, c = scene(100, 80), scene(60, 200), scene(120, 120)
    batch = np.stack([c, c])
    photos, names, batched = photos_from_inputs([("image", a), ("image_2", b), ("image_3", None), ("image_4", batch)])
    assert [p.shape for p in photos] == [(100, 80, 3), (60, 200, 3), (120, 120, 3), (120, 120, 3)]
    assert np.array_equal(photos[1], b)  # never resized or cropped to the first
    assert names == ["image", "image_2", "image_4, photo 1 of 2", "image_4, photo 2 of 2"]
    assert batched == [False, False, False, True]  # only a later photo of one input's batch


def test_one_input_keeps_the_batch_names():
    photos, names, batched = photos_from_inputs([("image", np.stack([scene(), scene()])), ("image_2", None)])
    assert len(photos) == 2 and names == ["image 1 of 2", "image 2 of 2"] and batched == [False, True]


# --- the runner and the scorer read photos the same way --------------------------------------------

def test_the_runner_letterboxes_a_16_bit_photo_with_its_real_levels(tmp_path):
    from f2d_core.client.uploads import face_uploads
    levels = sixteen_bit_gray(tmp_path / "gray16.png")
    Image.fromarray(scene(100, 100)).save(tmp_path / "other.png")
    (name, data), _ = face_uploads([str(tmp_path / "gray16.png"), str(tmp_path / "other.png")])
    canvas = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert canvas.shape == (100, 256, 3)
    top = (100 - 64) // 2
    assert np.array_equal(canvas[top:top + 64], read_image(tmp_path / "gray16.png"))
    assert canvas[top:top + 64, :, 0].mean() == pytest.approx(levels.mean() / 257, abs=0.5)


def test_the_runner_reports_a_truncated_photo_by_name(tmp_path):
    from f2d_core.client.uploads import face_uploads
    data = jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(F2DError, match=rf"^{tmp_path / 'cut.jpg'}: the image file is truncated"):
        face_uploads([str(tmp_path / "cut.jpg")])


def test_the_scorer_compares_with_the_face_photo_upright(tmp_path):
    """A generated image equal to the upright photo scores 1 against the phone photo it came from."""
    from f2d_core.evaluate.identity_models import ArcFaceIdentity
    from f2d_core.evaluate.jobs import Face, make_jobs
    from f2d_core.evaluate.scoring import Scorer
    upright = scene(240, 160, seed=3)
    face = Face("anna", (phone_photo(tmp_path / "anna.png", upright, "PNG"),))
    jobs = [j for j in make_jobs([face], ["a photo of f l as a chef"], [0]) if not j.is_reference]
    out = tmp_path / "out"
    (out / "images" / "anna").mkdir(parents=True)
    Image.fromarray(upright).save(jobs[0].path(str(out)))
    backend = ArcFaceIdentity(ro.make_pack(tmp_path / "pack"), device="cpu")
    row, = Scorer({"arcface": backend}).score(jobs, str(out))
    assert row["arcface"] == pytest.approx(1.0, abs=1e-5)
    sideways = backend.embed(np.asarray(Image.open(face.photos[0]).convert("RGB")))
    assert float(sideways @ backend.embed(upright)) < 0.99  # what reading it without EXIF scored
