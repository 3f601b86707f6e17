"""Face photos for the runner: as they are uploaded to ComfyUI, and where they go in the prompt.

One photo is uploaded unchanged. Several photos of different sizes are letterboxed onto one
canvas size (the largest width and height, black borders, nothing scaled or cut): core
ImageBatch resizes later images to the first one's shape with a centre crop, which can cut a
face off a photo of another aspect ratio.
"""
from __future__ import annotations

import hashlib
import io
import os

from PIL import Image

from ..errors import F2DError
from ..faces.images import read_image
from .workflow import WorkflowError, find_nodes, is_link

FACE_ENCODER = "F2DEncodeFace"
FACE_INPUTS = ("image", "image_2", "image_3", "image_4")  # the encoder's photo inputs, in order


def _open(path: str):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise F2DError(f"{path}: face photo not found.") from None
    # what LoadImage will see (EXIF rotation applied, so sizes are compared after it); a damaged file stops here
    return data, Image.fromarray(read_image(path, data))


def _name(path: str, data: bytes, ext: str) -> str:
    # content-addressed, so re-runs overwrite their own upload and never a user's file
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"f2d-{hashlib.sha1(data).hexdigest()[:10]}-{stem}{ext}"


def face_uploads(paths: list[str]) -> list[tuple[str, bytes]]:
    """[(upload file name, bytes)] for the photos, letterboxed to one size when they differ."""
    opened = [(p, *_open(p)) for p in paths]
    sizes = {im.size for _, _, im in opened}
    if len(sizes) == 1:
        return [(_name(p, data, os.path.splitext(p)[1].lower() or ".png"), data) for p, data, _ in opened]
    w, h = max(s[0] for s in sizes), max(s[1] for s in sizes)
    out = []
    for p, _, im in opened:
        canvas = Image.new("RGB", (w, h))
        canvas.paste(im.convert("RGB"), ((w - im.width) // 2, (h - im.height) // 2))
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        out.append((_name(p, buf.getvalue(), ".png"), buf.getvalue()))
    return out


def face_loaders(prompt: dict) -> list[str]:
    """The LoadImage nodes whose images reach F2DEncodeFace (directly or through ImageBatch
    and other nodes): those behind `image` first, then `image_2`..`image_4`, each in node id order."""
    encoders = find_nodes(prompt, FACE_ENCODER)
    if len(encoders) != 1:
        raise WorkflowError(f"the runner fills in the photos of one person, so the workflow needs exactly one "
                            f"{FACE_ENCODER} node; this one has {len(encoders)}. Use face2diffusion_basic.json (or another "
                            "one-person workflow); run two-person workflows in ComfyUI.")
    inputs, found, seen = prompt[encoders[0]]["inputs"], [], set()
    for slot in FACE_INPUTS:
        behind, todo = [], [inputs.get(slot)]
        while todo:
            link = todo.pop()
            if not is_link(link) or link[0] in seen or link[0] not in prompt:
                continue
            seen.add(link[0])
            node = prompt[link[0]]
            if node["class_type"] == "LoadImage":
                behind.append(link[0])
            else:
                todo += list(node["inputs"].values())
        found += sorted(behind, key=lambda k: (len(k), k))
    if not found:
        raise WorkflowError(f"no LoadImage node feeds {FACE_ENCODER}'s image, so there is nowhere to put --face.")
    return found


def check_face_count(loaders: list[str], count: int) -> None:
    if len(loaders) > 1 and len(loaders) != count:
        raise WorkflowError(f"this workflow takes exactly {len(loaders)} face photos (LoadImage nodes "
                            f"{', '.join(loaders)}) but {count} --face were given. Give {len(loaders)}, or use "
                            "face2diffusion_basic.json, which takes any number.")


def place_faces(prompt: dict, loaders: list[str], names: list[str]) -> None:
    """One face LoadImage: it takes every photo (batched). Several: one photo each, in face_loaders order."""
    check_face_count(loaders, len(names))
    if len(loaders) == 1:
        return add_faces(prompt, loaders[0], names)
    for loader, name in zip(loaders, names):
        prompt[loader]["inputs"]["image"] = name


def add_faces(prompt: dict, loader: str, names: list[str]) -> None:
    """Point the face LoadImage at names[0]; batch names[1:] into the same place with ImageBatch."""
    prompt[loader]["inputs"]["image"] = names[0]
    if len(names) == 1:
        return
    ids = iter(str(i) for i in range(max([int(k) for k in prompt if k.isdigit()] or [0]) + 1, 10**9)
               if str(i) not in prompt)
    consumers = [(n, k) for n in prompt.values() for k, v in n["inputs"].items() if v == [loader, 0]]
    last = [loader, 0]
    for k, name in enumerate(names[1:], 2):
        load, batch = next(ids), next(ids)
        prompt[load] = {"inputs": {"image": name}, "class_type": "LoadImage", "_meta": {"title": f"Face photo {k}"}}
        prompt[batch] = {"inputs": {"image1": last, "image2": [load, 0]}, "class_type": "ImageBatch",
                         "_meta": {"title": f"Face photos 1-{k}"}}
        last = [batch, 0]
    for node, key in consumers:
        node["inputs"][key] = last
