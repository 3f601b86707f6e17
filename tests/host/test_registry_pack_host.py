"""The registry archive alone, unpacked into a real ComfyUI's custom_nodes, registers every node."""
import re
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from registry_pack import REPO, comfy_cli, pack  # noqa: E402

NODE_IDS = sorted({m for f in (REPO / "nodes").glob("*.py")
                   for m in re.findall(r'node_id="(\w+)"', f.read_text())})


@pytest.mark.skipif(comfy_cli() is None, reason="comfy-cli is not installed in this python (pip install comfy-cli)")
def test_the_unpacked_archive_alone_registers_every_node(comfyui_path, comfy_home, tmp_path):
    from .comfy_server import ComfyServer
    unpacked = tmp_path / "face2diffusion"
    with zipfile.ZipFile(pack(tmp_path)) as z:
        z.extractall(unpacked)
    assert not (unpacked / "tests").exists() and not (unpacked / "f2d_core" / "client").exists()
    with ComfyServer(comfyui_path, comfy_home / "archive", custom_nodes={"face2diffusion": unpacked}) as server:
        server.require_nodes(NODE_IDS)
        assert len(NODE_IDS) >= 7 and "F2DInjectFaceToken" in NODE_IDS
