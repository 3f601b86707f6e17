"""ComfyUI imported into the test process: CPU forced, every folder it reads or writes moved
into a temp dir, and the pack loaded as a package under a fixed name.

Nothing here is imported at module level from ComfyUI: this module is only imported by
fixtures, after the conftest has checked that ComfyUI can be imported at all."""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACK_MODULE = "face2diffusion_pack"
FOLDERS = ("output", "input", "temp", "user")
# keys ComfyUI's SD1 text encoder has that a CLIPTextModel state dict does not carry
# (the SD1 pooled output is unprojected, so neither is used)
UNUSED_CLIP_KEYS = {"text_projection.weight", "logit_scale"}


def import_comfy(comfy_path: Path):
    """Put ComfyUI on sys.path and import it CPU-only; returns its `folder_paths` module."""
    comfy_path = str(Path(comfy_path).resolve())
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    import comfy.options
    comfy.options.enable_args_parsing(False)  # pytest's argv is not ComfyUI's
    import comfy.cli_args
    if "comfy.model_management" in sys.modules and not comfy.cli_args.args.cpu:
        raise RuntimeError("comfy.model_management was imported before CPU was forced: import "
                           "ComfyUI through the comfy_inprocess fixture only")
    comfy.cli_args.args.cpu = True  # read once, when comfy.model_management is imported
    import comfy.model_management
    import folder_paths
    if Path(folder_paths.__file__).resolve().parent != Path(comfy_path):
        raise RuntimeError(f"imported folder_paths from {folder_paths.__file__}, not from {comfy_path}")
    return folder_paths


def isolate_folders(folder_paths, home: Path, models_dir: Path | None = None) -> dict:
    """Point every folder under ComfyUI's base path (models, custom_nodes, output, input, temp,
    user) at the same layout under `home` (models at `models_dir` if given), so tests neither
    read the checkout's models nor write into it. Returns {"models": ..., "output": ..., ...}."""
    home = Path(home)
    models = Path(models_dir) if models_dir else home / "models"
    old_base = os.path.abspath(folder_paths.base_path)
    old_models = os.path.abspath(folder_paths.models_dir)
    dirs = {"models": models, **{n: home / n for n in FOLDERS}}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    def move(p):
        for old, new in ((old_models, models), (old_base, home)):
            if os.path.commonpath([old, os.path.abspath(p)]) == old:
                return str(new / os.path.relpath(p, old))
        return p

    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        folder_paths.folder_names_and_paths[name] = ([move(p) for p in paths], exts)
    folder_paths.base_path = str(home)
    folder_paths.models_dir = str(dirs["models"])
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    folder_paths.set_user_directory(str(dirs["user"]))
    folder_paths.filename_list_cache.clear()
    return dirs


def load_pack(repo: Path, name: str = PACK_MODULE):
    """Import the repo root as a package called `name`, the way ComfyUI imports a custom-node
    directory (its __init__.py, relative imports resolved inside it). Loaded once per process."""
    if name in sys.modules:
        return sys.modules[name]
    init = Path(repo) / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"{init} not found: ComfyUI imports a node pack through its root "
                                "__init__.py, which must expose comfy_entrypoint")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(repo)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def pack_nodes(module) -> dict:
    """{node_id: class} from the module's V3 comfy_entrypoint, as ComfyUI registers them."""
    from comfy_api.v0_0_2 import ComfyExtension

    async def collect():
        ext = module.comfy_entrypoint()
        if inspect.isawaitable(ext):
            ext = await ext
        if not isinstance(ext, ComfyExtension):
            raise TypeError(f"comfy_entrypoint returned {type(ext).__name__}, not a ComfyExtension")
        return await ext.get_node_list()

    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(collect())}


@dataclass
class ComfyInProcess:
    """ComfyUI imported into this process. `dirs` holds the temp folders ComfyUI now uses."""
    path: Path
    repo: Path
    dirs: dict
    folder_paths: object = field(repr=False)
    pack_name: str = PACK_MODULE

    @property
    def models_dir(self) -> Path:
        return self.dirs["models"]

    def load_pack(self):
        return load_pack(self.repo, self.pack_name)

    def pack_nodes(self) -> dict:
        return pack_nodes(self.load_pack())


def sd1_clip_from_text_model(state_dict: dict):
    """comfy.sd.CLIP (SD1) from a CLIP-L text-model state dict, through the loader ComfyUI's
    CLIPLoader uses. Keys may be transformers <5 style (`text_model.*`), transformers 5 style
    (no prefix) or checkpoint style (`cond_stage_model.transformer.`/`clip_l.` prefixes).
    Raises unless every weight ComfyUI's SD1 encoder uses was loaded from `state_dict`: the
    loader itself only logs missing keys and leaves them uninitialised."""
    import torch
    import comfy.sd
    import comfy.utils
    import folder_paths

    sd = dict(state_dict)
    for prefix in ("cond_stage_model.transformer.", "clip_l.transformer.", "cond_stage_model.", "clip_l."):
        if any(k.startswith(prefix) for k in sd):
            sd = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
            break
    if not any(k.startswith("text_model.") for k in sd):  # transformers 5 drops the prefix
        sd = {"text_model." + k: v for k, v in sd.items()}
    clip = comfy.sd.load_text_encoder_state_dicts(
        [dict(sd)], embedding_directory=folder_paths.get_folder_paths("embeddings"),
        clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    loaded = clip.cond_stage_model.clip_l.transformer.state_dict()
    missing = set(loaded) - set(sd) - UNUSED_CLIP_KEYS
    if missing:
        raise ValueError(f"CLIP state dict lacks {len(missing)} weights ComfyUI uses, e.g. {sorted(missing)[:3]}")
    wrong = [k for k in loaded if k in sd and sd[k].is_floating_point()
             and not torch.equal(loaded[k], sd[k].to(loaded[k].dtype))]
    if wrong:
        raise ValueError(f"ComfyUI's CLIP holds other values than the state dict for {wrong[:3]}")
    return clip


def clip_of_family(family: str):
    """comfy.sd.CLIP of another family ("sdxl": tokenize gives g and l; "sd2": h) with its
    real tokenizer and its encoder built on the meta device: it tokenizes like the real thing
    and has the real module tree (shapes included) but holds no weights, so encoding raises."""
    import torch
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip as sd2_clip

    tokenizer, model = {"sdxl": (comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
                        "sd2": (sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)}[family]
    return comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer, model),
                         model_options={"initial_device": torch.device("meta")})
