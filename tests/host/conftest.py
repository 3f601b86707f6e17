"""Fixtures for tests against a real ComfyUI (COMFYUI_PATH=<checkout>, run with ComfyUI's python).

Without COMFYUI_PATH, or under a python that lacks ComfyUI's requirements, every test in
this folder is skipped at collection with the reason, and nothing from ComfyUI is imported.

Session fixtures, cheapest first:
  comfyui_path            Path of the checkout
  comfy_home              temp base of ComfyUI's folders (models/ shared by both ways of running it)
  comfy_inprocess         ComfyInProcess: ComfyUI imported here, CPU, folders in a temp dir;
                          .load_pack() / .pack_nodes() import the repo as `face2diffusion_pack`
  f2d_pack                the pack module (`from face2diffusion_pack.nodes import ...` works after it)
  recipe_clip_state_dict  the parity recipe's CLIP-L text weights (fp32, `text_model.*` keys)
  comfy_clip_from_recipe  SD1 comfy.sd.CLIP holding them (fp16, as ComfyUI keeps CLIP on CPU)
  sdxl_like_clip, sd2_like_clip   CLIPs of other families (meta weights: tokenize only)
  tiny_sd15_checkpoint    Path of a random SD1.5-shaped checkpoint (cached across runs)
  f2d_models_dir          models dir: face2diffusion/, insightface/models/buffalo_l/, checkpoints/
  comfy_server            ComfyServer running this pack as a custom node, with f2d_models_dir
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

HOST_DIR = Path(__file__).resolve().parent
REPO = HOST_DIR.parents[1]
PACK_DIR_NAME = "face2diffusion"  # the pack's directory name under custom_nodes
SENTINEL_NODE = "LoadF2DEncoder"  # registered iff the pack imported
# a few of ComfyUI's requirements: if one is missing, this is not ComfyUI's python
COMFY_REQUIREMENTS = ("aiohttp", "yaml", "einops", "torchsde", "safetensors")
NO_PATH = "set COMFYUI_PATH to a ComfyUI checkout (and run with its python) to run the host tests"
CHECKPOINT_NAME = "tiny_sd15.safetensors"


def _cache_dir() -> Path:
    if os.environ.get("F2D_TEST_CACHE"):
        return Path(os.environ["F2D_TEST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "f2d-tests"


def skip_reason() -> str | None:
    """Why the host tests cannot run in this process, or None."""
    if not os.environ.get("COMFYUI_PATH"):
        return NO_PATH
    missing = [m for m in COMFY_REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        return (f"this python ({sys.executable}) lacks ComfyUI's requirements ({', '.join(missing)}): "
                "run pytest with ComfyUI's python, e.g. COMFYUI_PATH=<checkout> <its python> -m pytest tests/host")
    return None


def pytest_collection_modifyitems(config, items):
    reason = skip_reason()
    for item in items:
        if HOST_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.host)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a server gets the server log's tail in its report."""
    report = yield
    server_module = sys.modules.get(f"{__package__}.comfy_server")  # None until a server was made
    if report.failed and server_module:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, server_module.ComfyServer):
                report.sections.append(("ComfyUI server log", value.log_tail(80)))
    return report


# --- ComfyUI in this process --------------------------------------------------------------

@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    path = Path(os.environ["COMFYUI_PATH"]).expanduser().resolve()
    if not ((path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "folder_paths.py").is_file()):
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI checkout (expected main.py, comfy/, folder_paths.py)")
    return path


@pytest.fixture(scope="session")
def comfy_home(tmp_path_factory) -> Path:
    """Temp base for ComfyUI's folders; models/ is shared by in-process tests and the server."""
    home = tmp_path_factory.mktemp("comfy_home")
    (home / "models").mkdir()
    return home


@pytest.fixture(scope="session")
def comfy_inprocess(comfyui_path, comfy_home):
    from .comfy_inprocess import ComfyInProcess, import_comfy, isolate_folders
    folder_paths = import_comfy(comfyui_path)
    # one models dir for both ways of running ComfyUI
    dirs = isolate_folders(folder_paths, comfy_home / "inprocess", models_dir=comfy_home / "models")
    return ComfyInProcess(path=comfyui_path, repo=REPO, dirs=dirs, folder_paths=folder_paths)


@pytest.fixture(scope="session")
def f2d_pack(comfy_inprocess):
    return comfy_inprocess.load_pack()


@pytest.fixture(scope="session")
def recipe_clip_state_dict(recipe, parity) -> dict:
    """The parity recipe's CLIP-L text weights (transformers 4.30 keys, fp32)."""
    return recipe.make_state_dict("clip_text", parity[1]["seed"])


@pytest.fixture(scope="session")
def comfy_clip_from_recipe(comfy_inprocess, recipe_clip_state_dict):
    from .comfy_inprocess import sd1_clip_from_text_model
    return sd1_clip_from_text_model(recipe_clip_state_dict)


@pytest.fixture(scope="session")
def sdxl_like_clip(comfy_inprocess):
    from .comfy_inprocess import clip_of_family
    return clip_of_family("sdxl")


@pytest.fixture(scope="session")
def sd2_like_clip(comfy_inprocess):
    from .comfy_inprocess import clip_of_family
    return clip_of_family("sd2")


# --- model files ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_sd15_checkpoint(comfy_inprocess, recipe, parity, request) -> Path:
    """Random SD1.5-shaped checkpoint with the recipe's CLIP-L (see tiny_sd15.py), built once
    into the cache dir (F2D_TEST_CACHE, default ~/.cache/f2d-tests) and reused."""
    from . import tiny_sd15
    seed = parity[1]["seed"]
    recipe_sha = hashlib.sha256(Path(recipe.__file__).read_bytes()).hexdigest()
    return tiny_sd15.cached(_cache_dir(), f"recipe.py:{recipe_sha}:clip_text:{seed}",
                            lambda: request.getfixturevalue("recipe_clip_state_dict"), seed=seed)


def _link(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        dst.symlink_to(src)
    except OSError:  # no symlinks (Windows without developer mode)
        shutil.copyfile(src, dst)


@pytest.fixture(scope="session")
def f2d_models_dir(comfy_home, official_weights, tiny_sd15_checkpoint) -> Path:
    """ComfyUI-style models dir: face2diffusion/{msid,mapping}.pt (recipe weights, official
    format), insightface/models/buffalo_l/det_10g.onnx (the synthetic SCRFD detector of
    tests/synthetic_onnx.py) and checkpoints/tiny_sd15.safetensors."""
    import synthetic_onnx as om
    models = comfy_home / "models"
    _link(Path(official_weights["msid"]), models / "face2diffusion" / "msid.pt")
    _link(Path(official_weights["mapping"]), models / "face2diffusion" / "mapping.pt")
    det = models / "insightface" / "models" / "buffalo_l" / "det_10g.onnx"
    det.parent.mkdir(parents=True, exist_ok=True)
    om.save(om.scrfd_model(), det)
    _link(tiny_sd15_checkpoint, models / "checkpoints" / CHECKPOINT_NAME)
    return models


# --- ComfyUI as a server ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def comfy_server(comfyui_path, comfy_home, f2d_models_dir):
    """ComfyUI serving this repo as the custom node pack `face2diffusion`, with f2d_models_dir.
    Fails (not skips) with the import traceback when the pack's nodes are not registered."""
    from .comfy_server import ComfyServer
    server = ComfyServer(comfyui_path, comfy_home / "server", models_dir=f2d_models_dir,
                         custom_nodes={PACK_DIR_NAME: REPO})
    with server:
        server.require_nodes([SENTINEL_NODE])
        yield server
