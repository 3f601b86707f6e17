"""Model and output folders, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

from ..f2d_core.faces.detect import list_insightface_packs
from ..f2d_core.errors import ModelFilesMissing
from ..f2d_core.identity.face_file import list_faces
from ..f2d_core.faces.recognize import list_recognizer_packs
from ..f2d_core.weights.files import where_to_get

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


def weight_path(name: str, what: str) -> str:
    path = folder_paths.get_full_path(F2D_FOLDER, name) if name else None
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


def detector_pack_path(name: str) -> str:
    for root in insightface_roots():
        p = os.path.join(root, name)
        if os.path.isdir(p):
            return p
    raise ModelFilesMissing(
        f"detector: insightface pack {name!r} not found under "
        f"{os.path.join(folder_paths.models_dir, 'insightface', 'models')}. Unzip buffalo_l (det_10g.onnx) "
        f"or antelopev2 there, or choose '{NO_DETECTOR}' if your images are aligned face crops.")


def identity_dir() -> str:
    return os.path.join(folder_paths.get_output_directory(), F2D_FOLDER)


def identity_files() -> list[str]:
    return list_faces(identity_dir())
