"""A picture of what the detector found: every face boxed and numbered by its face index, the one
that was encoded highlighted, so a user can choose `index` without guessing.

The numbers are the order detect.index_order gives, the order select_face counts an index in
(0 = the largest face). A photo's detections are kept as a small JSON-able record (face_record),
which the identity's metadata carries, and drawn from it (preview_sheet): photos side by side at
one height, a caption under each.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .detect import Face, index_order
from .images import to_rgb_uint8

HEIGHT = 512          # px: every photo is scaled to this height on the sheet
GAP = 8               # px between photos
BACKGROUND = (24, 24, 24)
FACE_COLOUR = (255, 196, 0)     # amber: a detected face
CHOSEN_COLOUR = (0, 230, 118)   # green: the face that was encoded
TEXT_COLOUR = (0, 0, 0)         # the number, on the box's colour
CAPTION_COLOUR = (235, 235, 235)
LINE, CHOSEN_LINE = 3, 6        # outline widths in sheet pixels
FONT_SIZE = 28


def face_record(found: Sequence[Face], chosen: Face | None) -> dict:
    """{"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "chosen": k or None} with the faces in
    index order (boxes in source pixels) and k the index of `chosen` (None: none was encoded)."""
    ordered = index_order(found)
    k = next((i for i, f in enumerate(ordered) if f is chosen), None)
    return {"boxes": [[round(float(v), 1) for v in f.box] for f in ordered],
            "scores": [round(float(f.score), 4) for f in ordered], "chosen": k}


def font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def label_box(box, text: str, fnt) -> tuple[int, int, int, int]:
    """The number's tag (x1, y1, x2, y2) for a box in sheet pixels: on the box's top-left corner,
    above the box when there is room (so a small face stays visible), else inside it."""
    l, t, r, b = fnt.getbbox(text)
    w, h = (r - l) + 10, (b - t) + 8
    x1, y1 = int(box[0]), int(box[1])
    top = y1 - h if y1 - h >= 0 else y1
    return x1, top, x1 + w, top + h


def draw_faces(image, record: dict, height: int = HEIGHT) -> Image.Image:
    """One photo scaled to `height`, its faces boxed and numbered from `record` (face_record)."""
    rgb = to_rgb_uint8(image)
    scale = height / rgb.shape[0]
    width = max(1, round(rgb.shape[1] * scale))
    pic = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(pic)
    fnt = font()
    # the chosen face last, so its outline is on top where boxes overlap
    order = sorted(range(len(record.get("boxes", []))), key=lambda i: i == record.get("chosen"))
    for i in order:
        x1, y1, x2, y2 = (round(v * scale) for v in record["boxes"][i])
        x1, y1 = max(0, x1), max(0, y1)
        x2, y2 = min(width - 1, x2), min(height - 1, y2)
        if x2 <= x1 or y2 <= y1:
            continue
        chosen = i == record.get("chosen")
        colour = CHOSEN_COLOUR if chosen else FACE_COLOUR
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=CHOSEN_LINE if chosen else LINE)
        tag = label_box((x1, y1), str(i), fnt)
        draw.rectangle(tag, fill=colour)
        l, t, _, _ = fnt.getbbox(str(i))
        draw.text((tag[0] + 5 - l, tag[1] + 4 - t), str(i), fill=TEXT_COLOUR, font=fnt)
    return pic


def caption(name: str, record: dict) -> str:
    n, k = len(record.get("boxes", [])), record.get("chosen")
    if record.get("aligned_input"):
        return f"{name}: an aligned crop (no detection)"
    if n == 0:
        return f"{name}: no face found"
    found = f"{n} face{'s' if n > 1 else ''}"
    return f"{name}: {found}, encoded #{k}" if k is not None else f"{name}: {found}, none encoded (skipped)"


def fit(text: str, fnt, width: int) -> str:
    """`text`, shortened with "..." to fit `width` pixels (a caption stays under its own photo)."""
    if fnt.getlength(text) <= width:
        return text
    while text and fnt.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def preview_sheet(images: Sequence, records: Sequence[dict], names: Sequence[str] | None = None,
                  height: int = HEIGHT) -> np.ndarray:
    """(H, W, 3) uint8: the photos side by side at `height`, GAP apart, faces drawn from their
    records, a caption under each (named by `names`, else by the records' "image")."""
    if len(images) != len(records):
        raise ValueError(f"{len(images)} images but {len(records)} face records")
    names = list(names) if names else [r.get("image") or f"image {i + 1}" for i, r in enumerate(records)]
    pics = [draw_faces(im, rec, height) for im, rec in zip(images, records)]
    fnt = font(max(12, FONT_SIZE * 3 // 4))
    band = fnt.getbbox("Ag")[3] + 12
    width = sum(p.width for p in pics) + GAP * (len(pics) - 1)
    sheet = Image.new("RGB", (width, height + band), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x = 0
    for pic, rec, name in zip(pics, records, names):
        sheet.paste(pic, (x, 0))
        draw.text((x + 6, height + 6), fit(caption(name, rec), fnt, pic.width - 12), fill=CAPTION_COLOUR, font=fnt)
        x += pic.width + GAP
    return np.array(sheet)  # a writable copy: torch.from_numpy warns on a read-only one
