"""The runner against a REAL ComfyUI (COMFYUI_PATH=<checkout>, run with its python; see conftest).

The first tests start their own server with start_server and need no model files (LoadImage ->
ImageBatch -> SaveImage, and a tiny raising test double, F2DHostProbeRaise, written to a temp
custom_nodes folder). The last ones run workflows/face2diffusion_basic.json through the runner on
the conftest's comfy_server (this pack, recipe weights, the synthetic detector, a tiny SD1.5).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from f2d_core.client.comfy import ExecutionFailed, PromptRejected
from f2d_core.client.server import guess_python, start_server
from f2d_core.errors import ModelFilesMissing
from f2d_core.client.uploads import face_uploads
from f2d_core.client.model_check import check_models
from f2d_core.client.uploads import add_faces
from f2d_core.client.workflow import to_api

pytestmark = pytest.mark.host
COMFYUI = os.environ.get("COMFYUI_PATH")
DATA = Path(__file__).resolve().parents[1] / "data"
PROBE = '''
class F2DHostProbeRaise:
    """Test double: raises the message it is given."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "message": ("STRING", {"default": "boom"})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"
    def run(self, image, message):
        raise ValueError(message)
NODE_CLASS_MAPPINGS = {"F2DHostProbeRaise": F2DHostProbeRaise}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not COMFYUI:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout (and COMFYUI_PYTHON to its Python) to run host tests")
    tmp = tmp_path_factory.mktemp("host")
    (tmp / "nodes" / "f2d_host_probe").mkdir(parents=True)
    (tmp / "nodes" / "f2d_host_probe" / "__init__.py").write_text(PROBE)
    (tmp / "extra.yaml").write_text(f"f2dhost:\n  base_path: {tmp}\n  custom_nodes: nodes\n")
    (tmp / "user").mkdir()
    # every folder and the database in tmp, and only the probe pack: nothing is written into the checkout
    args = ["--cpu", "--extra-model-paths-config", str(tmp / "extra.yaml"), "--output-directory", str(tmp / "out"),
            "--input-directory", str(tmp / "in"), "--temp-directory", str(tmp), "--user-directory", str(tmp / "user"),
            "--database-url", f"sqlite:///{tmp / 'user' / 'comfyui.db'}",
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", "f2d_host_probe"]
    python = os.environ.get("COMFYUI_PYTHON") or guess_python(COMFYUI)
    with start_server(COMFYUI, python=python, extra_args=args, log_path=str(tmp / "comfyui.log")) as s:
        s.client.open_ws()
        yield s


def photo(path, size):
    Image.new("RGB", size, (90, 120, 200)).save(path)
    return str(path)


def save_graph(names):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "?"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f2dhost"}}}
    add_faces(prompt, "1", names)
    return prompt


def test_default_workflow_is_valid_for_the_real_server_but_for_its_checkpoint(server):
    info = server.client.object_info()
    api = to_api(json.loads((DATA / "default_workflow_ui.json").read_text()), info)
    with pytest.raises(ModelFilesMissing, match=r"'v1-5-pruned-emaonly.safetensors' for CheckpointLoaderSimple"):
        check_models(api, info, "ComfyUI/models", server.url)
    with pytest.raises(PromptRejected, match=r"node 4 \(CheckpointLoaderSimple\): Value not in list: ckpt_name"):
        server.client.queue_prompt(api)


@pytest.mark.parametrize("websocket", [True, False])
def test_uploaded_photos_are_batched_and_saved_images_come_back(server, tmp_path, websocket):
    faces = [photo(tmp_path / "a.png", (64, 48)), photo(tmp_path / "b.png", (40, 72))]
    names = [server.client.upload_image(data, name) for name, data in face_uploads(faces)]
    client, events = server.client, []
    ws, client.ws = client.ws, (client.ws if websocket else None)
    try:
        entry = client.wait(client.queue_prompt(save_graph(names)), on_event=lambda k, d: events.append(k))
    finally:
        client.ws = ws
    images = entry["outputs"]["2"]["images"]
    assert len(images) == 2  # ImageBatch made one batch of both photos
    png = client.view(images[0]["filename"], images[0]["subfolder"], images[0]["type"])
    assert Image.open(io.BytesIO(png)).size == (64, 72)
    assert ("executing" in events) == websocket


def test_a_node_error_comes_back_with_its_message(server, tmp_path):
    (name, data), = face_uploads([photo(tmp_path / "c.png", (16, 16))])
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": server.client.upload_image(data, name)}},
              "2": {"class_type": "F2DHostProbeRaise", "inputs": {"image": ["1", 0], "message": "placeholder missing"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    with pytest.raises(ExecutionFailed, match=r"node 2 \(F2DHostProbeRaise\): ValueError: placeholder missing"):
        server.client.wait(server.client.queue_prompt(prompt))


def test_the_readme_command_on_a_torch_without_cuda_says_to_add_cpu(tmp_path, capsys):
    """The main job without --cpu where ComfyUI's torch has no CUDA (this CPU-only host's): the real
    ComfyUI stops at start with torch's AssertionError, and the runner's message names the fix."""
    import torch
    if not COMFYUI:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run host tests")
    if torch.backends.cuda.is_built():
        pytest.skip("this ComfyUI's torch is a CUDA build: ComfyUI does not stop on it")
    from f2d_core.client.run import main
    from .conftest import REPO
    # everything ComfyUI writes goes to tmp_path; no custom node is loaded (it stops before any)
    (tmp_path / "user").mkdir()
    keep_out = (f"--disable-all-custom-nodes --input-directory {tmp_path / 'in'} --temp-directory {tmp_path} "
                f"--user-directory {tmp_path / 'user'} --database-url sqlite:///{tmp_path / 'user' / 'comfyui.db'}")
    rc = main(["--comfyui", COMFYUI, "--python", os.environ.get("COMFYUI_PYTHON") or guess_python(COMFYUI),
               "--workflow", str(REPO / "workflows" / "face2diffusion_basic.json"), "--prompt", "a photo of f l",
               "--face", photo(tmp_path / "me.png", (64, 64)), "--out", str(tmp_path / "out"),
               "--comfyui-args", keep_out])
    err = capsys.readouterr().err
    assert rc == 2 and "ComfyUI exited while starting" in err
    assert "AssertionError: Torch not compiled with CUDA enabled\nComfyUI's torch cannot use a GPU on this machine" in err
    assert "Add --cpu to the command to run on the CPU" in err


def painted_face(path, size):
    """A photo the synthetic test detector (tests.synthetic_onnx) sees one face in."""
    import numpy as np
    from synthetic_onnx import paint_face
    image = np.zeros((size[1], size[0], 3), np.uint8)
    paint_face(image, 32, 8, 8, scale=640 / max(size))
    Image.fromarray(image).save(path)
    return str(path)


def run_basic(server, tmp_path, faces, *extra):
    from f2d_core.client.run import main
    from .conftest import CHECKPOINT_NAME, REPO
    argv = ["--server", server.url, "--workflow", str(REPO / "workflows" / "face2diffusion_basic.json"),
            "--checkpoint", CHECKPOINT_NAME, "--steps", "1", "--width", "64", "--height", "64",
            "--out", str(tmp_path / "out")]
    for f in faces:
        argv += ["--face", f]
    return main(argv + list(extra))


def test_basic_workflow_end_to_end_with_the_pack(comfy_server, tmp_path, capsys):
    rc = run_basic(comfy_server, tmp_path, [painted_face(tmp_path / "me.png", (640, 640))],
                   "--prompt", "a photo of f l", "--seeds", "2", "--seed", "3")
    assert rc == 0, capsys.readouterr().err
    a, b = (Image.open(tmp_path / "out" / f"me_00_{s}.png") for s in (3, 4))
    assert a.size == b.size == (64, 64) and a.tobytes() != b.tobytes()  # SaveImage's, not the preview crop


def test_several_photos_go_through_image_batch_into_the_encoder(comfy_server, tmp_path, capsys):
    # 640x576 is letterboxed by 32 px, one stride-32 cell, so the painted face stays detectable
    faces = [painted_face(tmp_path / "a.png", (640, 640)), painted_face(tmp_path / "b.png", (640, 576))]
    assert run_basic(comfy_server, tmp_path, faces, "--prompt", "f l smiling") == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "a_00_0.png").is_file()


def test_multi_reference_workflow_gets_one_photo_per_load_image(comfy_server, tmp_path, capsys):
    from .conftest import REPO
    faces = [painted_face(tmp_path / f"p{i}.png", (640, 640)) for i in range(3)]
    rc = run_basic(comfy_server, tmp_path, faces, "--prompt", "f l hiking",
                   "--workflow", str(REPO / "workflows" / "face2diffusion_multi_reference.json"))
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "p0_00_0.png").is_file()


def test_a_prompt_without_the_trigger_is_refused_before_it_is_queued_and_the_node_says_why(comfy_server, tmp_path,
                                                                                           capsys):
    from types import SimpleNamespace
    from f2d_core.client import run as runner
    from f2d_core.client.comfy import ComfyClient, ExecutionFailed
    from f2d_core.client.workflow import load_workflow
    from .conftest import CHECKPOINT_NAME, REPO
    face = painted_face(tmp_path / "me.png", (640, 640))
    rc = run_basic(comfy_server, tmp_path, [face], "--prompt", "a chef")
    err = capsys.readouterr().err
    assert rc == 2 and "every prompt needs the words 'f l' where the person goes; 1 do(es) not: 'a chef'" in err
    # queued anyway, past the runner's check: the node's own message comes back
    client = ComfyClient(comfy_server.url)
    args = SimpleNamespace(face=[face], steps=1, width=64, height=64, checkpoint=CHECKPOINT_NAME)
    plan = runner.prepare(client, args, load_workflow(REPO / "workflows" / "face2diffusion_basic.json"),
                          "ComfyUI/models")
    with pytest.raises(ExecutionFailed, match=r"\(F2DInjectFaceToken\).*'f l'"):
        runner.render(client, plan, "a chef", 0, str(tmp_path), "x", timeout=300)
    assert not list(tmp_path.glob("x*"))


# --- no fake results against the real server --------------------------------------------------

def two_branches(name):
    """LoadImage -> SaveImage (valid) beside LoadImage -> ImageScale(width 99999) -> SaveImage (invalid)."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f2dgood"}},
            "3": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                          "width": 99999, "height": 64, "crop": "disabled"}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "f2dbad"}}}


def test_node_errors_on_http_200_from_the_real_server_are_a_rejection(server, tmp_path):
    (name, data), = face_uploads([photo(tmp_path / "d.png", (16, 16))])
    prompt = two_branches(server.client.upload_image(data, name))
    with pytest.raises(PromptRejected, match=r"^ComfyUI rejected part of the workflow \(it would have run only the "
                       r"rest, so it was taken off the queue and nothing was saved\)\n"
                       r"  node 3 \(ImageScale\): Value 99999 bigger than max of 16384: width$"):
        server.client.queue_prompt(prompt)  # ComfyUI answers 200 and queues node 2's branch


def test_the_real_server_runs_only_the_branch_of_the_target_output(server, tmp_path):
    (name, data), = face_uploads([photo(tmp_path / "e.png", (24, 16))])
    client = server.client
    entry = client.wait(client.queue_prompt(two_branches(client.upload_image(data, name)), targets=["2"]),
                        timeout=120)
    assert list(entry["outputs"]) == ["2"]  # node 4's invalid branch was neither validated nor run


def basic_argv(server, tmp_path, face, *extra):
    from .conftest import CHECKPOINT_NAME, REPO
    return ["--server", server.url, "--workflow", str(REPO / "workflows" / "face2diffusion_basic.json"),
            "--checkpoint", CHECKPOINT_NAME, "--width", "64", "--height", "64", "--out", str(tmp_path / "out"),
            "--face", face, "--prompt", "a photo of f l", *extra]


@pytest.mark.parametrize("option, message", [
    (["--steps", "0"], "error: --steps 0: the sampler needs at least 1 step"),
    (["--steps", "-1"], "error: --steps -1: the sampler needs at least 1 step"),
    (["--steps", "1", "--seed", "-1"], "error: --seed -1: seeds run from 0 to 18446744073709551615"),
])
def test_impossible_numbers_end_the_run_with_a_message_and_nothing_saved(comfy_server, tmp_path, capsys, option,
                                                                         message):
    from f2d_core.client.run import main
    rc = main(basic_argv(comfy_server, tmp_path, painted_face(tmp_path / "me.png", (640, 640)), *option))
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_steps_0_in_the_workflow_itself_is_comfyuis_rejection_and_nothing_is_saved(comfy_server, tmp_path, capsys):
    from f2d_core.client.run import main
    from f2d_core.client.workflow import load_workflow
    from .conftest import REPO
    api = to_api(load_workflow(REPO / "workflows" / "face2diffusion_basic.json"), comfy_server.object_info())
    (ksampler,) = [k for k, n in api.items() if n["class_type"] == "KSampler"]
    api[ksampler]["inputs"]["steps"] = 0
    (tmp_path / "zero.json").write_text(json.dumps(api))
    argv = basic_argv(comfy_server, tmp_path, painted_face(tmp_path / "me.png", (640, 640)))
    argv[argv.index("--workflow") + 1] = str(tmp_path / "zero.json")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("error: ComfyUI rejected the workflow: Prompt outputs failed validation\n"
            f"  node {ksampler} (KSampler): Value 0 smaller than min of 1: steps") in err
    assert not list((tmp_path / "out").iterdir())
