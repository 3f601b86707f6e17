"""ComfyUI glue for the Face2Diffusion engine (f2d_core): thin V3 nodes, one family per module."""
from comfy_api.v0_0_2 import ComfyExtension, io

from .encode import F2DEncodeFace
from .expression import F2DExpressionEmbed
from .face_files import F2DLoadFace, F2DSaveFace
from .inject import F2DInjectFaceToken
from .loader import LoadF2DEncoder
from .paths import register_folders
from .similarity import F2DFaceSimilarity

NODES = [LoadF2DEncoder, F2DEncodeFace, F2DExpressionEmbed, F2DInjectFaceToken, F2DSaveFace, F2DLoadFace,
         F2DFaceSimilarity]

# ComfyExtension.on_load is never called by ComfyUI 0.3.64, so register at import
register_folders()


class Face2DiffusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> Face2DiffusionExtension:
    return Face2DiffusionExtension()
