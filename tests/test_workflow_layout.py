"""The example workflows as a newcomer first sees them: nodes apart (title bars included), in the
groups Models, The person, Prompt, Sampling (and Expression / Second person where used), flowing
left to right, every node whose role is not obvious titled, readable at the stored zoom."""
import json
from pathlib import Path

import pytest
from PIL import Image

import workflow_layout as wl

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
NAMES = [p.name for p in WORKFLOWS]


def read(name):
    return json.loads((REPO / "workflows" / name).read_text())


def layout(name):
    return wl.from_workflow(read(name))


def no_problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 5, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_no_two_node_boxes_overlap_title_bars_included(name):
    no_problems(wl.overlap_problems(layout(name)))


@pytest.mark.parametrize("name", NAMES)
def test_the_workflow_has_its_groups(name):
    no_problems(wl.group_problems(layout(name)))


@pytest.mark.parametrize("name", NAMES)
def test_every_node_but_the_notes_is_inside_one_group(name):
    no_problems(wl.membership_problems(layout(name)))


@pytest.mark.parametrize("name", NAMES)
def test_links_run_left_to_right(name):
    no_problems(wl.flow_problems(layout(name)))


@pytest.mark.parametrize("name", NAMES)
def test_nodes_of_a_repeated_or_generic_type_are_titled(name):
    no_problems(wl.title_problems(layout(name)))


@pytest.mark.parametrize("name", NAMES)
def test_the_default_view_shows_the_whole_graph_readably(name):
    no_problems(wl.view_problems(layout(name)))


@pytest.mark.parametrize("name", NAMES)
def test_the_template_browser_has_a_thumbnail_of_it(name):
    """ComfyUI lists a pack's workflows/*.json as templates and shows <name>.jpg beside each."""
    jpg = REPO / "workflows" / (Path(name).stem + ".jpg")
    assert jpg.is_file(), f"no thumbnail {jpg.name}: run scripts/workflow_screenshots.py --thumbnails"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.width >= 400
    assert jpg.stat().st_size < 250_000  # shipped in the archive: keep it small


@pytest.mark.parametrize("name", NAMES)
def test_every_encode_face_previews_the_faces_it_found_and_what_it_encoded(name):
    wf = read(name)
    assert any(n["type"] == "F2DEncodeFace" for n in wf["nodes"])
    no_problems(wl.preview_problems(wf))


@pytest.mark.parametrize("name", NAMES)
def test_photos_are_not_batched_with_core_batch_images(name):
    no_problems(wl.batch_problems(read(name)))


@pytest.mark.parametrize("name", NAMES)
def test_the_notes_are_short(name):
    wf = read(name)
    no_problems(wl.note_problems(wf))


def test_the_multi_reference_workflow_wires_its_photos_to_encode_faces_own_image_inputs():
    wf = read("face2diffusion_multi_reference.json")
    (face,) = [n for n in wf["nodes"] if n["type"] == "F2DEncodeFace"]
    by_link = {link[0]: link for link in wf["links"]}
    by_id = {n["id"]: n for n in wf["nodes"]}
    wired = {i["name"]: by_id[by_link[i["link"]][1]]["type"] for i in face["inputs"] if i.get("link")}
    assert {k: wired.get(k) for k in ("image", "image_2", "image_3")} == dict.fromkeys(
        ("image", "image_2", "image_3"), "LoadImage"), wired


def test_the_regional_workflow_gives_each_person_their_own_prompt_and_half_of_the_picture():
    """Photo -> Encode Face -> Inject Face Token -> Set Area with Percentage, once per person, the
    two areas combined into the sampler's positive input; no second face in either prompt."""
    wf = read("face2diffusion_two_people_regional.json")
    by_id = {n["id"]: n for n in wf["nodes"]}
    by_link = {link[0]: link for link in wf["links"]}

    def source(node, name):
        (slot,) = [i for i in node["inputs"] if i["name"] == name]
        return by_id[by_link[slot["link"]][1]] if slot.get("link") else None

    def widgets(node):
        return dict(zip([i["name"] for i in node["inputs"] if "widget" in i], node["widgets_values"]))

    (sampler,) = [n for n in wf["nodes"] if n["type"] == "KSampler"]
    both = source(sampler, "positive")
    assert both["type"] == "ConditioningCombine"
    halves = {}
    for name in ("conditioning_1", "conditioning_2"):
        area = source(both, name)
        assert area["type"] == "ConditioningSetAreaPercentage"
        prompt = source(area, "conditioning")
        assert prompt["type"] == "F2DInjectFaceToken" and source(prompt, "face_2") is None
        assert "f l" in widgets(prompt)["text"]
        photo = source(source(prompt, "face"), "image")
        halves[photo["title"]] = {k: widgets(area)[k] for k in ("x", "y", "width", "height")}
    assert halves == {"Photo of person 1 (left)": {"x": 0.0, "y": 0.0, "width": 0.5, "height": 1.0},
                      "Photo of person 2 (right)": {"x": 0.5, "y": 0.0, "width": 0.5, "height": 1.0}}


def test_the_expression_workflow_says_in_the_graph_that_epoch_20_is_optional_and_needed():
    wf = read("face2diffusion_expression.json")
    lay = wl.from_workflow(wf)
    (group,) = [g for g in lay["groups"] if g["title"] == "Expression"]
    notes = [n for n in wf["nodes"] if n["type"] in wl.NOTES and wl.inside(wl.node_box(n), group["box"])]
    text = " ".join(n["widgets_values"][0] + " " + n.get("title", "") for n in notes)
    assert "epoch_20.pth" in text and "optional" in text.lower(), text


# --- the checks themselves see a careless layout ------------------------------------------------------

def careless():
    """Two nodes whose bodies are apart but the second's title bar lies on the first; two untitled
    range nodes; a link running backwards; one group only; no view."""
    def node(i, t, pos, size=(200, 100), **kw):
        return {"id": i, "type": t, "pos": list(pos), "size": list(size), **kw}
    return {"nodes": [node(1, "ConditioningSetTimestepRange", (0, 0)),
                      node(2, "ConditioningSetTimestepRange", (0, 110)),   # body 10 px below: title bar on 1
                      node(3, "KSampler", (-400, 0)),
                      node(4, "MarkdownNote", (150, 300))],
            "links": [[1, 1, 0, 3, 0, "CONDITIONING"]],
            "groups": [{"title": "Prompt", "bounding": [-30, -80, 300, 400]}]}


def test_the_checks_see_the_faults_of_a_careless_layout():
    lay = wl.from_workflow(careless())
    assert wl.overlap_problems(lay) == [
        "node 1 (ConditioningSetTimestepRange) and node 2 (ConditioningSetTimestepRange) overlap or are closer "
        "than 10 px: [0, -30, 200, 130] / [0, 80, 200, 130]"]
    assert wl.group_problems(lay) == ["no group 'Models'", "no group 'The person'", "no group 'Sampling'"]
    assert wl.membership_problems(lay) == ["node 3 (KSampler) is inside 0 groups, not one",
                                           "node 4 (MarkdownNote) lies across a group's border"]
    assert wl.flow_problems(lay) == ["the link node 1 (ConditioningSetTimestepRange) -> node 3 (KSampler) runs "
                                     "right to left"]
    assert wl.title_problems(lay) == [f"node {i} (ConditioningSetTimestepRange) has no title, and 2 nodes are "
                                      "ConditioningSetTimestepRange" for i in (1, 2)]
    assert wl.view_problems(lay) == ["no default view (extra.ds)"]


def test_groups_that_overlap_or_touch_are_reported():
    def group(title, box):
        return {"title": title, "bounding": box}
    lay = wl.from_workflow({"nodes": [], "groups": [group("The person", [0, 0, 500, 400]),
                                                    group("Second person", [0, 395, 500, 400]),
                                                    group("Prompt", [560, 0, 300, 300])]})
    assert wl.overlap_problems(lay) == ["groups 'The person' and 'Second person' overlap or are closer than 10 px: "
                                        "[0, 0, 500, 400] / [0, 395, 500, 400]"]


def test_an_encode_face_without_its_previews_is_reported():
    wf = {"nodes": [{"id": 1, "type": "F2DEncodeFace", "outputs": [
              {"name": "face", "links": None}, {"name": "aligned", "links": [1]}, {"name": "faces", "links": [2]}]},
              {"id": 2, "type": "PreviewImage", "title": "Encoded face (aligned)"},
              {"id": 3, "type": "PreviewImage", "title": "Preview"}],
          "links": [[1, 1, 1, 2, 0, "IMAGE"], [2, 1, 2, 3, 0, "IMAGE"]]}
    assert wl.preview_problems(wf) == ["node 1 (F2DEncodeFace): the Preview Image of its faces is not titled "
                                       "'Faces found ...'"]
    wf["links"].pop()
    wf["nodes"][0]["outputs"][2]["links"] = None
    assert wl.preview_problems(wf) == ["node 1 (F2DEncodeFace): its faces output goes to no Preview Image"]


def test_nodes_apart_but_closer_than_the_margin_count_as_overlapping():
    a, b = [0, 0, 100, 100], [105, 0, 100, 100]
    assert not wl.overlap(a, b) and wl.overlap(a, b, wl.MARGIN)


def test_a_view_too_far_out_or_cutting_the_graph_is_reported():
    lay = wl.from_workflow(dict(careless(), extra={"ds": {"scale": 0.5, "offset": [0, 0]}}))
    problems = wl.view_problems(lay)
    assert problems[0] == "the default zoom 0.5 is below 0.65: text is unreadable"
    assert "node 3 (KSampler) is outside the default view" in problems
