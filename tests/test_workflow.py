"""UI -> API workflow conversion, against /object_info captured from ComfyUI 0.3.64
(tests/data/object_info_core.json, see capture_object_info.py there)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from f2d_core.errors import F2DError
from f2d_core.client.workflow import (MissingNodeTypes, WorkflowError, find_nodes, get_input, load_workflow,
                               set_input, to_api, widget_layout)

DATA = Path(__file__).with_name("data")
INFO = json.loads((DATA / "object_info_core.json").read_text())


def node(id, type, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    """A UI node. inputs: (name, type, link[, "widget"]); outputs: (type, [links])."""
    n = {"id": id, "type": type, "pos": [0, 0], "size": [200, 80], "flags": {}, "order": id, "mode": mode,
         "inputs": [{"name": i[0], "type": i[1], "link": i[2], **({"widget": {"name": i[0]}} if len(i) > 3 else {})}
                    for i in inputs],
         "outputs": [{"name": t, "type": t, "links": ls, "slot_index": k} for k, (t, ls) in enumerate(outputs)],
         "properties": {}}
    if widgets is not None:
        n["widgets_values"] = widgets
    if title:
        n["title"] = title
    return n


def ui(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([lk[0] for lk in links] or [0]),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


# ComfyUI's default graph as the frontend saves it (hand-written: old-style `true` control value,
# SaveImage saved without widgets_values), with the values of script_examples/basic_api_example.py.
DEFAULT_UI = json.loads((DATA / "default_workflow_ui.json").read_text())

# The API prompt ComfyUI documents for its default workflow (script_examples/basic_api_example.py).
DEFAULT_API = {
    "3": {"class_type": "KSampler", "inputs": {
        "cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
        "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal", "seed": 8566257, "steps": 20}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 512, "width": 512}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "masterpiece best quality girl"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def test_default_workflow_converts_to_the_documented_api_prompt():
    api = to_api(DEFAULT_UI, INFO)
    assert strip_meta(api) == DEFAULT_API
    assert api["4"]["_meta"] == {"title": "Load Checkpoint"}  # display name when the node has no title


def test_control_after_generate_value_is_skipped_whatever_its_spelling():
    for control in ("randomize", "fixed", "increment", False):
        wf = ui([node(1, "KSampler", widgets=[5, control, 30, 6.5, "euler", "karras", 0.9])], [])
        inputs = to_api(wf, INFO)["1"]["inputs"]
        assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["scheduler"]) == (5, 30, 6.5, "karras")


def test_widget_values_saved_without_a_control_value_are_not_shifted():
    wf = ui([node(1, "KSampler", widgets=[5, 30, 6.5, "euler", "karras", 0.9])], [])
    inputs = to_api(wf, INFO)["1"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["denoise"]) == (5, 30, 0.9)


def test_flagged_int_that_is_not_called_seed_also_has_a_control_value():
    assert [s[0] for s in widget_layout(INFO["PrimitiveInt"])] == ["value", "control"]
    wf = ui([node(1, "PrimitiveInt", widgets=[7, "increment"])], [])
    assert to_api(wf, INFO)["1"]["inputs"] == {"value": 7}


def test_upload_button_value_follows_the_required_widgets():
    wf = ui([node(1, "LoadImage", widgets=["me.jpg", "image"]),
             node(2, "LoadImageMask", widgets=["m.png", "red", "image"])], [])
    api = to_api(wf, INFO)
    assert api["1"]["inputs"] == {"image": "me.jpg"}
    assert api["2"]["inputs"] == {"image": "m.png", "channel": "red"}


def test_upload_button_value_sits_between_required_and_optional_widgets():
    info = {"Probe": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]},
                                "optional": {"strength": ["FLOAT", {"default": 1.0}]}},
                      "output": ["IMAGE"], "name": "Probe", "display_name": "Probe"}}
    wf = ui([node(1, "Probe", widgets=["a.png", "image", 0.5])], [])
    assert to_api(wf, info)["1"]["inputs"] == {"image": "a.png", "strength": 0.5}


def test_missing_trailing_widget_values_come_from_the_defaults():
    wf = ui([node(1, "KSampler", widgets=[5, "fixed", 30]), node(2, "SaveImage"),
             node(3, "LatentBatchSeedBehavior")], [])
    api = to_api(wf, INFO)
    ks = api["1"]["inputs"]
    assert (ks["cfg"], ks["sampler_name"], ks["denoise"]) == (8.0, "euler", 1.0)  # no default: first choice
    assert api["2"]["inputs"] == {"filename_prefix": "ComfyUI"}
    assert api["3"]["inputs"] == {"seed_behavior": "fixed"}  # V3 "COMBO" default


def test_v3_combo_value_is_read_like_a_list_combo():
    wf = ui([node(1, "LatentBatchSeedBehavior", widgets=["random"])], [])
    assert to_api(wf, INFO)["1"]["inputs"] == {"seed_behavior": "random"}


def test_widgets_saved_by_name_are_read_by_name():
    wf = ui([node(1, "EmptyLatentImage", widgets={"height": 768, "width": 640})], [])
    assert to_api(wf, INFO)["1"]["inputs"] == {"width": 640, "height": 768, "batch_size": 1}


def test_notes_never_reach_the_server():
    wf = ui([node(1, "Note", widgets=["hello"]), node(2, "MarkdownNote", widgets=["# hi"]),
             node(3, "EmptyLatentImage", widgets=[512, 512, 1])], [])
    assert list(to_api(wf, INFO)) == ["3"]


def test_reroutes_are_followed_to_the_real_source():
    wf = ui([node(1, "EmptyLatentImage", outputs=[("LATENT", [1])], widgets=[64, 64, 1]),
             node(2, "Reroute", inputs=[("", "*", 1)], outputs=[("LATENT", [2])]),
             node(3, "Reroute", inputs=[("", "*", 2)], outputs=[("LATENT", [3])]),
             node(4, "VAEDecode", inputs=[("samples", "LATENT", 3), ("vae", "VAE", None)])],
            [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "LATENT"]])
    api = to_api(wf, INFO)
    assert set(api) == {"1", "4"}
    assert api["4"]["inputs"] == {"samples": ["1", 0]}


def test_primitive_node_value_goes_into_the_widget_it_feeds():
    # the seed widget was converted to a socket; KSampler's own saved seed (1) is stale
    wf = ui([node(1, "PrimitiveNode", outputs=[("INT", [1])], widgets=[123456, "fixed"], title="seed"),
             node(2, "KSampler", inputs=[("seed", "INT", 1, "w")], widgets=[1, "fixed", 20, 8, "euler", "normal", 1])],
            [[1, 1, 0, 2, 0, "INT"]])
    api = to_api(wf, INFO)
    assert list(api) == ["2"]
    assert api["2"]["inputs"]["seed"] == 123456


def test_widget_converted_to_a_socket_takes_the_link_from_a_real_node():
    wf = ui([node(1, "PrimitiveInt", outputs=[("INT", [1])], widgets=[99, "fixed"]),
             node(2, "KSampler", inputs=[("seed", "INT", 1, "w")], widgets=[1, "fixed", 20, 8, "euler", "normal", 1])],
            [[1, 1, 0, 2, 0, "INT"]])
    assert to_api(wf, INFO)["2"]["inputs"]["seed"] == ["1", 0]


def test_unlinked_widget_sockets_of_newer_frontends_keep_their_values():
    wf = ui([node(1, "EmptyLatentImage", inputs=[("width", "INT", None, "w"), ("height", "INT", None, "w")],
                  widgets=[320, 448, 2])], [])
    assert to_api(wf, INFO)["1"]["inputs"] == {"width": 320, "height": 448, "batch_size": 2}


def test_muted_nodes_are_dropped_with_the_inputs_they_fed():
    wf = ui([node(1, "EmptyLatentImage", outputs=[("LATENT", [1])], widgets=[64, 64, 1], mode=2),
             node(2, "VAEDecode", inputs=[("samples", "LATENT", 1)])], [[1, 1, 0, 2, 0, "LATENT"]])
    api = to_api(wf, INFO)
    assert list(api) == ["2"] and api["2"]["inputs"] == {}


def _lora_graph(mode):
    return ui([node(1, "CheckpointLoaderSimple", outputs=[("MODEL", [1]), ("CLIP", [2]), ("VAE", None)],
                    widgets=["sd15.safetensors"]),
               node(2, "LoraLoader", inputs=[("model", "MODEL", 1), ("clip", "CLIP", 2)],
                    outputs=[("MODEL", [3]), ("CLIP", [4])], widgets=["style.safetensors", 0.8, 1.0], mode=mode),
               node(3, "KSampler", inputs=[("model", "MODEL", 3)], widgets=[1, "fixed", 20, 8, "euler", "normal", 1]),
               node(4, "CLIPTextEncode", inputs=[("clip", "CLIP", 4)], widgets=["x"])],
              [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 2, 0, 3, 0, "MODEL"], [4, 2, 1, 4, 0, "CLIP"]])


def test_bypassed_node_passes_each_input_of_the_same_type_through():
    api = to_api(_lora_graph(mode=4), INFO)
    assert "2" not in api
    assert api["3"]["inputs"]["model"] == ["1", 0]
    assert api["4"]["inputs"]["clip"] == ["1", 1]


def test_active_node_is_linked_normally():
    api = to_api(_lora_graph(mode=0), INFO)
    assert api["2"]["inputs"] == {"model": ["1", 0], "clip": ["1", 1], "lora_name": "style.safetensors",
                                  "strength_model": 0.8, "strength_clip": 1.0}
    assert api["3"]["inputs"]["model"] == ["2", 0] and api["4"]["inputs"]["clip"] == ["2", 1]


def test_bypass_picks_the_first_input_of_the_output_type_when_the_slot_differs():
    # ImageStitch: out 0 is IMAGE; inputs image1 (IMAGE), image2 (IMAGE, optional). Bypassed, image1 passes.
    wf = ui([node(1, "LoadImage", outputs=[("IMAGE", [1, 2]), ("MASK", None)], widgets=["a.png", "image"]),
             node(2, "ImageStitch", inputs=[("image1", "IMAGE", 1), ("image2", "IMAGE", 2)],
                  outputs=[("IMAGE", [3])], widgets=["right", True, 0, "white"], mode=4),
             node(3, "SaveImage", inputs=[("images", "IMAGE", 3)], widgets=["x"])],
            [[1, 1, 0, 2, 0, "IMAGE"], [2, 1, 0, 2, 1, "IMAGE"], [3, 2, 0, 3, 0, "IMAGE"]])
    assert to_api(wf, INFO)["3"]["inputs"]["images"] == ["1", 0]


def test_optional_inputs_come_after_the_required_widgets():
    wf = ui([node(1, "LoadImage", outputs=[("IMAGE", [1]), ("MASK", None)], widgets=["a.png", "image"]),
             node(2, "ImageStitch", inputs=[("image1", "IMAGE", None), ("image2", "IMAGE", 1)],
                  widgets=["down", False, 4, "black"])], [[1, 1, 0, 2, 1, "IMAGE"]])
    assert to_api(wf, INFO)["2"]["inputs"] == {"direction": "down", "match_image_size": False, "spacing_width": 4,
                                               "spacing_color": "black", "image2": ["1", 0]}


def test_force_input_specs_are_sockets_not_widgets():
    info = {"Probe": {"input": {"required": {"n": ["INT", {"forceInput": True}], "s": ["STRING", {}]}},
                      "output": [], "name": "Probe", "display_name": "Probe"}, **INFO}
    wf = ui([node(1, "PrimitiveInt", outputs=[("INT", [1])], widgets=[3, "fixed"]),
             node(2, "Probe", inputs=[("n", "INT", 1)], widgets=["only widget"])], [[1, 1, 0, 2, 0, "INT"]])
    assert to_api(wf, info)["2"]["inputs"] == {"n": ["1", 0], "s": "only widget"}


def test_linked_sockets_the_server_does_not_declare_are_kept():
    wf = ui([node(1, "LoadImage", outputs=[("IMAGE", [1]), ("MASK", None)], widgets=["a.png", "image"]),
             node(2, "ImageBatch", inputs=[("image1", "IMAGE", None), ("image_3", "IMAGE", 1)])],
            [[1, 1, 0, 2, 1, "IMAGE"]])
    assert to_api(wf, INFO)["2"]["inputs"] == {"image_3": ["1", 0]}


def test_links_saved_as_objects_are_understood():
    wf = ui([node(1, "EmptyLatentImage", outputs=[("LATENT", [7])], widgets=[64, 64, 1]),
             node(2, "VAEDecode", inputs=[("samples", "LATENT", 7)])], [])
    wf["links"] = [{"id": 7, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "LATENT"}]
    assert to_api(wf, INFO)["2"]["inputs"] == {"samples": ["1", 0]}


def test_unknown_node_types_are_all_named_with_what_to_do():
    wf = ui([node(1, "F2DEncodeFace"), node(2, "LoadF2DEncoder"), node(3, "SaveImage", widgets=["x"]),
             node(4, "SomeoneElsesNode", mode=2)], [])  # a muted unknown node does not matter
    with pytest.raises(MissingNodeTypes) as e:
        to_api(wf, INFO)
    msg = str(e.value)
    assert e.value.types == ["F2DEncodeFace", "LoadF2DEncoder"]
    assert "F2DEncodeFace, LoadF2DEncoder" in msg and "not installed" in msg and "failed to import" in msg
    assert "custom_nodes" in msg and "SomeoneElsesNode" not in msg
    assert isinstance(e.value, F2DError)


def test_subgraph_nodes_are_refused_with_how_to_unpack_them():
    wf = ui([node(5, "3f2c-uuid", title="My subgraph")], [])
    wf["definitions"] = {"subgraphs": [{"id": "3f2c-uuid", "nodes": [], "links": []}]}
    with pytest.raises(WorkflowError, match="node 5 .*My subgraph.*Unpack Subgraph"):
        to_api(wf, INFO)


def test_a_link_missing_from_the_links_list_is_reported_as_damage():
    wf = ui([node(2, "VAEDecode", inputs=[("samples", "LATENT", 99)])], [])
    with pytest.raises(WorkflowError, match="link 99 .*Re-save"):
        to_api(wf, INFO)


def test_api_prompts_pass_through_as_a_copy():
    api = to_api(DEFAULT_API, INFO)
    assert api == DEFAULT_API and api is not DEFAULT_API
    api["3"]["inputs"]["seed"] = 1
    assert DEFAULT_API["3"]["inputs"]["seed"] == 8566257


def test_set_input_fills_the_one_node_of_a_type():
    api = to_api(DEFAULT_UI, INFO)
    assert set_input(api, "KSampler", "seed", 5) == "3"
    assert api["3"]["inputs"]["seed"] == 5
    assert get_input(api, "EmptyLatentImage", "width") == ("5", 512)


def test_set_input_replaces_a_link():
    api = to_api(DEFAULT_UI, INFO)
    set_input(api, "VAEDecode", "vae", "not a link any more")
    assert api["8"]["inputs"]["vae"] == "not a link any more"


def test_set_input_with_several_nodes_needs_a_title():
    api = to_api(DEFAULT_UI, INFO)
    api["6"]["_meta"]["title"], api["7"]["_meta"]["title"] = "Positive", "Negative"
    with pytest.raises(WorkflowError, match=r"2 CLIPTextEncode nodes \(6 'Positive', 7 'Negative'\).*title"):
        set_input(api, "CLIPTextEncode", "text", "x")
    assert set_input(api, "CLIPTextEncode", "text", "a cat", title="Positive") == "6"
    assert api["6"]["inputs"]["text"] == "a cat" and api["7"]["inputs"]["text"] == "bad hands"


def test_set_input_errors_name_what_exists():
    api = to_api(DEFAULT_UI, INFO)
    with pytest.raises(WorkflowError, match="no F2DInjectFaceToken node"):
        set_input(api, "F2DInjectFaceToken", "text", "x")
    with pytest.raises(WorkflowError, match=r"no KSampler node titled 'Refiner'; its KSampler nodes are 3 'KSampler'"):
        set_input(api, "KSampler", "seed", 1, title="Refiner")
    with pytest.raises(WorkflowError, match=r"KSampler node 3 has no input 'sed' \(it has: model, seed"):
        set_input(api, "KSampler", "sed", 1)
    assert find_nodes(api, "CLIPTextEncode") == ["6", "7"]


def test_load_workflow_says_what_is_wrong_with_the_file(tmp_path):
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{nodes: [")
    with pytest.raises(WorkflowError, match="not a JSON workflow"):
        load_workflow(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(WorkflowError, match="neither a UI workflow"):
        load_workflow(tmp_path / "other.json")
    assert load_workflow(DATA / "f2d_test_workflow.json")["version"] == 0.4
