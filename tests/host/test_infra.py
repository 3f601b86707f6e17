"""The host-test infrastructure itself: in-process ComfyUI, the test CLIPs, the tiny SD1.5
checkpoint and the server harness, each shown doing what the node tests rely on."""
from __future__ import annotations

import ast
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import CHECKPOINT_NAME, NO_PATH, REPO, SENTINEL_NODE

PROBE_NODES = '''
from comfy_api.v0_0_2 import ComfyExtension, io


class F2DProbeEcho(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="F2DProbeEcho", category="f2d_tests", is_output_node=True,
                         inputs=[io.String.Input("text")], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, text):
        if text == "fail":
            raise ValueError("probe failure on purpose")
        return io.NodeOutput(text.upper(), ui={"text": [text.upper()]})


class ProbeExtension(ComfyExtension):
    async def get_node_list(self):
        return [F2DProbeEcho]


async def comfy_entrypoint():
    return ProbeExtension()
'''


def write_probe_pack(root: Path, broken: str | None = None) -> Path:
    """A one-node V3 pack shaped like ours (root __init__.py, nodes in a submodule).
    broken="import": its __init__ fails; broken="entrypoint": its comfy_entrypoint fails."""
    root.mkdir(parents=True)
    init = {None: "from .nodes import comfy_entrypoint\n",
            "import": "import f2d_no_such_dependency\n",
            "entrypoint": "async def comfy_entrypoint():\n    import f2d_no_such_dependency\n"}[broken]
    (root / "__init__.py").write_text(init)
    (root / "nodes.py").write_text(PROBE_NODES)
    return root


def txt2img(text: str, seed: int = 0) -> dict:
    """Core nodes only: 64x64, 2 euler steps, the tiny checkpoint."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t2i"}},
    }


# --- skipping without ComfyUI ---------------------------------------------------------------

def test_without_comfyui_path_host_tests_skip_with_the_reason_and_never_import_comfyui():
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    code = ("import sys, pytest\n"
            "rc = pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', 'tests/host'])\n"
            "print('IMPORTED:', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('comfy', 'folder_paths', 'comfy_api', 'nodes', 'server')))\n"
            "sys.exit(rc)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert NO_PATH in run.stdout and " passed" not in run.stdout
    assert "IMPORTED: []" in run.stdout


# --- ComfyUI in this process ------------------------------------------------------------------

def test_inprocess_comfyui_computes_on_cpu_and_keeps_every_folder_in_temp(comfy_inprocess, comfyui_path, comfy_home):
    import comfy.model_management as mm
    folder_paths = comfy_inprocess.folder_paths
    assert mm.get_torch_device().type == "cpu" and mm.intermediate_device().type == "cpu"
    dirs = [folder_paths.get_output_directory(), folder_paths.get_input_directory(),
            folder_paths.get_temp_directory(), folder_paths.get_user_directory(), folder_paths.models_dir]
    dirs += [p for paths, _ in folder_paths.folder_names_and_paths.values() for p in paths]
    assert all(Path(d).is_relative_to(comfy_home) for d in dirs), dirs
    assert folder_paths.get_folder_paths("checkpoints") == [str(comfy_home / "models" / "checkpoints")]


def test_a_pack_is_imported_as_a_package_so_its_submodules_and_v3_nodes_load(comfy_inprocess, tmp_path):
    from .comfy_inprocess import load_pack, pack_nodes
    probe = load_pack(write_probe_pack(tmp_path / "probe"), "f2d_probe_pack")
    echo = importlib.import_module("f2d_probe_pack.nodes").F2DProbeEcho
    assert pack_nodes(probe) == {"F2DProbeEcho": echo}
    assert echo.execute(text="hi").result == ("HI",)


def test_the_repo_loads_in_process_as_face2diffusion_pack_and_sees_the_test_models(
        comfy_inprocess, f2d_pack, f2d_models_dir):
    nodes = comfy_inprocess.pack_nodes()
    assert nodes[SENTINEL_NODE].__module__.startswith("face2diffusion_pack.nodes")
    assert f2d_pack is sys.modules["face2diffusion_pack"]
    assert {"msid.pt", "mapping.pt"} <= set(comfy_inprocess.folder_paths.get_filename_list("face2diffusion"))


def test_recipe_clip_is_comfyuis_sd1_encoder_holding_the_recipe_weights(comfy_clip_from_recipe, recipe_clip_state_dict):
    import comfy.sd1_clip
    clip = comfy_clip_from_recipe
    assert type(clip.cond_stage_model) is comfy.sd1_clip.SD1ClipModel
    assert list(clip.tokenize("a photo of f l")) == ["l"]
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    assert torch.equal(table, recipe_clip_state_dict["text_model.embeddings.token_embedding.weight"].to(table.dtype))


def test_a_clip_state_dict_missing_weights_is_refused(comfy_inprocess, recipe_clip_state_dict):
    """transformers 5 keys without `text_model.` are fine; a dict that lacks a layer is not
    (ComfyUI would only log it and keep uninitialised memory)."""
    from .comfy_inprocess import sd1_clip_from_text_model
    sd = {k.removeprefix("text_model."): v for k, v in recipe_clip_state_dict.items()
          if ".layers.11." not in k}
    with pytest.raises(ValueError, match="lacks 16 weights"):
        sd1_clip_from_text_model(sd)


def test_recipe_clip_encodes_a_prompt_like_transformers(comfy_clip_from_recipe, recipe_clip_state_dict, recipe):
    """ComfyUI keeps CLIP weights in fp16 on CPU and computes in fp32, so the reference is
    transformers' CLIPTextModel on the same fp16-rounded weights."""
    from conftest import build_clip_text  # tests/conftest.py
    clip = comfy_clip_from_recipe
    tokens = clip.tokenize("a photo of a person with a red hat, studio light")
    cond = clip.encode_from_tokens_scheduled(tokens)[0][0]
    ids = torch.tensor([[t for t, _ in tokens["l"][0]]])
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in recipe_clip_state_dict.items()}
    with torch.no_grad():
        ref = build_clip_text(rounded, recipe.CLIP_TEXT_CONFIG)(input_ids=ids).last_hidden_state
    assert cond.shape == (1, 77, 768)
    torch.testing.assert_close(cond, ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("family, keys", [("sdxl", ["g", "l"]), ("sd2", ["h"])])
def test_other_family_clips_tokenize_like_their_family_and_hold_no_weights(family, keys, request):
    """Encoding with them raises (meta tensors); not tried here, since a failed load would stay
    in ComfyUI's list of loaded models for the rest of the session."""
    clip = request.getfixturevalue(f"{family}_like_clip")
    assert sorted(clip.tokenize("a photo of f l")) == keys
    sub = getattr(clip.cond_stage_model, "clip_" + keys[0])
    assert sub.transformer.get_input_embeddings().weight.is_meta


# --- the tiny SD1.5 checkpoint ----------------------------------------------------------------

def test_tiny_checkpoint_loads_as_sd15_with_no_missing_or_unexpected_weights(
        tiny_sd15_checkpoint, recipe_clip_state_dict, caplog):
    import comfy.sd
    import comfy.supported_models
    with caplog.at_level(logging.DEBUG):
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_sd15_checkpoint))
    assert type(model.model.model_config) is comfy.supported_models.SD15
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith(("unet missing", "unet unexpected", "Missing VAE keys",
                                                 "Leftover VAE keys", "left over keys"))] == []
    # the two CLIP keys SD1 never uses are always reported missing (at debug level)
    [clip_missing] = [m for m in messages if m.startswith("clip missing:")] or ["clip missing: []"]
    assert set(ast.literal_eval(clip_missing.removeprefix("clip missing:").strip())) <= {
        "clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}
    pos = clip.cond_stage_model.clip_l.transformer.text_model.embeddings.position_embedding.weight
    assert torch.equal(pos, recipe_clip_state_dict["text_model.embeddings.position_embedding.weight"].half())
    assert vae.latent_channels == 4 and vae.downscale_ratio == 8


def test_the_checkpoint_cache_reuses_its_file_and_drops_older_versions(comfy_inprocess, tmp_path, monkeypatch):
    from . import tiny_sd15
    built = []
    # the real build writes ~450 MB; the cache logic only needs a file to appear
    monkeypatch.setattr(tiny_sd15, "build", lambda path, clip_sd, seed: built.append(path) or path.write_bytes(b"x"))
    first = tiny_sd15.cached(tmp_path, "clip weights A", dict)
    assert tiny_sd15.cached(tmp_path, "clip weights A", dict) == first and built == [first]
    second = tiny_sd15.cached(tmp_path, "clip weights B", dict)
    assert second != first and list(tmp_path.iterdir()) == [second]


# --- ComfyUI as a server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe_server(comfyui_path, f2d_models_dir, tmp_path_factory):
    """The comfy_server mechanism with probe packs instead of ours: one that loads, two that
    fail (at import, and in comfy_entrypoint)."""
    from .comfy_server import ComfyServer
    packs = tmp_path_factory.mktemp("packs")
    server = ComfyServer(comfyui_path, tmp_path_factory.mktemp("probe_server"), models_dir=f2d_models_dir,
                         custom_nodes={"f2d_probe": write_probe_pack(packs / "probe"),
                                       "f2d_broken_import": write_probe_pack(packs / "b1", broken="import"),
                                       "f2d_broken_entrypoint": write_probe_pack(packs / "b2", broken="entrypoint")})
    with server:
        server.require_nodes(["F2DProbeEcho", "KSampler"])
        yield server


def test_a_pack_in_the_yaml_custom_nodes_dir_loads_and_runs(probe_server):
    assert probe_server.object_info()["F2DProbeEcho"]["python_module"] == "custom_nodes.f2d_probe"
    outputs = probe_server.queue({"1": {"class_type": "F2DProbeEcho", "inputs": {"text": "hello"}}})
    assert outputs == {"1": {"text": ["HELLO"]}}


@pytest.mark.parametrize("pack, failing_frame", [
    ("f2d_broken_import", 'f2d_broken_import/__init__.py", line 1, in <module>'),
    # ComfyUI logs no traceback for this one: the import is repeated to get it
    ("f2d_broken_entrypoint", '__init__.py", line 2, in comfy_entrypoint')], ids=["import", "entrypoint"])
def test_why_a_pack_did_not_load_is_told_with_a_traceback(probe_server, pack, failing_frame):
    report = probe_server.pack_error(pack)
    assert "Traceback (most recent call last)" in report and failing_frame in report
    assert "ModuleNotFoundError: No module named 'f2d_no_such_dependency'" in report
    assert probe_server.pack_error("f2d_probe") == ""


def test_missing_nodes_fail_with_every_pack_error(probe_server):
    from .comfy_server import ComfyHostError
    with pytest.raises(ComfyHostError, match="^F2DNodeOfABrokenPack not in /object_info") as e:
        probe_server.require_nodes(["F2DProbeEcho", "F2DNodeOfABrokenPack"])
    assert probe_server.pack_errors() in str(e.value)


def test_errors_come_back_as_prompt_errors_with_comfyuis_message(probe_server):
    from .comfy_server import PromptError
    with pytest.raises(PromptError, match="F2DProbeEcho .*ValueError: probe failure on purpose") as e:
        probe_server.queue({"1": {"class_type": "F2DProbeEcho", "inputs": {"text": "fail"}}})
    assert e.value.kind == "execution" and "traceback" in e.value.details
    with pytest.raises(PromptError, match="Required input is missing") as e:
        probe_server.queue({"1": {"class_type": "F2DProbeEcho", "inputs": {}}})
    assert e.value.kind == "validation"


def test_the_yaml_registers_the_models_dir(probe_server):
    listed = {f: probe_server.get(f"/models/{f}") for f in ("checkpoints", "face2diffusion", "insightface")}
    assert CHECKPOINT_NAME in listed["checkpoints"]
    assert {"msid.pt", "mapping.pt"} <= set(listed["face2diffusion"])
    assert os.path.join("models", "buffalo_l", "det_10g.onnx") in listed["insightface"]


def test_txt2img_with_the_tiny_checkpoint_gives_a_png_that_depends_on_the_prompt(probe_server):
    images = []
    for text in ("a photo of a cat", "a photo of a dog"):
        [png] = probe_server.output_files(probe_server.queue(txt2img(text)))
        with Image.open(png) as im:
            assert (im.format, im.size, im.mode) == ("PNG", (64, 64), "RGB")
            images.append(np.asarray(im))
    assert not np.array_equal(images[0], images[1])


def test_an_uploaded_image_is_what_load_image_reads(probe_server, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "face.png")
    name = probe_server.upload(tmp_path / "face.png")
    outputs = probe_server.queue({
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "roundtrip"}}})
    [png] = probe_server.output_files(outputs)
    assert np.array_equal(np.asarray(Image.open(png)), pixels)
