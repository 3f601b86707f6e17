"""workflows/face2diffusion_two_people_regional.json in a real ComfyUI: each half of the picture
is conditioned on its own person only, and the server runs the workflow to a saved image.

The conditioning is read where the sampler would get it: the workflow's own graph (converted
with the server's /object_info) is run in this process by ComfyUI's and the pack's node classes
up to KSampler's positive input, and each entry of that CONDITIONING is compared with an
independent encoding (transformers, the official overwrite of the trigger rows) of its prompt with
one person's identity tokens S1*, S2*."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from f2d_core.client.workflow import find_nodes, get_input, is_link, load_workflow, set_input, to_api

from .conftest import REPO
from .test_nodes_host import face_photo, fp16_reference, small

WORKFLOW = REPO / "workflows" / "face2diffusion_two_people_regional.json"
PHOTO = {1: "Photo of person 1 (left)", 2: "Photo of person 2 (right)"}
PROMPT = {1: "Prompt of person 1 (left, write f l)", 2: "Prompt of person 2 (right, write f l)"}
# ConditioningSetAreaPercentage's area: ("percentage", height, width, y, x)
HALF = {1: ("percentage", 1.0, 0.5, 0.0, 0.0), 2: ("percentage", 1.0, 0.5, 0.0, 0.5)}
PHOTOS = {1: face_photo(2, 2), 2: face_photo(4, 4, blue=120)}  # two people for the synthetic detector


def run_graph(prompt: dict, node_id: str, classes: dict) -> dict:
    """Run `node_id` and the nodes it depends on, as ComfyUI's executor would (each node once, its
    inputs the outputs it is linked to); {node id: outputs}. A V3 node (the pack's) runs its
    `execute`, a V1 node (core) its FUNCTION."""
    outputs = {}

    def run(nid):
        if nid not in outputs:
            node = prompt[nid]
            cls = classes[node["class_type"]]
            args = {k: run(v[0])[v[1]] if is_link(v) else v for k, v in node["inputs"].items()}
            if hasattr(cls, "GET_SCHEMA"):
                outputs[nid] = tuple(cls.execute(**args).result)
            else:
                outputs[nid] = tuple(getattr(cls(), cls.FUNCTION)(**args))
        return outputs[nid]

    run(node_id)
    return outputs


@pytest.fixture(scope="module")
def nodes(comfy_inprocess, f2d_models_dir):
    return comfy_inprocess.pack_nodes()


@pytest.fixture(scope="module")
def photo_names(comfy_inprocess):
    """The two photos in the in-process ComfyUI's input folder, where core LoadImage reads them."""
    names = {}
    for who, img in PHOTOS.items():
        names[who] = f"regional_person_{who}.png"
        Image.fromarray(img).save(comfy_inprocess.dirs["input"] / names[who])
    return names


@pytest.fixture(scope="module")
def identity_tokens(nodes, photo_names):
    """{person: (S1*, S2*)} from each photo alone, through core LoadImage and Encode Face."""
    import nodes as comfy_nodes
    encoder = nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "buffalo_l").result[0]
    tokens = {}
    for who, name in photo_names.items():
        face = nodes["F2DEncodeFace"].execute(encoder, comfy_nodes.LoadImage().load_image(name)[0]).result[0]
        tokens[who] = (face.s1, face.s2)
    assert (tokens[1][0] - tokens[2][0]).abs().max() > 0.1, "the two photos must give two identities"
    return tokens


def regional_prompt(server, photos: dict) -> dict:
    """The workflow as an API prompt at test cost, person k's photo in person k's loader."""
    prompt = small(to_api(load_workflow(WORKFLOW), server.object_info()))
    for who, title in PHOTO.items():
        set_input(prompt, "LoadImage", "image", photos[who], title=title)
    return prompt


def test_each_half_is_conditioned_on_its_own_person_and_not_the_other(comfy_server, nodes, photo_names,
                                                                      identity_tokens, recipe,
                                                                      recipe_clip_state_dict, tokenizer):
    import nodes as comfy_nodes
    prompt = regional_prompt(comfy_server, photo_names)
    (sampler,) = find_nodes(prompt, "KSampler")
    positive = prompt[sampler]["inputs"]["positive"]
    cond = run_graph(prompt, positive[0], {**comfy_nodes.NODE_CLASS_MAPPINGS, **nodes})[positive[0]][positive[1]]

    assert sorted(entry[1]["area"] for entry in cond) == [HALF[1], HALF[2]]
    for who, other in ((1, 2), (2, 1)):
        (entry,) = [c for c in cond if c[1]["area"] == HALF[who]]
        assert entry[1]["strength"] == 1.0
        text = get_input(prompt, "F2DInjectFaceToken", "text", title=PROMPT[who])[1]
        own = fp16_reference(recipe, recipe_clip_state_dict, text, *identity_tokens[who], tokenizer)
        theirs = fp16_reference(recipe, recipe_clip_state_dict, text, *identity_tokens[other], tokenizer)
        torch.testing.assert_close(entry[0], own, atol=1e-3, rtol=0)
        assert (entry[0] - theirs).abs().max() > 0.1, f"person {who}'s half also matches person {other}"


def test_the_server_runs_the_workflow_and_saves_the_image(comfy_server, tmp_path):
    uploaded = {}
    for who, img in PHOTOS.items():
        Image.fromarray(img).save(tmp_path / f"person_{who}.png")
        uploaded[who] = comfy_server.upload(tmp_path / f"person_{who}.png")
    prompt = regional_prompt(comfy_server, uploaded)
    set_input(prompt, "EmptyLatentImage", "width", 128)  # two 64x64 halves
    files = comfy_server.output_files(comfy_server.queue(prompt))
    saved = [f for f in files if f.name.startswith("face2diffusion")]
    assert len(saved) == 1 and Image.open(saved[0]).size == (128, 64)
