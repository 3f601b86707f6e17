"""Where the model files live, and one message that says what goes where when they do not.

The layout is ComfyUI's `models/` folder, so the same folder serves the nodes, the CLI
and the headless runner:
    models/face2diffusion/msid.pt (or .safetensors)
    models/face2diffusion/mapping.pt (or .safetensors)
    models/insightface/models/<pack>/det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx (antelopev2)
    models/face2diffusion/epoch_20.pth (optional: Deep3DFaceRecon, for expressions from photos)
"""
from __future__ import annotations

import hashlib
import ntpath
import os
import posixpath

from ..errors import ModelFilesMissing

F2D_FOLDER = "face2diffusion"
INSIGHTFACE_FOLDER = os.path.join("insightface", "models")
MSID_URL = "https://drive.google.com/file/d/1DjUf-ib612SDDt86TRlsDkHqXTeYx030/view"
MAPPING_URL = "https://drive.google.com/file/d/1Lf_mwMgme_HVYJCkViGr4TfGOfKw9PhE/view"
BUFFALO_L_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
DEEP3D_URL = "https://github.com/sicxu/Deep3DFaceRecon_pytorch"
PREFERRED_PACKS = ("buffalo_l", "antelopev2")
# each weight kind (weights.checkpoint.KINDS): (the file, what it is, where to get it)
SOURCES = {
    "msid": ("msid.pt", "the MSID identity encoder", MSID_URL),
    "mapping": ("mapping.pt", "the mapping network", MAPPING_URL),
    "deep3d": ("epoch_20.pth", "Deep3DFaceRecon's expression model, optional",
               f"the Google Drive folders linked in the README of {DEEP3D_URL}"),
}


def name_problem(name) -> str | None:
    """Why `name` cannot be a file or folder name inside a model folder, or None when it can.

    A node's combo value arrives from any API client, not only from the list the node offered, and
    ComfyUI 0.3.x does not check it. A name is a relative path as ComfyUI lists it ('x.pt',
    'sub/x.pt'): no '..' part, no absolute path, drive or UNC prefix (on any OS: a workflow made on
    Windows reaches Linux servers), no NUL. Checked on the text alone, so a symlink the user put
    inside the folder (models on another disk) keeps working, as with ComfyUI's own get_full_path."""
    if not isinstance(name, str) or not name.strip():
        return "it is empty"
    if "\0" in name:
        return "it holds a NUL character"
    # a leading '\\' is root-relative on Windows, though Python 3.13's ntpath.isabs says no
    if name.startswith(("/", "\\")) or posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0]:
        return "it is an absolute path"
    if any(part == ".." for part in name.replace("\\", "/").split("/")):
        return "it climbs out of the folder with '..'"
    return None


def inside(folder: str, name: str) -> str:
    """folder/name for a name that passed name_problem() (ValueError otherwise)."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{name!r} is not a name inside {folder}: {problem}")
    return os.path.join(folder, *name.replace("\\", "/").split("/"))


def file_sha256(path: str) -> str:
    """sha256 of a file, read in 1 MiB blocks (model files, photos, workflows)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first(folder: str, stem: str) -> str | None:
    for ext in (".safetensors", ".pt", ".pth"):
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def layout_help(models_dir: str) -> str:
    f2d = os.path.join(models_dir, F2D_FOLDER)
    ins = os.path.join(models_dir, INSIGHTFACE_FOLDER)
    return (f"  {os.path.join(f2d, 'msid.pt')}      MSID encoder, {MSID_URL}\n"
            f"  {os.path.join(f2d, 'mapping.pt')}   mapping network, {MAPPING_URL}\n"
            f"  {os.path.join(ins, 'buffalo_l', 'det_10g.onnx')}   face detector: unzip {BUFFALO_L_URL} "
            f"into {os.path.join(ins, 'buffalo_l')}\n"
            "(.safetensors made by `python -m f2d_core convert` work too; the Face2Diffusion weights are "
            "CC BY-NC-SA 4.0, non-commercial.)")


def where_to_get(kind: str, folder: str) -> str:
    """'Put msid.pt (the MSID identity encoder, from URL) in FOLDER' for one weight kind."""
    file, what, source = SOURCES[kind]
    return f"Put {file} ({what}, from {source}) in {folder}"


def find_models(models_dir: str, need_detector: bool = True, pack: str | None = None) -> dict:
    """{"msid": path, "mapping": path, "pack": insightface pack dir or None}; one clear error listing
    every missing file otherwise. Files directly in `models_dir` are accepted too."""
    models_dir = os.path.abspath(os.fspath(models_dir))
    if not os.path.isdir(models_dir):
        raise ModelFilesMissing(f"model files missing: the models folder {models_dir} does not exist. Give a "
                                f"ComfyUI models folder, or create one with:\n{layout_help(models_dir)}")
    found, missing = {}, []
    for stem in ("msid", "mapping"):
        p = _first(os.path.join(models_dir, F2D_FOLDER), stem) or _first(models_dir, stem)
        found[stem] = p
        if p is None:
            missing.append(f"{stem}.pt")
    found["pack"] = None
    if need_detector:
        from ..faces.detect import list_insightface_packs
        root = os.path.join(models_dir, INSIGHTFACE_FOLDER)
        packs = list_insightface_packs(root) if os.path.isdir(root) else []
        if pack is not None:
            if pack not in packs:
                missing.append(f"insightface pack {pack!r} (found: {', '.join(packs) or 'none'})")
            else:
                found["pack"] = os.path.join(root, pack)
        elif packs:
            best = next((p for p in PREFERRED_PACKS if p in packs), packs[0])
            found["pack"] = os.path.join(root, best)
        else:
            missing.append("an insightface detector pack")
    if missing:
        raise ModelFilesMissing(
            f"model files missing in {models_dir}: {', '.join(missing)}. Put them here:\n{layout_help(models_dir)}")
    return found
