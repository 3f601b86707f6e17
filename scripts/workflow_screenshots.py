"""Screenshots of the example workflows in ComfyUI's real frontend(s), and the template thumbnails.

Starts the ComfyUI checkout headless on 127.0.0.1 with this pack (and placeholder files for every
model and photo the workflows name, so nothing is marked missing), opens each frontend in headless
Chromium with the host tests' driver (tests/host/frontend_page.py: the same loading the frontend
test checks) and photographs every workflow:
  <out>/<frontend version>/<name>.default.png   the view a user gets on opening it, in a 1920x1080 window
  <out>/<frontend version>/<name>.full.png      the whole graph at 100 % zoom
With --thumbnails, workflows/<name>.jpg (the picture ComfyUI's template browser shows for a custom
node pack's workflow) is written from the first frontend: the whole graph, fitted.

    COMFYUI_PATH=~/ComfyUI NODE_PATH=<dir>/node_modules <ComfyUI's python> scripts/workflow_screenshots.py \\
        --out /tmp/screens --frontend-root <dir>/comfyui_frontend_package/static --thumbnails

Not shipped (scripts/ is outside the registry archive).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from PIL import Image, ImageDraw  # noqa: E402  (after the path set-up)

from f2d_core.client.workflow import load_workflow, to_api  # noqa: E402
from tests.host import frontend_page as fp  # noqa: E402
from tests.host.comfy_server import ComfyServer  # noqa: E402

PACK_DIR_NAME, SENTINEL_NODE = "face2diffusion", "LoadF2DEncoder"
THUMBNAIL_VIEWPORT = {"width": 1600, "height": 1000}
THUMBNAIL_WIDTH = 800  # px; the template browser shows it at about 300


WORKFLOWS: list[Path] = sorted((REPO / "workflows").glob("*.json"))


def workflow_paths() -> list[Path]:
    return WORKFLOWS


def named_files(object_info: dict) -> dict:
    """{"images", "checkpoints", "face2diffusion", "insightface"}: the file names the workflows pick."""
    named = {"images": set(), "checkpoints": set(), "face2diffusion": set(), "insightface": set()}
    for path in workflow_paths():
        for node in to_api(load_workflow(path), object_info).values():
            inputs, kind = node["inputs"], node["class_type"]
            if kind == "LoadImage":
                named["images"].add(inputs["image"])
            elif kind == "CheckpointLoaderSimple":
                named["checkpoints"].add(inputs["ckpt_name"])
            elif kind == "LoadF2DEncoder":
                files = (inputs.get(k) for k in ("msid", "mapping", "expression_model"))
                named["face2diffusion"] |= {f for f in files if isinstance(f, str) and "." in f}
                named["insightface"].add(inputs["detector"])
    return named


def placeholder_photo(path: Path, label: str):
    """A neutral 512x512 picture with its file name: the workflows' photos without anyone's face."""
    img = Image.new("RGB", (512, 512), (92, 98, 108))
    draw = ImageDraw.Draw(img)
    draw.ellipse((176, 96, 336, 288), fill=(150, 156, 166))
    draw.rounded_rectangle((116, 300, 396, 512), radius=90, fill=(150, 156, 166))
    draw.text((256, 40), label, fill=(235, 235, 235), anchor="mm", font_size=36)
    img.save(path, quality=90)


def add_placeholders(server: ComfyServer, models: Path):
    named = named_files(server.object_info(refresh=True))
    for name in named["checkpoints"]:
        (models / "checkpoints" / name).touch()
    for name in named["face2diffusion"]:
        (models / "face2diffusion" / name).touch()
    for pack in named["insightface"]:  # the pack lister only looks at the file name
        (models / "insightface" / "models" / pack).mkdir(parents=True, exist_ok=True)
        (models / "insightface" / "models" / pack / "det_10g.onnx").touch()
    server.input_dir.mkdir(parents=True, exist_ok=True)
    for name in named["images"]:
        placeholder_photo(server.input_dir / name, name)
    return server.object_info(refresh=True)


def graph_bounds(workflow: dict) -> tuple[float, float, float, float]:
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["size"][0], n["size"][1] + 30) for n in workflow["nodes"]]
    boxes += [tuple(g["bounding"]) for g in workflow.get("groups", [])]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    return x0, y0, max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)


# opens the template browser on this pack's templates (the frontend's own command, then its entry;
# 1.5x frontends list custom node packs under a collapsed "Extensions" heading, opened first)
JS_TEMPLATES = """async () => {
  await window.app.extensionManager.command.execute('Comfy.BrowseTemplates');
  const leaf = (text) => [...document.querySelectorAll('.p-dialog *, [role=dialog] *')]
      .find((e) => e.children.length === 0 && e.textContent.trim().toLowerCase() === text);
  const until = Date.now() + 15000;
  let item = null, opened = false;
  while (!item && Date.now() < until) {
    await new Promise((done) => setTimeout(done, 250));
    item = leaf('%s');
    const heading = opened ? null : leaf('extensions');
    if (!item && heading) {
      (heading.closest('button, [role=button], [aria-expanded]') || heading.parentElement).click();
      opened = true;
    }
  }
  if (item) { item.scrollIntoView(); item.click(); }
  await new Promise((done) => setTimeout(done, 3000));
}"""


def photograph(server: ComfyServer, chromium: str, driver: str, out: Path, thumbnails: bool) -> dict:
    """Default and full-size shots of every workflow (+ thumbnails); returns the driver's result."""
    server.post("/settings", fp.FRONTEND_SETTINGS)
    workflows = [(p.name, json.loads(p.read_text())) for p in workflow_paths()]
    out.mkdir(parents=True, exist_ok=True)
    shots = {}
    for name, wf in workflows:
        stem = Path(name).stem
        x0, y0, x1, y1 = graph_bounds(wf)
        pad = 40
        full = {"scale": 1.0, "offset": [pad - x0, pad - y0]}
        big = {"width": int(x1 - x0) + 2 * pad + 80, "height": int(y1 - y0) + 2 * pad + 120}
        shots[name] = [fp.shot(out / f"{stem}.default.png", view="stored"),
                       fp.shot(out / f"{stem}.full.png", view=full, clip="graph", pad=pad, viewport=big, focus=True)]
        if thumbnails:
            shots[name].append(fp.shot(out / f"{stem}.thumbnail.png", view="fit", clip="graph", pad=16,
                                       viewport=THUMBNAIL_VIEWPORT, focus=True))
    last = workflows[-1][0]
    shots[last].append(fp.shot(out / "template-browser.png", clip="page", script=JS_TEMPLATES % PACK_DIR_NAME))
    res = fp.run_frontend(server.url, chromium, driver, workflows, SENTINEL_NODE, shots=shots)
    if res.get("failure"):
        raise SystemExit(f"the frontend failed: {res['failure']}\n{fp.real_errors(res['startup_errors'])}")
    (out / "geometry.json").write_text(json.dumps(
        {n: {k: r[k] for k in ("nodes", "groups", "shots")} for n, r in res["results"].items()}, indent=1))
    if thumbnails:
        for name, _ in workflows:
            stem = Path(name).stem
            img = Image.open(out / f"{stem}.thumbnail.png").convert("RGB")
            img.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH), Image.LANCZOS)
            img.save(REPO / "workflows" / f"{stem}.jpg", quality=82, optimize=True)
            print("wrote", REPO / "workflows" / f"{stem}.jpg", img.size)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (COMFYUI_PATH)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the screenshots")
    ap.add_argument("--frontend-root", action="append", default=[],
                    help="a frontend's static folder (--front-end-root); repeatable. The checkout's own "
                         "frontend is always photographed first")
    ap.add_argument("--thumbnails", action="store_true", help="also write workflows/<name>.jpg")
    ap.add_argument("--server", action="append", default=[],
                    help="photograph with running ComfyUI servers instead (their model and input folders "
                         "must hold what the workflows name); repeatable")
    ap.add_argument("--workflow", action="append", type=Path, default=[],
                    help="photograph these workflow files instead of workflows/*.json")
    ap.add_argument("--object-info", type=Path, help="also save the server's /object_info here "
                                                     "(for scripts/make_workflows.py)")
    args = ap.parse_args()
    if args.workflow:
        WORKFLOWS[:] = [p.resolve() for p in args.workflow]
    if not args.comfyui and not args.server:
        raise SystemExit("give --comfyui <ComfyUI checkout> or set COMFYUI_PATH")
    chromium, why = fp.find_chromium()
    driver, why2 = fp.find_driver() if chromium else (None, why)
    if not driver:
        raise SystemExit(why2)
    for i, url in enumerate(args.server):
        server = ComfyServer(Path("."), Path("."))
        server.port = int(url.rsplit(":", 1)[1].strip("/"))
        probe = fp.run_frontend(server.url, chromium, driver, [], SENTINEL_NODE)
        version = probe.get("frontend_version") or f"frontend{i}"
        res = photograph(server, chromium, driver, args.out / version, args.thumbnails and i == 0)
        report(version, res, args.out)
    if args.server:
        return
    with tempfile.TemporaryDirectory(prefix="f2d-screens-") as home:
        models = Path(home) / "models"
        for d in ("checkpoints", "face2diffusion", "insightface/models"):
            (models / d).mkdir(parents=True)
        for i, root in enumerate([None] + args.frontend_root):
            extra = ["--front-end-root", root] if root else []
            server = ComfyServer(Path(args.comfyui), Path(home) / f"server{i}", models_dir=models,
                                 custom_nodes={PACK_DIR_NAME: REPO}, extra_args=extra)
            with server:
                server.require_nodes([SENTINEL_NODE])
                info = add_placeholders(server, models)
                if args.object_info and i == 0:
                    args.object_info.write_text(json.dumps(info))
                probe = fp.run_frontend(server.url, chromium, driver, [], SENTINEL_NODE)
                version = probe.get("frontend_version") or f"frontend{i}"
                res = photograph(server, chromium, driver, args.out / version, args.thumbnails and i == 0)
                report(version, res, args.out)


def report(version, res, out):
    print(f"frontend {version}: {len(res['results'])} workflows photographed into {out / version}")
    for name, r in res["results"].items():
        errors = fp.real_errors(r["errors"])
        if r["missing"] or r["problems"] or errors:
            print(f"  {name}: missing {r['missing']}, problems {r['problems']}, errors {errors}")


if __name__ == "__main__":
    main()
