"""Model and output folders, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os
from typing import Callable

import folder_paths

from ..f2d_core.faces.detect import list_insightface_packs
from ..f2d_core.errors import ModelFilesMissing
from ..f2d_core.identity.face_file import list_faces
from ..f2d_core.faces.recognize import list_recognizer_packs
from ..f2d_core.weights.files import BUFFALO_L_URL, name_problem, where_to_get

F2D_FOLDER = "face2diffusion"
WEIGHT_EXTENSIONS = {".pt", ".pth", ".safetensors"}
NO_DETECTOR = "none: images are already aligned 112x112 crops"
SLOT_KINDS = {"msid": "msid", "mapping": "mapping", "expression_model": "deep3d"}  # loader input -> weight kind


def register_folders() -> None:
    """Add models/face2diffusion behind any path a user's extra_model_paths.yaml gave it. The folder
    lists every file (no extension set); weight_files() keeps the weights."""
    folder_paths.add_model_folder_path(F2D_FOLDER, os.path.join(folder_paths.models_dir, F2D_FOLDER))


def weight_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(F2D_FOLDER)
            if os.path.splitext(f)[1].lower() in WEIGHT_EXTENSIONS]


def default_file(files: list[str], stem: str) -> str | None:
    for f in files:
        if os.path.splitext(os.path.basename(f))[0] == stem:
            return f
    return files[0] if files else None


def _outside(name, what: str, where: str, expected: str) -> str | None:
    """Why a value does not name something inside its registered folder (message), or None. Checked
    before any file is looked at; the message lists nothing outside the folder. None is a linked input
    at validation time (checked when the node runs)."""
    if name is None:
        return None
    problem = name_problem(name)
    if problem:
        return (f"{what}: {name!r} is not {expected} inside {where}: {problem}. Values name files by their place "
                f"in that folder, as the node's list shows them; pick one from the list (press R to refresh).")
    return None


def weight_refusal(name, what: str) -> str | None:
    return _outside(name, what, " or ".join(folder_paths.get_folder_paths(F2D_FOLDER)), "a file")


def pack_refusal(name, what: str) -> str | None:
    """Packs are single folders directly in models/insightface/models: no path at all."""
    where = os.path.join(folder_paths.models_dir, "insightface", "models")
    refusal = _outside(name, what, where, "an insightface pack folder")
    if refusal is None and ("/" in name or "\\" in name or name == "."):
        refusal = (f"{what}: {name!r} is not an insightface pack name: a pack is one folder directly in {where} "
                   f"(e.g. buffalo_l). Pick one from the list (press R to refresh).")
    return refusal


def validation(*refusals) -> str | bool:
    """For a node's validate_inputs: True, or the first refusal. Only values outside their folder are
    refused there; a name that is merely missing passes, so the node's run says which file, where it
    goes and where it comes from (on ComfyUI >= 0.8, validate_inputs also replaces the host's own
    'Value not in list' check for these inputs, which would stop before that message)."""
    return next((r for r in refusals if r), True)


def weight_path(name: str, what: str) -> str:
    refusal = weight_refusal(name, what) if name is not None else f"{what}: no file chosen"
    if refusal:
        raise ModelFilesMissing(refusal)
    path = folder_paths.get_full_path(F2D_FOLDER, name)
    if path is None:
        folders = folder_paths.get_folder_paths(F2D_FOLDER)
        found = ", ".join(weight_files()) or "nothing"
        raise ModelFilesMissing(
            f"{what}: {name!r} is not in {' or '.join(folders)} (found: {found}). "
            f"{where_to_get(SLOT_KINDS[what], folders[0])}, then press R in ComfyUI to refresh the lists.")
    return path


def insightface_roots() -> list[str]:
    """Folders holding insightface model packs: models/insightface/models (the layout InstantID,
    PuLID and ReActor use) plus any 'insightface' folder registered by extra_model_paths.yaml."""
    bases = [os.path.join(folder_paths.models_dir, "insightface")]
    if "insightface" in folder_paths.folder_names_and_paths:
        bases += folder_paths.get_folder_paths("insightface")
    roots = []
    for b in bases:
        for r in (os.path.join(b, "models"), b):
            if os.path.isdir(r) and r not in roots:
                roots.append(r)
    return roots


def detector_packs() -> list[str]:
    names = []
    for root in insightface_roots():
        names += [n for n in list_insightface_packs(root) if n not in names]
    return names


def recognizer_packs() -> list[str]:
    """Packs with both a detector and a recognition model (w600k_r50.onnx, glintr100.onnx, ...)."""
    names = []
    for root in insightface_roots():
        names += [n for n in list_recognizer_packs(root) if n not in names]
    return names


def _pack_path(name: str, what: str, listed: Callable[[], list[str]], need: str) -> str:
    """The folder of a pack: one plain folder name in an insightface root (anything else is refused
    before it is looked at). A pack folder that exists but lacks a file is returned, so the loader's
    finders can say what is missing in it. `listed` scans every pack, so only a failure calls it."""
    refusal = pack_refusal(name, what) if name is not None else f"{what}: no pack chosen"
    if refusal:
        raise ModelFilesMissing(refusal)
    for root in insightface_roots():
        p = os.path.join(root, name)
        if os.path.isdir(p):
            return p
    raise ModelFilesMissing(
        f"{what}: insightface pack {name!r} not found under "
        f"{os.path.join(folder_paths.models_dir, 'insightface', 'models')} (found: {', '.join(listed()) or 'none'}). "
        f"{need}")


def detector_pack_path(name: str) -> str:
    return _pack_path(name, "detector", detector_packs,
                      f"Unzip insightface's buffalo_l ({BUFFALO_L_URL}: det_10g.onnx) or antelopev2 there, "
                      f"or choose '{NO_DETECTOR}' if your images are aligned face crops.")


def recognizer_pack_path(name: str) -> str:
    return _pack_path(name, "recognizer", recognizer_packs,
                      f"Unzip insightface's buffalo_l ({BUFFALO_L_URL}: det_10g.onnx + w600k_r50.onnx) or "
                      "antelopev2 (scrfd_10g_bnkps.onnx + glintr100.onnx) there.")


def identity_dir() -> str:
    return os.path.join(folder_paths.get_output_directory(), F2D_FOLDER)


def face_refusal(name) -> str | None:
    return _outside(name, "name", identity_dir(), "a saved face")


def identity_files() -> list[str]:
    return list_faces(identity_dir())
