"""The example workflows in ComfyUI's own web frontend, driven in headless Chromium.

Each workflows/*.json is loaded with `app.loadGraphData` (what dropping the file on the canvas
does) into the frontend the ComfyUI checkout serves (comfyui-frontend-package), with this pack's
nodes and every model, image and option the workflow names present. The frontend must report no
missing node type, no error, dialog or toast, and every combo value must be one of the options
the server lists, and the 1.5x frontends' error overlay ("N issues found": missing nodes, models
or photos) must not appear. Then the frontend's own conversion, `app.graphToPrompt().output`, must equal
f2d_core.client.workflow.to_api(workflow, /object_info): same nodes, class types, widget values and
links (`_meta` is not compared; 1 and 1.0 are the same number, as in JSON from a browser). The
layout is checked again as the frontend draws it: no node grown past its stored size, no two
boxes overlapping, every node in one group, every note's text inside its box.

Every test runs against the checkout's pinned frontend and against each frontend named in
F2D_FRONTEND_ROOTS (static folders, separated by the path separator, passed to ComfyUI as
--front-end-root; e.g. `pip install --target DIR comfyui-frontend-package==1.58.1` and
DIR/comfyui_frontend_package/static). Without it those runs are skipped, saying so.

Needs, besides the host tests' COMFYUI_PATH (see conftest), Chromium and a browser driver: see
frontend_page.py. Otherwise every test here is skipped, saying which is missing.
"""
from __future__ import annotations

import json
import os
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

import workflow_layout as wl
from f2d_core.client.workflow import load_workflow, to_api

from . import frontend_page as fp
from .conftest import PACK_DIR_NAME, REPO, SENTINEL_NODE

WORKFLOWS = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
NEGATIVE_CONTROL = "missing-node-control.json"  # a workflow with a node type nobody has
NO_SUCH_NODE = "F2DNoSuchNodeType"
ROOTS_ENV = "F2D_FRONTEND_ROOTS"
NO_ROOTS = (f"set {ROOTS_ENV}=<frontend static folder> to also test another frontend, e.g. after "
            "`pip install --target DIR comfyui-frontend-package==1.58.1`: "
            f"{ROOTS_ENV}=DIR/comfyui_frontend_package/static")


def frontend_params():
    roots = [r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r]
    params = [pytest.param(None, id="pinned")]
    params += [pytest.param(r, id=f"root-{Path(r).parent.parent.name or i}") for i, r in enumerate(roots)]
    if not roots:
        params.append(pytest.param("", id="other-frontend", marks=pytest.mark.skip(reason=NO_ROOTS)))
    return params


def expected_version(root: str | None) -> str | None:
    """The comfyui-frontend-package version the server should serve: the checkout's own, or the
    one whose dist-info sits beside the package that holds `root`."""
    if root is None:
        return metadata.version("comfyui-frontend-package")
    for parent in Path(root).resolve().parents:
        found = sorted(parent.glob("comfyui_frontend_package-*.dist-info"))
        if found:
            return found[-1].name.removesuffix(".dist-info").split("-", 1)[1]
    return None


@pytest.fixture(scope="session")
def browser():
    """(chromium path, driver); skips with what is missing."""
    chromium, why = fp.find_chromium()
    if not chromium:
        pytest.skip(why)
    driver, why = fp.find_driver()
    if not driver:
        pytest.skip(why)
    return chromium, driver


# --- fixtures ---------------------------------------------------------------------------------------

def _what_workflows_name(object_info: dict) -> dict:
    """{"images", "checkpoints", "face2diffusion"}: the file names the example workflows pick."""
    named = {"images": set(), "checkpoints": set(), "face2diffusion": set()}
    for name in WORKFLOWS:
        for node in to_api(load_workflow(REPO / "workflows" / name), object_info).values():
            inputs, kind = node["inputs"], node["class_type"]
            if kind == "LoadImage":
                named["images"].add(inputs["image"])
            elif kind == "CheckpointLoaderSimple":
                named["checkpoints"].add(inputs["ckpt_name"])
            elif kind == "LoadF2DEncoder":  # expression_model may be "none", which is no file
                files = (inputs.get(k) for k in ("msid", "mapping", "expression_model"))
                named["face2diffusion"] |= {f for f in files if isinstance(f, str) and "." in f}
    return named


@pytest.fixture(scope="module", params=frontend_params())
def frontend_server(request, comfy_server, comfyui_path, comfy_home, f2d_models_dir):
    """The server for one frontend: the session's ComfyUI (its pinned frontend), or one started
    with --front-end-root for a frontend of F2D_FRONTEND_ROOTS."""
    root = request.param
    if root is None:
        yield comfy_server, None
        return
    from .comfy_server import ComfyServer
    if not (Path(root) / "index.html").is_file():
        pytest.fail(f"{ROOTS_ENV}: {root} is not a frontend's static folder (no index.html in it)")
    server = ComfyServer(comfyui_path, comfy_home / f"frontend-{Path(root).resolve().parent.parent.name}",
                         models_dir=f2d_models_dir, custom_nodes={PACK_DIR_NAME: REPO},
                         extra_args=["--front-end-root", str(root)])
    with server:
        server.require_nodes([SENTINEL_NODE])
        yield server, root


@pytest.fixture(scope="module")
def workflow_files(frontend_server, f2d_models_dir, tiny_sd15_checkpoint):
    """Every file the example workflows name, added where the server looks (and removed after):
    checkpoints as links to the tiny SD1.5 checkpoint, face2diffusion weights the models dir lacks
    as empty placeholders (only their names matter here), photos as small JPEGs in the input dir."""
    from PIL import Image
    server, _ = frontend_server
    named = _what_workflows_name(server.object_info(refresh=True))
    wanted = [(f2d_models_dir / "checkpoints" / n, "link") for n in named["checkpoints"]]
    wanted += [(f2d_models_dir / "face2diffusion" / n, "empty") for n in named["face2diffusion"]]
    wanted += [(server.input_dir / n, "image") for n in named["images"]]
    added = []
    try:
        for path, kind in wanted:
            if path.exists() or path.is_symlink():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            added.append(path)
            if kind == "link":
                path.symlink_to(tiny_sd15_checkpoint)
            elif kind == "empty":
                path.touch()
            else:
                Image.new("RGB", (96, 96), (120, 100, 90)).save(path)
        yield server.object_info(refresh=True)
    finally:
        for path in added:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def frontend(browser, frontend_server, workflow_files):
    """What the frontend made of each workflow (and of the negative control, loaded last)."""
    chromium, driver = browser
    server, root = frontend_server
    server.post("/settings", fp.FRONTEND_SETTINGS)
    control = json.loads((REPO / "workflows" / WORKFLOWS[0]).read_text())
    control["nodes"][0]["type"] = NO_SUCH_NODE
    workflows = [(n, json.loads((REPO / "workflows" / n).read_text())) for n in WORKFLOWS]
    try:
        res = fp.run_frontend(server.url, chromium, driver, workflows + [(NEGATIVE_CONTROL, control)], SENTINEL_NODE)
    except RuntimeError as e:
        pytest.fail(str(e))
    if res.get("failure"):
        pytest.fail(f"the frontend at {server.url} ({driver}) failed: {res['failure']}\n"
                    f"errors while it started: {fp.real_errors(res['startup_errors'])}")
    res["driver"], res["root"] = driver, root
    res["object_info"] = workflow_files
    print(f"\nfrontend {res.get('frontend_version')} ({root or 'pinned'}) via {driver.split(':')[0]}: ready in "
          f"{res['timings']['ready_s']:.1f} s, all workflows in {res['timings']['total_s']:.1f} s; "
          f"{len(res['blocked'])} request(s) off the local server aborted {res['blocked'][:3]}")
    return res


# --- comparing --------------------------------------------------------------------------------------

def _canon(v):
    """JSON value with numbers compared by value (a browser writes 1.0 as 1) but never equal to booleans."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, (int, float)):
        return ("number", float(v))
    if isinstance(v, list):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


def prompt_differences(ours: dict, theirs: dict) -> list[str]:
    """Every difference between two API prompts, ignoring `_meta` and key order."""
    out = []
    for nid in sorted(set(ours) | set(theirs), key=lambda k: (len(k), k)):
        a, b = ours.get(nid), theirs.get(nid)
        if a is None or b is None:
            which, node = ("frontend", b) if a is None else ("to_api", a)
            out.append(f"node {nid} ({node.get('class_type')}) only in the {which} prompt")
            continue
        if a.get("class_type") != b.get("class_type"):
            out.append(f"node {nid}: class_type {a.get('class_type')!r} (to_api) vs "
                       f"{b.get('class_type')!r} (frontend)")
        ai, bi = a.get("inputs", {}), b.get("inputs", {})
        for name in sorted(set(ai) | set(bi)):
            x, y = ai.get(name, "<absent>"), bi.get(name, "<absent>")
            if _canon(x) != _canon(y):
                out.append(f"node {nid} ({a.get('class_type')}) input {name}: {x!r} (to_api) vs {y!r} (frontend)")
    return out


# --- tests ------------------------------------------------------------------------------------------

def test_the_frontend_is_the_one_asked_for(frontend):
    expected = expected_version(frontend["root"])
    assert frontend["frontend_version"] and (expected is None or frontend["frontend_version"] == expected)


def test_expected_version_reads_the_version_off_the_dist_info(tmp_path):
    static = tmp_path / "comfyui_frontend_package" / "static"
    static.mkdir(parents=True)
    (tmp_path / "comfyui_frontend_package-1.58.1.dist-info").mkdir()
    assert expected_version(str(static)) == "1.58.1"


def test_the_missing_node_check_sees_a_missing_node(frontend):
    """The negative control: an unknown node type is reported, so the checks below can fail.
    The user is told as each frontend tells them: the 1.27 frontends open a "Some Nodes Are Missing"
    dialog naming the type; the 1.5x ones show an error overlay ("1 issue found") whose details, in
    the side panel's Issues tab, name it."""
    r = frontend["results"][NEGATIVE_CONTROL]
    assert r["missing"] == [NO_SUCH_NODE]
    told = r["dialogs"] + r["overlays"]
    assert any(NO_SUCH_NODE in t for t in told), f"frontend {frontend['frontend_version']} showed: {told}"
    assert any(NO_SUCH_NODE in p for p in r["problems"]), r["problems"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_workflow_loads_in_the_frontend_without_errors(frontend, name):
    r = frontend["results"][name]
    workflow = json.loads((REPO / "workflows" / name).read_text())
    report = {k: r[k] for k in ("missing", "problems", "dialogs", "toasts", "overlays")}
    report["errors"] = fp.real_errors(r["errors"])
    assert not any(report.values()), f"frontend {frontend.get('frontend_version')}: {json.dumps(report, indent=1)}"
    assert r["node_count"] == len(workflow["nodes"])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_frontend_prompt_equals_to_api(frontend, name):
    ours = to_api(load_workflow(REPO / "workflows" / name), frontend["object_info"])
    theirs = frontend["results"][name]["output"]
    diffs = prompt_differences(ours, theirs)
    assert not diffs, f"frontend {frontend.get('frontend_version')} vs to_api:\n" + "\n".join(diffs)


def drawn(frontend, name) -> dict:
    """The layout as the frontend drew it (workflow_layout's form)."""
    r = frontend["results"][name]
    return {"nodes": [{"id": int(n["id"]), "type": n["type"], "title": n["title"], "box": n["box"]}
                      for n in r["nodes"]],
            "groups": [{"title": g["title"], "box": g["box"]} for g in r["groups"]], "links": []}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_frontend_draws_every_node_at_its_stored_size(frontend, name):
    """A node smaller than its widgets need is grown on loading, and may then cover its neighbour."""
    stored = {n["id"]: wl.node_box(n) for n in json.loads((REPO / "workflows" / name).read_text())["nodes"]}
    grown = [f"node {n['id']} ({n['title']}): stored {stored[n['id']]}, drawn {[round(v, 1) for v in n['box']]}"
             for n in drawn(frontend, name)["nodes"]
             if any(abs(a - b) > 0.5 for a, b in zip(n["box"], stored[n["id"]]))]
    assert not grown, f"frontend {frontend['frontend_version']}:\n" + "\n".join(grown)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_as_drawn_no_boxes_overlap_and_every_node_is_in_its_group(frontend, name):
    problems = wl.geometry_problems(drawn(frontend, name))
    assert not problems, f"frontend {frontend['frontend_version']}:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_notes_text_fits_its_box_at_the_stored_view(frontend, name):
    """Measured on the note's own text element, which the frontend only shows when the note is in view."""
    notes = [n for n in frontend["results"][name]["nodes"] if n["type"] in wl.NOTES]
    assert notes and all(n["text_fits"] is True for n in notes), [(n["title"], n["text_fits"]) for n in notes]


def test_the_template_browser_lists_the_workflows_with_their_thumbnails(comfy_server):
    """ComfyUI lists custom_nodes/<pack>/workflows/*.json under /workflow_templates and serves the
    folder at /api/workflow_templates/<pack>/; the browser shows <name>.jpg for each."""
    listed = comfy_server.get("/workflow_templates").get(PACK_DIR_NAME, [])
    assert sorted(listed) == sorted(Path(n).stem for n in WORKFLOWS)
    for stem in listed:
        with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates/{PACK_DIR_NAME}/{stem}.jpg") as r:
            assert r.status == 200 and r.read(3) == b"\xff\xd8\xff", stem  # a JPEG


def test_prompt_differences_names_the_node_the_input_and_both_values():
    ours = {"1": {"class_type": "KSampler", "inputs": {"cfg": 7.0, "model": ["2", 0], "add_noise": True}},
            "3": {"class_type": "VAEDecode", "inputs": {}}}
    theirs = {"1": {"class_type": "KSampler", "inputs": {"cfg": 7, "model": ["2", 1], "add_noise": 1},
                    "_meta": {"title": "x"}}}
    assert prompt_differences(ours, theirs) == [
        "node 1 (KSampler) input add_noise: True (to_api) vs 1 (frontend)",
        "node 1 (KSampler) input model: ['2', 0] (to_api) vs ['2', 1] (frontend)",
        "node 3 (VAEDecode) only in the to_api prompt"]
