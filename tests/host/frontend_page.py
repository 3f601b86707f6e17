"""ComfyUI's web frontend in headless Chromium: load workflows, convert them, measure and photograph them.

Used by test_frontend_host.py and scripts/workflow_screenshots.py, so the screenshots show what the
test checked. Needs Chromium (Debian's `chromium`, or F2D_CHROMIUM=<binary>) and a driver for it:
the Python package `playwright` importable by this python (never `playwright install`: the system
Chromium is used), or Node.js with playwright-core (`npm install playwright-core` in a folder
outside the repo, NODE_PATH=<that folder>/node_modules). F2D_BROWSER_DRIVER=python|node picks one.
Nothing is downloaded: the browser runs with a fresh profile, no background networking, and every
request that is not to the local server is aborted.
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

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# a fresh user gets the template picker and the release notes (from api.comfy.org); the minimap
# would cover the graph's lower right corner in screenshots
FRONTEND_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
                     "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}
READY_TIMEOUT_MS = 120_000
SETTLE_TIMEOUT_MS = 20_000
VIEWPORT = {"width": 1920, "height": 1080}  # a common desktop window: the default view is judged in it

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

# loads like dropping the file on the canvas, then reports what the frontend made of it: missing
# types, marked errors, combo values outside their options, dialogs and toasts, graphToPrompt(), and
# the geometry as drawn (node boxes with the title bar, group boxes, whether each note's text fits)
JS_LOAD_AND_CONVERT = """async ([workflow, name]) => {
  const app = window.app, LG = window.LiteGraph;
  window.__f2dCheck.missing = [];
  const toastsBefore = new Set(document.querySelectorAll('.p-toast-message'));
  await app.loadGraphData(workflow, true, true, name);
  await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 300)));
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
  const title = LG.NODE_TITLE_HEIGHT;
  const nodes = app.graph.nodes.map((n) => {
    // a note's text element: the textarea of Note, the rendered markdown of MarkdownNote
    const el = (n.widgets || []).map((w) => w.element || w.inputEl).find((e) => e && e.isConnected);
    const fits = el ? el.scrollHeight <= el.clientHeight + 2 && el.scrollWidth <= el.clientWidth + 2 : null;
    let textHeight = null;  // graph px from the element's top to the bottom of its lowest text
    if (el) {
      const top = el.getBoundingClientRect().top;
      let low = top;
      for (const c of el.querySelectorAll('*'))  // the lowest element holding text itself, not a wrapper
        if ([...c.childNodes].some((t) => t.nodeType === 3 && t.textContent.trim()))
          low = Math.max(low, c.getBoundingClientRect().bottom);
      if (el.tagName === 'TEXTAREA') low = top + el.scrollHeight * app.canvas.ds.scale;
      textHeight = (low - top) / app.canvas.ds.scale;
    }
    const min = n.computeSize ? n.computeSize() : null;  // what its widgets and sockets need
    return { id: n.id, type: n.type, title: n.title, box: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
             min_size: min ? [min[0], min[1]] : null, text_fits: fits, text_height: textHeight };
  });
  const groups = (app.graph.groups || app.graph._groups || []).map((g) => ({
    title: g.title, box: [g.pos[0], g.pos[1], g.size[0], g.size[1]] }));
  const prompt = await app.graphToPrompt();
  return { missing: window.__f2dCheck.missing, node_count: app.graph.nodes.length, problems, dialogs, toasts,
           output: prompt.output, nodes, groups };
}"""

# what the frontend told the user about the loaded workflow once it settled, beyond the dialogs and
# toasts seen at once: the 1.27 frontends open a dialog listing missing node types; the 1.5x ones
# show an error overlay ("1 issue found") whose "View details" opens the side panel's Issues tab,
# where the missing types are listed. Returns the overlay's text and, after clicking it, the panel's.
JS_REPORTED = """async ([waitMs]) => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const t0 = Date.now();
  let overlay = document.querySelector('[data-testid=error-overlay]');
  while (!overlay && Date.now() - t0 < waitMs) {
    await sleep(100);
    overlay = document.querySelector('[data-testid=error-overlay]');
  }
  const dialogs = [...document.querySelectorAll('.p-dialog')].map((d) => d.innerText.trim());
  if (!overlay) return { overlays: [], dialogs, waited_ms: Date.now() - t0 };
  const overlays = [overlay.innerText.trim()];
  const details = [...overlay.querySelectorAll('*')]
    .find((e) => e.children.length === 0 && /view details/i.test(e.textContent.trim()));
  if (details) {
    details.click();
    const until = Date.now() + 5000;
    let panel = null;
    while (!panel && Date.now() < until) {
      await sleep(100);
      panel = [...document.querySelectorAll('[role=tabpanel], aside, section, div')]
        .filter((e) => e !== overlay && !overlay.contains(e) && /\\bIssues\\b/.test(e.innerText || '')
                && (e.innerText || '').length < 20000)
        .sort((a, b) => (a.innerText || '').length - (b.innerText || '').length)
        .find((e) => /missing/i.test(e.innerText || ''));
    }
    window.__f2dPanel = panel;
    if (panel) overlays.push(panel.innerText.trim());
  }
  return { overlays, dialogs, waited_ms: Date.now() - t0 };
}"""
REPORT_WAIT_MS = 3000  # how long after the load settled an error overlay may take to appear

# sets the view (the workflow's stored one, or the whole graph fitted into the canvas) and returns
# the rectangle of the page to photograph: the canvas, or the graph's box on it
JS_VIEW = """async ([view, clip, pad, focus, script]) => {
  const app = window.app, LG = window.LiteGraph, canvas = app.canvas, ds = canvas.ds;
  if (script) await (0, eval)('(' + script + ')')();  // e.g. open a dialog to photograph
  if (app.extensionManager && 'focusMode' in app.extensionManager && app.extensionManager.focusMode !== focus) {
    app.extensionManager.focusMode = focus;  // focus mode hides menus and side bars
    await new Promise((done) => setTimeout(done, 300));
  }
  const el = canvas.canvas, r = el.getBoundingClientRect();
  const boxes = app.graph.nodes.map((n) => [n.pos[0], n.pos[1] - LG.NODE_TITLE_HEIGHT, n.size[0],
                                             n.size[1] + LG.NODE_TITLE_HEIGHT])
    .concat((app.graph.groups || app.graph._groups || []).map((g) => [g.pos[0], g.pos[1], g.size[0], g.size[1]]));
  const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
  const x1 = Math.max(...boxes.map((b) => b[0] + b[2])), y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
  if (view && view.scale) {
    ds.scale = view.scale;
    ds.offset[0] = view.offset[0]; ds.offset[1] = view.offset[1];
  } else if (view === 'fit') {
    const s = Math.min((r.width - 2 * pad) / (x1 - x0), (r.height - 2 * pad) / (y1 - y0));
    ds.scale = s;
    ds.offset[0] = (r.width - s * (x1 - x0)) / 2 / s - x0;
    ds.offset[1] = (r.height - s * (y1 - y0)) / 2 / s - y0;
  }
  canvas.setDirty(true, true);
  canvas.draw(true, true);
  const s = ds.scale, ox = ds.offset[0], oy = ds.offset[1];
  if (clip === 'page') return { x: 0, y: 0, width: window.innerWidth, height: window.innerHeight, scale: s };
  if (clip === 'graph') {
    const left = Math.max(r.left, r.left + (x0 + ox) * s - pad), top = Math.max(r.top, r.top + (y0 + oy) * s - pad);
    const right = Math.min(r.right, r.left + (x1 + ox) * s + pad), bottom = Math.min(r.bottom, r.top + (y1 + oy) * s + pad);
    return { x: left, y: top, width: right - left, height: bottom - top, scale: s };
  }
  return { x: r.left, y: r.top, width: r.width, height: r.height, scale: s };
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
    executablePath: job.chromium, headless: true, args: job.args, viewport: job.viewport });
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
    // settled: no request in flight for half a second, so what a step logs is counted for that step
    let inflight = 0, changed = Date.now();
    const count = (d) => () => { inflight += d; changed = Date.now(); };
    page.on('request', count(1)); page.on('requestfinished', count(-1)); page.on('requestfailed', count(-1));
    const settle = async () => {
      const end = Date.now() + job.settle_timeout_ms;
      while (Date.now() < end && (inflight > 0 || Date.now() - changed < 500)) await page.waitForTimeout(100);
    };
    await page.goto(job.url);
    await page.waitForFunction(fn(job.js_ready), job.sentinel, { timeout: job.ready_timeout_ms });
    res.frontend_version = await page.evaluate(fn(job.js_setup));
    await settle();  // the frontend's own start-up graph and its checks
    res.timings.ready_s = (Date.now() - t0) / 1000;
    for (const [name, workflow] of job.workflows) {
      const t = Date.now();
      errors = [];
      const r = await page.evaluate(fn(job.js_load), [workflow, name]);
      await settle();
      const told = await page.evaluate(fn(job.js_reported), [job.report_wait_ms]);
      r.overlays = told.overlays;
      r.dialogs = [...new Set(r.dialogs.concat(told.dialogs))];
      r.report_wait_ms = told.waited_ms;
      r.errors = errors;
      r.shots = [];
      for (const shot of (job.shots[name] || [])) {
        await page.setViewportSize(shot.viewport || job.viewport);
        await page.waitForTimeout(300);
        const rect = await page.evaluate(fn(job.js_view), [shot.view, shot.clip, shot.pad, shot.focus, shot.script]);
        await page.waitForTimeout(300);
        const clip = { x: rect.x, y: rect.y, width: rect.width, height: rect.height };
        const opts = { path: shot.path, clip };
        if (shot.path.endsWith('.jpg')) { opts.type = 'jpeg'; opts.quality = shot.quality || 85; }
        await page.screenshot(opts);
        r.shots.push({ path: shot.path, scale: rect.scale });
      }
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


# --- running the page -------------------------------------------------------------------------------

def _run_python(job: dict) -> dict:
    from playwright.sync_api import sync_playwright  # optional: the node driver works without it
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

    net = {"inflight": 0, "changed": time.monotonic()}

    def count(d):
        def on(_):
            net["inflight"] += d
            net["changed"] = time.monotonic()
        return on

    def settle(page):  # no request in flight for half a second (see the node driver)
        end = time.monotonic() + job["settle_timeout_ms"] / 1000
        while time.monotonic() < end and (net["inflight"] > 0 or time.monotonic() - net["changed"] < 0.5):
            page.wait_for_timeout(100)

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(job["user_data_dir"], executable_path=job["chromium"],
                                                    headless=True, args=job["args"], viewport=job["viewport"])
        try:
            ctx.route("**/*", route)
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.on("console", console)
            page.on("pageerror", lambda e: errors.append({"kind": "pageerror", "text": f"{e}\n{e.stack or ''}"}))
            for event, d in (("request", 1), ("requestfinished", -1), ("requestfailed", -1)):
                page.on(event, count(d))
            page.goto(job["url"])
            page.wait_for_function(job["js_ready"], arg=job["sentinel"], timeout=job["ready_timeout_ms"])
            res["frontend_version"] = page.evaluate(job["js_setup"])
            settle(page)
            res["timings"]["ready_s"] = time.monotonic() - t0
            for name, workflow in job["workflows"]:
                t = time.monotonic()
                errors = []
                r = page.evaluate(job["js_load"], [workflow, name])
                settle(page)
                told = page.evaluate(job["js_reported"], [job["report_wait_ms"]])
                r["overlays"] = told["overlays"]
                r["dialogs"] = list(dict.fromkeys(r["dialogs"] + told["dialogs"]))
                r["report_wait_ms"] = told["waited_ms"]
                r["errors"], r["shots"] = errors, []
                for shot in job["shots"].get(name, []):
                    page.set_viewport_size(shot.get("viewport") or job["viewport"])
                    page.wait_for_timeout(300)
                    rect = page.evaluate(job["js_view"], [shot["view"], shot["clip"], shot["pad"], shot["focus"], shot["script"]])
                    page.wait_for_timeout(300)
                    clip = {k: rect[k] for k in ("x", "y", "width", "height")}
                    jpeg = shot["path"].endswith(".jpg")
                    page.screenshot(path=shot["path"], clip=clip, type="jpeg" if jpeg else "png",
                                    **({"quality": shot.get("quality", 85)} if jpeg else {}))
                    r["shots"].append({"path": shot["path"], "scale": rect["scale"]})
                r["seconds"] = time.monotonic() - t
                res["results"][name] = r
        except Exception as e:  # noqa: BLE001 - reported by the caller, with what the page logged
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
                         text=True, timeout=900)
    if run.returncode != 0 or not out.exists():
        raise RuntimeError(f"the node driver exited with {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(out.read_text())


def shot(path, view="stored", clip="canvas", pad=24, quality=85, viewport=None, focus=False, script=None) -> dict:
    """A screenshot taken after a workflow is loaded. view: "stored" (the workflow's own extra.ds, what
    a user sees on opening it), "fit" (the whole graph fitted into the canvas) or {"scale", "offset"};
    clip: "canvas" (the whole canvas) or "graph" (the graph's box on the canvas, `pad` px around);
    viewport: the window size for it (default: the run's); focus: in focus mode (no menus, side bars);
    script: the source of an async function run in the page first; clip "page" takes the whole window."""
    return {"path": str(path), "view": view, "clip": clip, "pad": pad, "quality": quality, "viewport": viewport,
            "focus": focus, "script": script}


def run_frontend(url: str, chromium: str, driver: str, workflows: list, sentinel: str,
                 shots: dict | None = None, viewport: dict | None = None) -> dict:
    """Open the frontend at `url`, load each (name, workflow), convert and measure it and take its
    `shots` ({name: [shot(...), ...]}); returns {frontend_version, blocked, startup_errors,
    results: {name: ...}, timings, failure?}."""
    with tempfile.TemporaryDirectory(prefix="f2d-chromium-") as work:
        job = {"url": url, "host": urlsplit(url).hostname, "chromium": chromium, "args": CHROMIUM_ARGS,
               "user_data_dir": str(Path(work) / "profile"), "sentinel": sentinel,
               "ready_timeout_ms": READY_TIMEOUT_MS, "settle_timeout_ms": SETTLE_TIMEOUT_MS,
               "js_ready": JS_READY, "js_setup": JS_SETUP, "js_load": JS_LOAD_AND_CONVERT, "js_view": JS_VIEW,
               "js_reported": JS_REPORTED, "report_wait_ms": REPORT_WAIT_MS,
               "workflows": workflows, "shots": shots or {}, "viewport": viewport or VIEWPORT}
        if driver == "python":
            return _run_python(job)
        _, node, playwright_core = driver.split(":", 2)
        return _run_node(job, node, playwright_core, Path(work))


# --- what the page logged ---------------------------------------------------------------------------

# Requests a fresh user's frontend makes whose 404 is expected: the user's own files
# (/api/userdata/..., user.css), and two routes the 1.5x frontends call that a 0.3.64 backend lacks.
MISSING_ON_OLDER_BACKENDS = ("/api/jobs", "/api/global_subgraphs")


def benign(error: dict) -> bool:
    if error.get("kind") != "console" or not error.get("text", "").startswith("Failed to load resource"):
        return False
    url = error.get("url", "")
    path = urlsplit(url).path
    if "/api/userdata" in url or url.endswith("/user.css"):
        return True
    return "404" in error["text"] and path in MISSING_ON_OLDER_BACKENDS


def real_errors(errors: list) -> list:
    """Errors worth failing on: everything but the benign 404s above."""
    return [e for e in errors if not benign(e)]
