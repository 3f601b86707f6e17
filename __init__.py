"""Face2Diffusion for ComfyUI: entry point read by ComfyUI's custom node loader (V3 schema).

The nodes are imported only inside ComfyUI (which always imports folder_paths before it loads
custom nodes), so tools that import this folder as a package, such as pytest collecting the
engine's tests, do not need ComfyUI.
"""
import sys

if "folder_paths" in sys.modules:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
