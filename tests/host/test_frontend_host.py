"""The example workflows in ComfyUI's own web frontend, driven in headless Chromium.

Each workflows/*.json is loaded with `app.loadGraphData` (what dropping the file on the canvas
does) into the frontend the ComfyUI checkout serves (comfyui-frontend-package), with this pack's
nodes and every model, image and option the workflow names present. The frontend must report no
missing node type, no error, dialog or toast, and every combo value must be one of the options
the server lists. Then the frontend's own conversion, `app.graphToPrompt().output`, must equal
f2d_core.client.workflow.to_api(workflow, /object_info): same nodes, class types, widget values and
links (`_meta` is not compared; 1 and 1.0 are the same number, as in JSON from a browser).

Needs, besides the host tests' COMFYUI_PATH (see conftest):
  - Chromium: Debian's `chromium` package (/usr/bin/chromium), or F2D_CHROMIUM=<binary>;
  - a driver for it, either the Python package `playwright` importable by this python
    (`pip install playwright`; never `playwright install`, the system Chromium is used), or
    Node.js with playwright-core: `npm install playwright-core` in a folder outside the repo and
    NODE_PATH=<that folder>/node_modules. F2D_BROWSER_DRIVER=python|node picks one.
Otherwise every test here is skipped, saying which is missing. Nothing is downloaded: the browser
runs with a fresh profile, no background networking, and every request that is not to the local
server is aborted.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from f2d_core.client.workflow import load_workflow, to_api

from .conftest import REPO, SENTINEL_NODE

WORKFLOWS = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# a fresh user gets the template picker and the release notes (from api.comfy.org)
FRONTEND_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False}
READY_TIMEOUT_MS = 120_000
NEGATIVE_CONTROL = "missing-node-control.json"  # a workflow with a node type nobody has
NO_SUCH_NODE = "F2DNoSuchNodeType"

# --- what runs in the page (the same for both drivers) --------------------------------------------

JS_READY = """(sentinel) => !!(window.app && window.app.vueAppReady && window.app.graph && window.LiteGraph
    && window.LiteGraph.registered_node_types[sentinel])"""

JS_SETUP = """() => {
  window.__f2dCheck = { missing: [] };
  window.app.registerExtension({
    name: 'f2d.tests.frontendCheck',
    afterConfigureGraph(missing) {
      for (const m of missing || []) window.__f2dCheck.missing.push(typeof m === 'string' ? m : m.type);
    },
  });
  return window.__COMFYUI_FRONTEND_VERSION__ || null;
}"""

JS_LOAD_AND_CONVERT = """async ([workflow, name]) => {
  const app = window.app, LG = window.LiteGraph;
  window.__f2dCheck.missing = [];
  const toastsBefore = new Set(document.querySelectorAll('.p-toast-message'));
  await app.loadGraphData(workflow, true, true, name);
  await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 100)));
  const problems = [];
  for (const n of app.graph.nodes) {
    if (!(n.type in LG.registered_node_types)) problems.push(`node ${n.id}: type ${n.type} is not registered`);
    if (n.has_errors) problems.push(`node ${n.id} (${n.type}) is marked has_errors`);
    for (const w of n.widgets || []) {
      const values = w.options && w.options.values;
      if (w.type === 'combo' && Array.isArray(values) && !values.includes(w.value))
        problems.push(`node ${n.id} (${n.type}): ${w.name} = ${JSON.stringify(w.value)} is not one of its options `
                      + JSON.stringify(values.slice(0, 20)));
    }
  }
  const dialogs = [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.trim());
  const toasts = [...document.querySelectorAll('.p-toast-message')].filter((t) => !toastsBefore.has(t))
    .map((t) => t.innerText.trim());
  const prompt = await app.graphToPrompt();
  return { missing: window.__f2dCheck.missing, node_count: app.graph.nodes.length, problems, dialogs, toasts,
           output: prompt.output };
}"""

# node -> playwright-core; reads the job file, writes the result file (same shape as _run_python)
NODE_DRIVER = r"""
const fs = require('fs');
const { chromium } = require(process.argv[2]);
(async () => {
  const job = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
  const fn = (src) => eval('(' + src + ')');
  const res = { blocked: [], startup_errors: [], results: {}, timings: {} };
  let errors = res.startup_errors;
  const t0 = Date.now();
  const ctx = await chromium.launchPersistentContext(job.user_data_dir, {
    executablePath: job.chromium, headless: true, args: job.args });
  try {
    await ctx.route('**/*', (route) => {
      const url = new URL(route.request().url());
      if (url.hostname === job.host) return route.continue();
      res.blocked.push(url.href);
      return route.abort();
    });
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push({ kind: 'console', text: m.text(), url: m.location().url });
    });
    page.on('pageerror', (e) => errors.push({ kind: 'pageerror', text: String(e.stack || e) }));
    await page.goto(job.url);
    await page.waitForFunction(fn(job.js_ready), job.sentinel, { timeout: job.ready_timeout_ms });
    res.frontend_version = await page.evaluate(fn(job.js_setup));
    res.timings.ready_s = (Date.now() - t0) / 1000;
    for (const [name, workflow] of job.workflows) {
      const t = Date.now();
      errors = [];
      const r = await page.evaluate(fn(job.js_load), [workflow, name]);
      r.errors = errors;
      r.seconds = (Date.now() - t) / 1000;
      res.results[name] = r;
    }
  } catch (e) {
    res.failure = String(e.stack || e);
  } finally {
    await ctx.close();
  }
  res.timings.total_s = (Date.now() - t0) / 1000;
  fs.writeFileSync(process.argv[4], JSON.stringify(res));
})();
"""


# --- finding a browser and a driver -----------------------------------------------------------------

def find_chromium() -> tuple[str | None, str]:
    """(path, "") or (None, why not)."""
    env = os.environ.get("F2D_CHROMIUM")
    if env:
        path = shutil.which(env)
        return (path, "") if path else (None, f"F2D_CHROMIUM={env} is not an executable")
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name), ""
    return None, (f"no Chromium ({', '.join(CHROMIUM_NAMES)} not on PATH): install Debian's chromium "
                  "(apt-get install chromium) or set F2D_CHROMIUM=<Chromium or Chrome binary>")


def _python_driver() -> tuple[str | None, str]:
    if importlib.util.find_spec("playwright") is None:
        return None, f"the Python package playwright is not importable by {sys.executable}"
    return "python", ""


def _node_driver() -> tuple[str | None, str]:
    node = shutil.which("node")
    if not node:
        return None, "node is not on PATH"
    try:  # from / so that only NODE_PATH and node's global folders count
        run = subprocess.run([node, "-e", "process.stdout.write(require.resolve('playwright-core'))"], cwd="/",
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"node could not be run ({e})"
    if run.returncode != 0:
        return None, f"node cannot require('playwright-core') (NODE_PATH={os.environ.get('NODE_PATH', '(unset)')})"
    return f"node:{node}:{run.stdout.strip()}", ""


def find_driver() -> tuple[str | None, str]:
    """("python", "") / ("node:<node>:<playwright-core entry>", "") or (None, why not)."""
    forced = os.environ.get("F2D_BROWSER_DRIVER")
    finders = {"python": _python_driver, "node": _node_driver}
    if forced and forced not in finders:
        return None, f"F2D_BROWSER_DRIVER={forced}: use python or node"
    whys = []
    for name in [forced] if forced else ["python", "node"]:
        driver, why = finders[name]()
        if driver:
            return driver, ""
        whys.append(why)
    return None, ("no browser driver: " + "; ".join(whys) + ". Either `pip install playwright` into this python "
                  "(never `playwright install`: the system Chromium is used), or `npm install playwright-core` "
                  "in a folder outside the repo and set NODE_PATH=<that folder>/node_modules")


@pytest.fixture(scope="session")
def browser():
    """(chromium path, driver); skips with what is missing."""
    chromium, why = find_chromium()
    if not chromium:
        pytest.skip(why)
    driver, why = find_driver()
    if not driver:
        pytest.skip(why)
    return chromium, driver


# --- running the page -------------------------------------------------------------------------------

def _run_python(job: dict) -> dict:
    from playwright.sync_api import sync_playwright
    res = {"blocked": [], "startup_errors": [], "results": {}, "timings": {}}
    errors = res["startup_errors"]
    t0 = time.monotonic()

    def route(r):
        url = r.request.url
        if urlsplit(url).hostname == job["host"]:
            return r.continue_()
        res["blocked"].append(url)
        return r.abort()

    def console(m):
        if m.type == "error":
            errors.append({"kind": "console", "text": m.text, "url": (m.location or {}).get("url", "")})

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(job["user_data_dir"], executable_path=job["chromium"],
                                                    headless=True, args=job["args"])
        try:
            ctx.route("**/*", route)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.on("console", console)
            page.on("pageerror", lambda e: errors.append({"kind": "pageerror", "text": f"{e}\n{e.stack or ''}"}))
            page.goto(job["url"])
            page.wait_for_function(job["js_ready"], arg=job["sentinel"], timeout=job["ready_timeout_ms"])
            res["frontend_version"] = page.evaluate(job["js_setup"])
            res["timings"]["ready_s"] = time.monotonic() - t0
            for name, workflow in job["workflows"]:
                t = time.monotonic()
                errors = []
                r = page.evaluate(job["js_load"], [workflow, name])
                r["errors"], r["seconds"] = errors, time.monotonic() - t
                res["results"][name] = r
        except Exception as e:  # noqa: BLE001 - reported by the tests, with what the page logged
            res["failure"] = repr(e)
        finally:
            ctx.close()
    res["timings"]["total_s"] = time.monotonic() - t0
    return res


def _run_node(job: dict, node: str, playwright_core: str, work: Path) -> dict:
    script, job_file, out = work / "driver.cjs", work / "job.json", work / "result.json"
    script.write_text(NODE_DRIVER)
    job_file.write_text(json.dumps(job))
    run = subprocess.run([node, str(script), playwright_core, str(job_file), str(out)], capture_output=True,
                         text=True, timeout=600)
    if run.returncode != 0 or not out.exists():
        pytest.fail(f"the node driver exited with {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_frontend(url: str, chromium: str, driver: str, workflows: list) -> dict:
    """Open the frontend at `url`, load each (name, workflow) and convert it; returns
    {frontend_version, blocked, startup_errors, results: {name: ...}, timings, failure?}."""
    with tempfile.TemporaryDirectory(prefix="f2d-chromium-") as work:
        job = {"url": url, "host": urlsplit(url).hostname, "chromium": chromium, "args": CHROMIUM_ARGS,
               "user_data_dir": str(Path(work) / "profile"), "sentinel": SENTINEL_NODE,
               "ready_timeout_ms": READY_TIMEOUT_MS, "js_ready": JS_READY, "js_setup": JS_SETUP,
               "js_load": JS_LOAD_AND_CONVERT, "workflows": workflows}
        if driver == "python":
            return _run_python(job)
        _, node, playwright_core = driver.split(":", 2)
        return _run_node(job, node, playwright_core, Path(work))


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


@pytest.fixture(scope="module")
def workflow_files(comfy_server, f2d_models_dir, tiny_sd15_checkpoint):
    """Every file the example workflows name, added where the server looks (and removed after):
    checkpoints as links to the tiny SD1.5 checkpoint, face2diffusion weights the models dir lacks
    as empty placeholders (only their names matter here), photos as small JPEGs in the input dir."""
    from PIL import Image
    named = _what_workflows_name(comfy_server.object_info(refresh=True))
    wanted = [(f2d_models_dir / "checkpoints" / n, "link") for n in named["checkpoints"]]
    wanted += [(f2d_models_dir / "face2diffusion" / n, "empty") for n in named["face2diffusion"]]
    wanted += [(comfy_server.input_dir / n, "image") for n in named["images"]]
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
        yield comfy_server.object_info(refresh=True)
    finally:
        for path in added:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def frontend(browser, comfy_server, workflow_files):
    """What the frontend made of each workflow (and of the negative control, loaded last)."""
    chromium, driver = browser
    comfy_server.post("/settings", FRONTEND_SETTINGS)
    control = json.loads((REPO / "workflows" / WORKFLOWS[0]).read_text())
    control["nodes"][0]["type"] = NO_SUCH_NODE
    workflows = [(n, json.loads((REPO / "workflows" / n).read_text())) for n in WORKFLOWS]
    res = run_frontend(comfy_server.url, chromium, driver, workflows + [(NEGATIVE_CONTROL, control)])
    if res.get("failure"):
        pytest.fail(f"the frontend at {comfy_server.url} ({driver}) failed: {res['failure']}\n"
                    f"errors while it started: {_errors(res['startup_errors'])}")
    res["driver"] = driver
    res["object_info"] = workflow_files
    print(f"\nfrontend {res.get('frontend_version')} via {driver.split(':')[0]}: ready in "
          f"{res['timings']['ready_s']:.1f} s, all workflows in {res['timings']['total_s']:.1f} s; "
          f"{len(res['blocked'])} request(s) off the local server aborted {res['blocked'][:3]}")
    return res


# --- comparing --------------------------------------------------------------------------------------

def _errors(errors: list) -> list:
    """Errors worth failing on: not the 404s of a fresh user's files (/api/userdata/..., user.css)."""
    def benign(e):
        url = e.get("url", "")
        return (e["kind"] == "console" and e["text"].startswith("Failed to load resource")
                and ("/api/userdata" in url or url.endswith("/user.css")))
    return [e for e in errors if not benign(e)]


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

def test_the_missing_node_check_sees_a_missing_node(frontend):
    """The negative control: an unknown node type is reported, so the checks below can fail."""
    r = frontend["results"][NEGATIVE_CONTROL]
    assert r["missing"] == [NO_SUCH_NODE]
    assert any(NO_SUCH_NODE in d for d in r["dialogs"]), r["dialogs"]
    assert any(NO_SUCH_NODE in p for p in r["problems"]), r["problems"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_workflow_loads_in_the_frontend_without_errors(frontend, name):
    r = frontend["results"][name]
    workflow = json.loads((REPO / "workflows" / name).read_text())
    report = {k: r[k] for k in ("missing", "problems", "dialogs", "toasts")}
    report["errors"] = _errors(r["errors"])
    assert not any(report.values()), f"frontend {frontend.get('frontend_version')}: {json.dumps(report, indent=1)}"
    assert r["node_count"] == len(workflow["nodes"])


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_frontend_prompt_equals_to_api(frontend, name):
    ours = to_api(load_workflow(REPO / "workflows" / name), frontend["object_info"])
    theirs = frontend["results"][name]["output"]
    diffs = prompt_differences(ours, theirs)
    assert not diffs, f"frontend {frontend.get('frontend_version')} vs to_api:\n" + "\n".join(diffs)


def test_prompt_differences_names_the_node_the_input_and_both_values():
    ours = {"1": {"class_type": "KSampler", "inputs": {"cfg": 7.0, "model": ["2", 0], "add_noise": True}},
            "3": {"class_type": "VAEDecode", "inputs": {}}}
    theirs = {"1": {"class_type": "KSampler", "inputs": {"cfg": 7, "model": ["2", 1], "add_noise": 1},
                    "_meta": {"title": "x"}}}
    assert prompt_differences(ours, theirs) == [
        "node 1 (KSampler) input add_noise: True (to_api) vs 1 (frontend)",
        "node 1 (KSampler) input model: ['2', 0] (to_api) vs ['2', 1] (frontend)",
        "node 3 (VAEDecode) only in the to_api prompt"]
