"""No node input reaches a file or folder outside the folders ComfyUI registers for it (issue 21).

Through a real ComfyUI server over HTTP, as any API client can send it. ComfyUI 0.3.x does not
check combo values against their lists, and on 0.8+ a node's own validate_inputs switches that
check off, so the pack itself must refuse: '..' climbs, absolute paths, and the input folder
(where /upload/image stores any file a client sends). Each outside target here is a *working*
model (a copy of the test's own detector, weights, face file or recognizer pack), so a refusal
cannot come from the file being unusable: if the value were followed, the prompt would succeed.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

import recognizer_onnx as ro
from f2d_core.client.workflow import find_nodes

from .test_nodes_host import extra_models, photos, workflow_prompt  # noqa: F401 (fixtures)

OUTSIDE = "outside_models"


@pytest.fixture(scope="module")
def outside(comfy_server, f2d_models_dir):
    """Working copies of the pack's models outside every registered folder: in a plain folder beside
    ComfyUI's home, and in its input folder (reachable by any client through /upload/image)."""
    places = {}
    for where, base in (("elsewhere", comfy_server.home / OUTSIDE), ("input", comfy_server.input_dir / "evil")):
        pack = base / "evilpack"
        pack.mkdir(parents=True, exist_ok=True)
        shutil.copy(f2d_models_dir / "insightface" / "models" / "buffalo_l" / "det_10g.onnx", pack / "det_10g.onnx")
        for name in ("msid.pt", "mapping.pt"):
            shutil.copy(os.path.realpath(f2d_models_dir / "face2diffusion" / name), base / name)
        ro.make_pack(base / "evilrecognizer")
        places[where] = base
    return places


def refused(server, prompt, what: str, outside_names=()):
    """The prompt is refused before anything runs, naming the input, and lists nothing outside."""
    from .comfy_server import PromptError
    with pytest.raises(PromptError) as e:
        server.queue(prompt)
    message = str(e.value)
    assert e.value.kind == "validation", message
    assert re.search(rf"{what}: .* is not .* inside .*: it (climbs out of the folder with '\.\.'|is an absolute "
                     rf"path)", message), message
    for name in outside_names:
        assert name not in message, f"the refusal names {name!r}, which lies outside: {message}"
    return message


def escapes(target, folder) -> dict:
    """The ways a client can name `target` from `folder`: climbing with '..', and its absolute path."""
    return {"climb": os.path.relpath(target, folder), "absolute": str(target)}


@pytest.mark.parametrize("where", ["elsewhere", "input"])
@pytest.mark.parametrize("how", ["climb", "absolute"])
def test_the_detector_cannot_name_a_pack_outside_the_insightface_folder(comfy_server, photos, outside,
                                                                         f2d_models_dir, where, how):
    value = escapes(outside[where] / "evilpack", f2d_models_dir / "insightface" / "models")[how]
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    prompt[find_nodes(prompt, "LoadF2DEncoder")[0]]["inputs"]["detector"] = value
    refused(comfy_server, prompt, "detector", ["det_10g.onnx"])


def test_a_detector_value_naming_a_system_folder_is_refused_without_listing_it(comfy_server, photos, f2d_models_dir):
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    loader = find_nodes(prompt, "LoadF2DEncoder")[0]
    for value in ("../../../../../../../../etc", "/etc", "/"):
        prompt[loader]["inputs"]["detector"] = value
        refused(comfy_server, prompt, "detector", ["passwd", "hostname", "bin"])


def test_a_detector_value_with_a_subfolder_is_refused(comfy_server, photos):
    """A pack is one folder directly in models/insightface/models: 'buffalo_l/x' is no pack."""
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    prompt[find_nodes(prompt, "LoadF2DEncoder")[0]]["inputs"]["detector"] = "buffalo_l/sub"
    from .comfy_server import PromptError
    with pytest.raises(PromptError, match=r"detector: 'buffalo_l/sub' is not an insightface pack name: a pack is one "
                                          r"folder directly in") as e:
        comfy_server.queue(prompt)
    assert e.value.kind == "validation"


@pytest.mark.parametrize("slot, file", [("msid", "msid.pt"), ("mapping", "mapping.pt"),
                                        ("expression_model", "msid.pt")])
@pytest.mark.parametrize("where", ["elsewhere", "input"])
@pytest.mark.parametrize("how", ["climb", "absolute"])
def test_a_weight_file_cannot_be_named_outside_models_face2diffusion(comfy_server, photos, outside, f2d_models_dir,
                                                                     slot, file, where, how):
    value = escapes(outside[where] / file, f2d_models_dir / "face2diffusion")[how]
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    prompt[find_nodes(prompt, "LoadF2DEncoder")[0]]["inputs"][slot] = value
    refused(comfy_server, prompt, slot)


@pytest.mark.parametrize("where", ["elsewhere", "input"])
@pytest.mark.parametrize("how", ["climb", "absolute"])
def test_face_similarity_cannot_name_a_recognizer_pack_outside(comfy_server, photos, outside, f2d_models_dir,
                                                               where, how):
    value = escapes(outside[where] / "evilrecognizer", f2d_models_dir / "insightface" / "models")[how]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": photos["face"]}},
              "2": {"class_type": "F2DFaceSimilarity", "inputs": {"reference": ["1", 0], "images": ["1", 0],
                                                                  "recognizer": value, "device": "cpu"}}}
    refused(comfy_server, prompt, "recognizer", ["w600k_r50.onnx", "det_10g.onnx"])


NO_DETECTOR = "none: images are already aligned 112x112 crops"


@pytest.fixture(scope="module")
def crop_prompt(comfy_server, photos, tmp_path_factory):
    """The basic workflow on an aligned 112x112 crop with detector 'none': these tests are about
    which files are reached, not about detection."""
    from PIL import Image
    crop = tmp_path_factory.mktemp("crop") / "crop.png"
    Image.open(comfy_server.input_dir / photos["face"]).convert("RGB").resize((112, 112)).save(crop)
    prompt = workflow_prompt(comfy_server, "face2diffusion_basic.json", photos)
    prompt[find_nodes(prompt, "LoadF2DEncoder")[0]]["inputs"]["detector"] = NO_DETECTOR
    for image in find_nodes(prompt, "LoadImage"):
        prompt[image]["inputs"]["image"] = comfy_server.upload(crop)
    return prompt


@pytest.fixture(scope="module")
def outside_face(comfy_server, crop_prompt, outside):
    """A working face file, saved by the pack, then moved out of output/face2diffusion."""
    loader, encode = find_nodes(crop_prompt, "LoadF2DEncoder")[0], find_nodes(crop_prompt, "F2DEncodeFace")[0]
    image = crop_prompt[encode]["inputs"]["image"][0]
    comfy_server.queue({n: crop_prompt[n] for n in (loader, image, encode)} |
                       {"99": {"class_type": "F2DSaveFace", "inputs": {"face": [encode, 0], "name": "escapee"}}})
    saved = comfy_server.output_dir / "face2diffusion" / "escapee.f2d.safetensors"
    moved = {}
    for where, base in outside.items():
        moved[where] = base / "escapee.f2d.safetensors"
        shutil.copy(saved, moved[where])
    saved.unlink()
    return moved


@pytest.mark.parametrize("where", ["elsewhere", "input"])
@pytest.mark.parametrize("how", ["climb", "absolute"])
def test_load_face_cannot_name_a_file_outside_output_face2diffusion(comfy_server, outside_face, where, how):
    value = escapes(outside_face[where], comfy_server.output_dir / "face2diffusion")[how]
    prompt = {"1": {"class_type": "F2DLoadFace", "inputs": {"name": value}},
              "2": {"class_type": "F2DSaveFace", "inputs": {"face": ["1", 0], "name": "copied"}}}
    refused(comfy_server, prompt, "name")
    assert not (comfy_server.output_dir / "face2diffusion" / "copied.f2d.safetensors").exists()


def test_a_listed_name_still_loads_and_a_link_inside_the_folder_still_works(comfy_server, crop_prompt, outside,
                                                                           f2d_models_dir):
    """Models on another disk: a symlink the user put inside models/face2diffusion keeps working."""
    link = f2d_models_dir / "face2diffusion" / "other_disk"
    link.symlink_to(outside["elsewhere"], target_is_directory=True)
    try:
        prompt = json.loads(json.dumps(crop_prompt))
        loader = find_nodes(prompt, "LoadF2DEncoder")[0]
        prompt[loader]["inputs"]["msid"] = "other_disk/msid.pt"
        prompt[loader]["inputs"]["mapping"] = "other_disk/mapping.pt"
        files = comfy_server.output_files(comfy_server.queue(prompt))
    finally:
        link.unlink()  # the server is shared with other modules: leave its lists as they were
    assert any(f.name.startswith("face2diffusion") for f in files)


@pytest.mark.parametrize("node, value_input, value, message", [
    ("LoadF2DEncoder", "msid", "msid_v2.pt",
     r"msid: 'msid_v2\.pt' is not in .*face2diffusion \(found: .*msid\.pt.*\)\. Put msid\.pt \(the MSID identity "
     r"encoder, from https://drive\.google\.com/.*\) in .*face2diffusion"),
    ("LoadF2DEncoder", "mapping", "mapping_v2.pt",
     r"mapping: 'mapping_v2\.pt' is not in .*face2diffusion \(found: .*mapping\.pt.*\)\. Put mapping\.pt"),
    ("LoadF2DEncoder", "expression_model", "epoch_99.pth",
     r"expression_model: 'epoch_99\.pth' is not in .*face2diffusion \(found: .*\)\. Put epoch_20\.pth"),
    ("LoadF2DEncoder", "detector", "antelopev2",
     r"detector: insightface pack 'antelopev2' not found under .*insightface.models \(found: buffalo_l.*\)\. Unzip "
     r"insightface's buffalo_l \(https://github\.com/deepinsight/insightface/releases/.*/buffalo_l\.zip: "
     r"det_10g\.onnx\)"),
    ("F2DLoadFace", "name", "nobody.f2d.safetensors",
     r"no saved face 'nobody\.f2d\.safetensors' in .*face2diffusion \(found: .*\)\. Save one with Save Face first"),
    ("F2DFaceSimilarity", "recognizer", "antelopev2",
     r"recognizer: insightface pack 'antelopev2' not found under .*\(found: .*\)\. Unzip insightface's buffalo_l "
     r"\(https://.*buffalo_l\.zip: det_10g\.onnx \+ w600k_r50\.onnx\)"),
])
def test_a_file_named_by_a_shared_workflow_but_missing_here_gets_the_packs_message(comfy_server, crop_prompt, photos,
                                                                                  node, value_input, value, message):
    """The usual case after loading someone's workflow. ComfyUI >= 0.8 checks combo values before the
    run ("Value not in list"); the pack's validate_inputs takes that check over for these inputs, so
    on every host the message says which file, where it is looked for, what is there and where it
    comes from."""
    from .comfy_server import PromptError
    if node == "LoadF2DEncoder":
        prompt = json.loads(json.dumps(crop_prompt))
    elif node == "F2DLoadFace":
        prompt = {"1": {"class_type": "F2DLoadFace", "inputs": {"name": value}},
                  "2": {"class_type": "F2DSaveFace", "inputs": {"face": ["1", 0], "name": "copied"}}}
    else:
        prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": photos["face"]}},
                  "2": {"class_type": "F2DFaceSimilarity", "inputs": {"reference": ["1", 0], "images": ["1", 0],
                                                                      "recognizer": value, "device": "cpu"}}}
    prompt[find_nodes(prompt, node)[0]]["inputs"][value_input] = value
    with pytest.raises(PromptError) as e:
        comfy_server.queue(prompt)
    assert e.value.kind == "execution", f"refused before the run, not by the pack: {e.value}"
    assert re.search(message, str(e.value)), str(e.value)
