"""Before anything runs: is every file the workflow names available on the server?

Generic on purpose: every combo value in the API prompt that is not among that combo's choices in
/object_info is collected (checkpoints, the F2D encoder files, LoRAs, ...), and all of them are
reported in one message that says where each file goes.
"""
from __future__ import annotations

import os

from ..errors import ModelFilesMissing
from ..weights.files import layout_help
from .workflow import combo_options, input_specs, is_link, spec_options

FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "CheckpointLoader": "checkpoints", "LoraLoader": "loras",
           "LoraLoaderModelOnly": "loras", "VAELoader": "vae", "CLIPLoader": "text_encoders",
           "ControlNetLoader": "controlnet", "CLIPVisionLoader": "clip_vision",
           "UpscaleModelLoader": "upscale_models"}


def unavailable(prompt: dict, object_info: dict, skip=frozenset()) -> list[tuple[str, dict, str, object, list]]:
    """(node id, node, input, value, choices) for each combo value the server does not offer."""
    found = []
    for nid, node in prompt.items():
        info = object_info.get(node.get("class_type"))
        for name, spec, _ in input_specs(info or {}):
            options = combo_options(spec)
            value = node["inputs"].get(name)
            if (options is None or (nid, name) in skip or name not in node["inputs"] or is_link(value)
                    or (not options and spec_options(spec).get("remote"))):
                continue
            if value not in options:
                found.append((nid, node, name, value, options))
    return found


def _is_f2d(class_type: str) -> bool:
    return class_type.startswith(("F2D", "LoadF2D"))


def _choices(options: list, limit: int = 8) -> str:
    if not options:
        return "nothing"
    shown = ", ".join(map(repr, options[:limit]))
    return shown + (f", ... ({len(options)} in all)" if len(options) > limit else "")


def check_models(prompt: dict, object_info: dict, models_dir: str, server: str, skip=frozenset()) -> None:
    bad = unavailable(prompt, object_info, skip)
    if not bad:
        return
    lines, f2d = [f"the workflow needs files or values that ComfyUI at {server} does not have:"], False
    for nid, node, name, value, options in bad:
        ctype = node["class_type"]
        where = f"  - {value!r} for {ctype}.{name} (node {nid})"
        if _is_f2d(ctype):
            f2d = True
            lines.append(f"{where}: a Face2Diffusion file, see below (there now: {_choices(options)})")
        elif ctype in FOLDERS:
            extra = "; or pick one with --checkpoint NAME" if ctype.startswith("CheckpointLoader") and options else ""
            lines.append(f"{where}: put it in {os.path.join(models_dir, FOLDERS[ctype])}{os.sep} "
                         f"(there now: {_choices(options)}){extra}")
        elif ctype.startswith("LoadImage"):
            lines.append(f"{where}: put it in ComfyUI's input folder (there now: {_choices(options)})")
        else:
            lines.append(f"{where}: not one of its choices ({_choices(options)})")
    if f2d:
        lines.append("Face2Diffusion files go here:\n" + layout_help(models_dir))
    lines.append("Then run this again.")
    raise ModelFilesMissing("\n".join(lines))
