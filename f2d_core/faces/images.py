"""Bring any image a user can hand us to one form: uint8 RGB, HWC, contiguous.

to_rgb_uint8 takes arrays: numpy arrays or torch tensors, uint8 (0..255) or float (0..1,
ComfyUI's IMAGE), shaped HW (gray), HWC with C in {1, 3, 4}, or 1HWC (a batch of one).
Gray is repeated to RGB; RGBA drops alpha, as PIL's convert("RGB") does in the official
pipeline.

read_image takes files, and sees what ComfyUI's LoadImage sees, so the CLI, the runner and
the scorer encode the same pixels as the nodes (see its docstring for the two deliberate
differences). check_photo refuses images that cannot hold a usable face: blank, saturated, or
filled in below a point (a truncated file, as Load Image decodes it).
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import F2DError, NoFaceError

# A photo of a face spreads its levels widely (tens of levels of standard deviation); JPEG noise on a
# flat colour is about one level. Below this in every channel the image is one flat colour.
BLANK_STD = 2.0
# Share of pure white (255, 255, 255) pixels above which an image is saturated: ComfyUI's LoadImage
# clips a 16-bit grayscale PNG to this (99.6% white for a full-range gradient). A face on a pure
# white backdrop still leaves far more than 5% of the picture not pure white.
SATURATED_FRACTION = 0.95
_CHECK_PIXELS = 1 << 20  # the checks look at about a million pixels, every n-th row and column
# What Pillow leaves in the rows a truncated file no longer holds when ComfyUI's Load Image decodes it
# anyway (ImageFile.LOAD_TRUNCATED_IMAGES): libjpeg's fill for a baseline JPEG is mid grey, the PNG
# decoder leaves zeros. Every pixel of those rows is exactly that colour, which a photo, with its
# noise, never is over whole rows; TRUNCATED_MIN_ROWS is one JPEG block row (8 px, 16 subsampled).
TRUNCATED_FILL = {(128, 128, 128): "grey", (0, 0, 0): "black"}
TRUNCATED_MIN_ROWS = 8


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
    arr = image
    if hasattr(arr, "detach"):  # torch tensor, without importing torch here
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise F2DError(
            f"{name}: expected an image shaped (H, W), (H, W, 1|3|4) or (1, H, W, 3), got shape "
            f"{tuple(np.shape(image))}. Pass one RGB photo (a ComfyUI IMAGE is [B, H, W, 3] floats; "
            "index the batch first).")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise F2DError(f"{name}: the image is empty (shape {arr.shape}).")
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise F2DError(f"{name}: the image contains NaN or infinite values.")
        # rint, not truncation: ComfyUI's k/255 floats must come back as exactly k. One float32
        # copy worked on in place: half the time of fresh arrays per step (17 ms at 2048 px)
        out = arr.astype(np.float32)
        np.clip(out, 0.0, 1.0, out=out)
        out *= 255.0
        np.rint(out, out=out)
        out = out.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.min() < 0 or arr.max() > 255:
            raise F2DError(f"{name}: integer pixels must lie in 0..255, got {arr.min()}..{arr.max()}.")
        out = arr.astype(np.uint8)
    else:
        raise F2DError(f"{name}: unsupported pixel type {arr.dtype}; use uint8 0..255 or float 0..1.")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def as_list(images) -> list:
    """A list of single images from a list/tuple, a ComfyUI IMAGE batch [B, H, W, C], or one image."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if hasattr(images, "ndim") and images.ndim == 4:
        return [images[i] for i in range(images.shape[0])]
    return [images]


def read_image(path, data: bytes | None = None) -> np.ndarray:
    """The photo in a file as ComfyUI's LoadImage gives it to a node: uint8 RGB, HWC.

    Like LoadImage (ComfyUI nodes.py): the EXIF orientation is applied (ImageOps.exif_transpose,
    so phone photos stand upright), 32-bit integer images ('I') are scaled by 1/255 as it does,
    and every other mode goes through PIL's convert("RGB"): palette images ('P', transparency
    ignored), RGBA and LA (alpha dropped, not composited), CMYK, '1', 'L'. Only the first frame
    is read (LoadImage batches the frames of an animation; a photo has one).
    Two deliberate differences, both of which LoadImage would turn into silent wrong pixels:
    - 16-bit grayscale ('I;16*', e.g. a 16-bit PNG) is scaled 0..65535 -> 0..255; LoadImage
      clips it, which makes nearly every pixel white (check_photo then refuses it in the node).
    - A truncated or damaged file is an error naming it; LoadImage fills the missing part.
    data: the file's bytes when the caller has already read them (path then only names it).
    """
    name = os.fspath(path)
    if data is None:
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise F2DError(f"{name}: image not found. Check the path.") from None
        except IsADirectoryError:
            raise F2DError(f"{name}: is a folder, not an image file. Give the photo's file.") from None
        except OSError as e:
            raise F2DError(f"{name}: cannot be read ({e.strerror or e}).") from None
    try:
        im = Image.open(io.BytesIO(data))
        im = ImageOps.exif_transpose(im)  # LoadImage's own call; it also decodes the pixels
        im.load()
    except UnidentifiedImageError:  # its own message names the BytesIO, not the file
        raise F2DError(f"{name}: not a readable image (not in an image format Pillow knows). "
                       "Use a JPEG or PNG photo.") from None
    except Image.DecompressionBombError as e:
        raise F2DError(f"{name}: too large to read safely ({e}). Scale the photo down first.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        what = "truncated (the file ends early)" if "truncated" in str(e).lower() else "damaged"
        raise F2DError(f"{name}: the image file is {what}: {e}. Copy or export the photo again; "
                       "a partly decoded photo would give a wrong identity.") from None
    return pil_to_rgb(im)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image as uint8 RGB HWC, converted as read_image describes."""
    if im.mode.startswith("I;16"):
        levels = np.asarray(im).astype(np.uint32)
        gray = ((levels * 255 + 32767) // 65535).astype(np.uint8)  # rounded, 65535 -> 255 exactly
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode == "I":
        im = im.point(lambda i: i * (1 / 255))  # LoadImage's rule for 'I', kept to see what it sees
    return np.array(im.convert("RGB"))


def check_photo(rgb: np.ndarray, name: str = "image") -> None:
    """Refuse an image no face can be taken from: saturated (over SATURATED_FRACTION pure white, with
    some pixels that are not: a 16-bit PNG through Load Image), blank (one flat colour, BLANK_STD), or
    decoded from a truncated file (a bottom band of TRUNCATED_FILL). NoFaceError, so
    on_no_face="skip" can leave it out."""
    step = max(1, math.isqrt(rgb.shape[0] * rgb.shape[1] // _CHECK_PIXELS))
    sample = rgb[::step, ::step]
    white = float((sample == 255).all(axis=-1).mean())
    if white > SATURATED_FRACTION:
        # before "blank": a 16-bit photo keeps its darkest pixels, too few to count as spread
        white_px = int((rgb == 255).all(axis=-1).sum())
        total = rgb.shape[0] * rgb.shape[1]
        if white_px < total:
            share = (f"{white_px / total:.1%} of its pixels are" if white_px / total < 0.9995
                     else f"all but {total - white_px} of its {total} pixels are")
            raise NoFaceError(
                f"{name} is saturated: {share} pure white. ComfyUI's Load Image does this to 16-bit grayscale "
                "PNGs; save the photo as an 8-bit PNG or a JPEG and load that (an over-exposed photo cannot be "
                "used either).")
    spread = float(sample.reshape(-1, sample.shape[-1]).std(axis=0).max())
    if spread < BLANK_STD:
        colour = tuple(int(v) for v in np.median(sample.reshape(-1, sample.shape[-1]), axis=0))
        raise NoFaceError(
            f"{name} is blank: the whole image is one flat colour RGB{colour} (spread {spread:.1f} levels, a "
            f"photo has tens). Connect the photo of the person; if it comes from another node, check that "
            "node's output.")
    check_not_truncated(rgb, name)


def check_not_truncated(rgb: np.ndarray, name: str = "image") -> None:
    """NoFaceError when the image's bottom rows are exactly one TRUNCATED_FILL colour, at least
    TRUNCATED_MIN_ROWS of them, while its top rows and its left and right columns above them are not
    (a letterboxed picture has bars at both ends, a padded one down a side too): what Load Image
    shows of a file cut short, with the face possibly in the missing part."""
    height = rgb.shape[0]
    fill = tuple(int(v) for v in rgb[-1, 0])
    if fill not in TRUNCATED_FILL or height < 2 * TRUNCATED_MIN_ROWS:
        return
    rows = 0
    while rows < height and (rgb[height - 1 - rows] == fill).all():
        rows += 1
    if rows < TRUNCATED_MIN_ROWS or rows == height or (rgb[:TRUNCATED_MIN_ROWS] == fill).all():
        return
    above = rgb[:height - rows]
    if (above[:, :1] == fill).all() or (above[:, -1:] == fill).all():
        return
    raise NoFaceError(
        f"{name} looks cut off: its lower {rows} of {height} rows (from y={height - rows} down) are exactly one flat "
        f"{TRUNCATED_FILL[fill]} RGB{fill}, which is what ComfyUI's Load Image fills in for the missing part of a "
        "truncated file. Copy or export the photo again (the file ends early) and load that; a partly decoded "
        "photo would give a wrong identity. (If the photo really ends in a flat bar, crop it off.)")


def photos_from_inputs(inputs) -> tuple[list, list[str], list[bool]]:
    """([photo, ...], [name, ...], [batched, ...]) from several image inputs, [(input name, images or
    None), ...], each a list, a batch or one image, kept as they are: photos of different sizes are
    never resized or cropped to each other (core Batch Images would crop them). Names say where a
    photo came from: "image 2 of 3" with one input, "image_2" or "image_2, photo 1 of 2" with several.
    batched: True for a photo after the first of one input's batch, which core Batch Images may have
    cropped to the first one's size (identity.picking says so when it holds no usable face)."""
    given = [(label, as_list(images)) for label, images in inputs if images is not None]
    photos = [p for _, batch in given for p in batch]
    batched = [k > 0 for _, batch in given for k in range(len(batch))]
    if len(given) == 1:
        return photos, [f"image {k} of {len(photos)}" for k in range(1, len(photos) + 1)], batched
    names = [label if len(batch) == 1 else f"{label}, photo {k} of {len(batch)}"
             for label, batch in given for k in range(1, len(batch) + 1)]
    return photos, names, batched
