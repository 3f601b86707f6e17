"""Headless batch generation: face photo(s) x prompts x seeds through a Face2Diffusion workflow.

    python -m f2d_core.client.run --comfyui ~/ComfyUI --face me.jpg --prompts prompts.txt --seeds 4

Starts ComfyUI on loopback (or uses --server), converts the UI workflow with the server's
/object_info, checks every model file it names is there, uploads the photo(s), then queues one
prompt per (prompt, seed): the F2DInjectFaceToken text and the KSampler seed are filled in.
Images are saved as OUT/<face>_<prompt index>_<seed>.png, listed in OUT/manifest.jsonl.

Several --face photos are several photos of ONE person. When the workflow has one LoadImage
feeding F2DEncodeFace (face2diffusion_basic.json), it gets the first photo and core ImageBatch
nodes added to the API prompt batch the rest into the same input, so F2DEncodeFace sees them
all; a workflow with several face LoadImage nodes (face2diffusion_multi_reference.json) gets
one photo per node, in node id order. Photos of different sizes are letterboxed to one size,
because ImageBatch would otherwise centre-crop them to the first photo's shape (and could cut
off a face). To compare several people, run once per person (with --server to keep one server).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import re
import shlex
import sys
import tempfile
import time

from .comfy import ComfyClient, output_images
from .server import guess_python, start_server
from ..cli import run_command
from ..errors import F2DError
from .uploads import check_face_count, face_loaders, face_uploads, place_faces
from .model_check import check_models
from .workflow import (BYPASSED, MUTED, MissingNodeTypes, WorkflowError, get_input, is_api_format, load_workflow,
                       set_input, to_api)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_WORKFLOW = os.path.join(REPO, "workflows", "face2diffusion_basic.json")
TEXT = ("F2DInjectFaceToken", "text")
SEED, STEPS = ("KSampler", "seed"), ("KSampler", "steps")
CHECKPOINT = ("CheckpointLoaderSimple", "ckpt_name")
DEFAULT_TRIGGER = "f l"  # F2DInjectFaceToken's default (f2d_core.text.inject has it too, but imports torch)


def add_generation_arguments(ap) -> None:
    """The workflow and the values the runner overrides in it (shared with evaluate)."""
    ap.add_argument("--workflow", default=DEFAULT_WORKFLOW, metavar="FILE",
                    help="UI or API workflow JSON (default: this pack's workflows/face2diffusion_basic.json)")
    ap.add_argument("--checkpoint", metavar="NAME",
                    help="SD1.x checkpoint file in models/checkpoints (default: the workflow's)")
    ap.add_argument("--steps", type=int, metavar="N", help="KSampler steps (default: the workflow's)")
    ap.add_argument("--width", type=int, metavar="W", help="image width (default: the workflow's)")
    ap.add_argument("--height", type=int, metavar="H", help="image height (default: the workflow's)")


def build_parser(prog: str = "python -m f2d_core.client.run") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="Generate images of one person from face photo(s): every prompt x every "
        "seed, through a Face2Diffusion workflow run by ComfyUI without its UI.")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder: start it headless on 127.0.0.1 "
                       "for this run, then stop it")
    where.add_argument("--server", metavar="URL", help="use a running ComfyUI, e.g. http://127.0.0.1:8188")
    ap.add_argument("--face", action="append", required=True, metavar="PHOTO",
                    help="a photo of the person; repeat for more photos of the same person")
    ap.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                    help='a prompt with the words "f l" where the person goes; repeatable')
    ap.add_argument("--prompts", metavar="FILE", help="more prompts, one per line (# comments and blank lines skipped)")
    ap.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per prompt (default 1)")
    ap.add_argument("--seed", type=int, default=0, metavar="S", help="first seed; seeds are S..S+N-1 (default 0)")
    ap.add_argument("--out", default="out", metavar="DIR", help="where images go (default out/)")
    add_generation_arguments(ap)
    ap.add_argument("--cpu", action="store_true", help="with --comfyui: run ComfyUI with --cpu")
    ap.add_argument("--python", metavar="PY", help="with --comfyui: ComfyUI's Python (default: its venv/.venv/"
                    "python_embeded if found, else this Python)")
    ap.add_argument("--comfyui-args", default="", metavar="ARGS",
                    help='with --comfyui: more arguments for its main.py, '
                    'e.g. "--lowvram --extra-model-paths-config x.yaml"')
    return ap


def read_prompt_file(path: str) -> list[str]:
    """The prompt lines of a file: blank lines and # comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except FileNotFoundError:
        raise F2DError(f"{path}: prompts file not found.") from None


def trigger_pattern(trigger: str) -> re.Pattern:
    """The trigger as whole words (as CLIP reads them: any case, any spacing between the words)."""
    words = r"\s+".join(re.escape(w) for w in trigger.split())
    return re.compile(rf"(?<![A-Za-z0-9]){words}(?![A-Za-z0-9])", re.IGNORECASE)


def read_prompts(files: list[str], texts: list[str], trigger: str = DEFAULT_TRIGGER) -> list[str]:
    """--prompt texts, then the lines of each --prompts file; every prompt must hold the trigger."""
    prompts = [t.strip() for t in texts if t.strip()]
    for path in files:
        prompts += read_prompt_file(path)
    if not prompts:
        held = f"{', '.join(files)} hold(s) no prompt lines. " if files else ""
        raise F2DError(f'no prompt given: {held}Use --prompt "a photo of {trigger} as a chef" or --prompts FILE.')
    missing = [p for p in prompts if not trigger_pattern(trigger).search(p)]
    if missing:
        shown = "; ".join(repr(p) for p in missing[:5])
        raise F2DError(f"every prompt needs the words {trigger!r} where the person goes; {len(missing)} do(es) "
                       f"not: {shown}")
    return prompts


def workflow_trigger(workflow: dict) -> str:
    """The `trigger` of the workflow's F2DInjectFaceToken as far as it can be read without the
    server's /object_info; the node's default, "f l", when the workflow does not set one."""
    if is_api_format(workflow):
        values = [(n.get("inputs") or {}).get("trigger") for n in workflow.values() if n["class_type"] == TEXT[0]]
    else:
        values = []
        for node in workflow.get("nodes") or []:
            saved = node.get("widgets_values")
            if node.get("type") != TEXT[0] or node.get("mode") in (MUTED, BYPASSED) or not saved:
                continue
            if isinstance(saved, dict):
                values.append(saved.get("trigger"))
                continue
            names = [i["widget"]["name"] for i in node.get("inputs") or [] if isinstance(i.get("widget"), dict)]
            if "trigger" in names and len(names) == len(saved):  # newer frontends list every widget
                values.append(dict(zip(names, saved)).get("trigger"))
            elif len(saved) > 1:  # the node's widgets are text, trigger, identity_strength, ...
                values.append(saved[1])
    found = {v.strip() for v in values if isinstance(v, str) and v.strip()}
    return found.pop() if len(found) == 1 else DEFAULT_TRIGGER


def import_errors(log_path: str, limit: int = 12) -> str:
    """The log lines where ComfyUI says a node pack did not import, with the exception above each."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    picked = []
    for i, line in enumerate(lines):
        if "Cannot import" in line or "(IMPORT FAILED)" in line:
            picked += [ln for ln in lines[max(0, i - 2):i] if ln.strip() and ln not in picked] + [line]
    where = f"(full log: {log_path})" if picked else f"(no import error in {log_path})"
    return "\n".join(picked[-limit:] + [where])


def face_label(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "face"


class Progress:
    """One status line per image: which node runs, and the sampler's step k/n."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.head, self.nodes = "", {}

    def start(self, head: str, prompt: dict) -> None:
        self.head, self.nodes, self.t0 = head, prompt, time.monotonic()
        self._show("queued", force=True)

    def __call__(self, kind: str, data: dict) -> None:
        node = self.nodes.get(str(data.get("node")), {}).get("class_type", data.get("node"))
        if kind == "executing" and data.get("node") is not None:
            self._show(str(node), force=True)
        elif kind == "progress":
            self._show(f"{node} step {data.get('value')}/{data.get('max')}", force=data.get("value") == data.get("max"))

    def done(self) -> None:
        took = time.monotonic() - self.t0
        self.stream.write(("\r\033[K" if self.tty else "") + f"{self.head} done in {took:.1f} s\n")
        self.stream.flush()

    def _show(self, text: str, force: bool) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{self.head} {text}")
        elif force:
            self.stream.write(f"{self.head} {text}\n")
        self.stream.flush()


def download(client: ComfyClient, images: list[dict], out_dir: str, stem: str, ext: str | None = None) -> list[str]:
    """Save a prompt's images as OUT/stem<ext> (and stem_1<ext>, ... for a batch). Without `ext`,
    the extension of the server's file; with it, images in another format are converted."""
    if not images:
        raise F2DError("the workflow ran but produced no image: it needs a SaveImage (or PreviewImage) node.")
    files = []
    for j, img in enumerate(images):
        theirs = os.path.splitext(img["filename"])[1].lower() or ".png"
        path = os.path.join(out_dir, stem + (f"_{j}" if j else "") + (ext or theirs))
        data = client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output"))
        if ext and _format(ext) != _format(theirs):
            data = _convert(data, ext, img["filename"])
        with open(path + ".part", "wb") as f:  # atomic: an interrupted run never leaves half an image
            f.write(data)
        os.replace(path + ".part", path)
        files.append(path)
    return files


def _format(ext: str) -> str:
    return {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff"}.get(ext.lower(), ext.lower().lstrip("."))


def _convert(data: bytes, ext: str, name: str) -> bytes:
    """The image re-encoded for `ext` (pixels kept: PNG is lossless)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.save(buf, format=_format(ext))
    except (UnidentifiedImageError, OSError, KeyError, ValueError) as e:
        raise F2DError(f"ComfyUI's image {name} could not be saved as {ext} ({type(e).__name__}: {e}).") from None
    return buf.getvalue()


def render(client: ComfyClient, api: dict, text: str, seed: int, out_dir: str, stem: str, on_queued=None,
           on_event=None, timeout: float | None = None, ext: str | None = None) -> tuple[str, list[str]]:
    """One image: fill in the prompt text and seed, queue, wait, download -> (prompt id, files).
    `on_queued(prompt)` sees the filled-in prompt, `on_event` the server's progress messages;
    `ext` is as for download."""
    prompt = copy.deepcopy(api)
    set_input(prompt, *TEXT, text)
    set_input(prompt, *SEED, seed)
    if on_queued is not None:
        on_queued(prompt)
    prompt_id = client.queue_prompt(prompt)
    try:
        entry = client.wait(prompt_id, on_event=on_event, timeout=timeout)
    except KeyboardInterrupt:
        client.interrupt()  # a server we did not start would go on with it
        raise
    return prompt_id, download(client, output_images(entry), out_dir, stem, ext)


def generate(client: ComfyClient, api: dict, label: str, faces: list[str], prompts: list[str], seeds: list[int],
             out_dir: str, progress: Progress) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    width, total, saved, k = max(2, len(str(len(prompts) - 1))), len(prompts) * len(seeds), [], 0
    client.open_ws()
    with open(os.path.join(out_dir, "manifest.jsonl"), "a", encoding="utf-8") as manifest:
        for pi, text in enumerate(prompts):
            for seed in seeds:
                stem, k = f"{label}_{pi:0{width}d}_{seed}", k + 1
                prompt_id, files = render(client, api, text, seed, out_dir, stem, on_event=progress,
                                          on_queued=lambda p, head=f"[{k}/{total}] {stem}": progress.start(head, p))
                progress.done()
                for path in files:
                    print(f"saved {path}")
                    manifest.write(json.dumps({"file": os.path.basename(path), "faces": faces, "prompt_index": pi,
                                               "prompt": text, "seed": seed, "prompt_id": prompt_id}) + "\n")
                saved += files
    return saved


def prepare(client: ComfyClient, args, workflow: dict, models_dir: str) -> dict:
    """The API prompt with everything but text and seed filled in, its models checked, faces uploaded."""
    info = client.object_info()
    api = to_api(workflow, info)
    for (node, name), value in ((STEPS, args.steps), (("EmptyLatentImage", "width"), args.width),
                                (("EmptyLatentImage", "height"), args.height), (CHECKPOINT, args.checkpoint)):
        if value is not None:
            set_input(api, node, name, value)
    get_input(api, *TEXT), get_input(api, *SEED)  # fail now, not after the uploads
    loaders = face_loaders(api)
    check_face_count(loaders, len(args.face))
    check_models(api, info, models_dir, client.url, skip={(i, "image") for i in loaders})
    names = [client.upload_image(data, name) for name, data in face_uploads(args.face)]
    place_faces(api, loaders, names)
    return api


def run(args) -> int:
    if args.seeds < 1:
        raise F2DError(f"--seeds must be 1 or more (got {args.seeds}).")
    seeds = list(range(args.seed, args.seed + args.seeds))
    workflow_path = args.workflow
    if workflow_path == DEFAULT_WORKFLOW and not os.path.isfile(workflow_path):
        raise WorkflowError(f"the default workflow {workflow_path} is missing from this install; pass --workflow FILE.")
    workflow = load_workflow(workflow_path)
    # prompts without the trigger and unreadable photos fail before any server starts
    prompts = read_prompts([args.prompts] if args.prompts else [], args.prompt, workflow_trigger(workflow))
    face_uploads(args.face)
    label, progress = face_label(args.face[0]), Progress()

    def go(client, models_dir):
        api = prepare(client, args, workflow, models_dir)
        faces = [os.path.abspath(f) for f in args.face]
        files = generate(client, api, label, faces, prompts, seeds, args.out, progress)
        print(f"{len(files)} image(s) in {os.path.abspath(args.out)}")
        return 0

    if args.server:
        client = ComfyClient(args.server)
        client.object_info()  # fails at once when nothing answers there
        try:
            return go(client, os.path.join("ComfyUI", "models"))
        finally:
            client.close()
    python = args.python or guess_python(args.comfyui)
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "comfyui.log")
    print(f"starting ComfyUI in {args.comfyui} with {python} (log: {log}) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="f2d-run-") as tmp:
        # ComfyUI's own copies of the results go to a scratch folder: the run's output is --out
        extra = ["--output-directory", tmp] + (["--cpu"] if args.cpu else []) + shlex.split(args.comfyui_args)
        with start_server(args.comfyui, python=python, extra_args=extra, log_path=log) as server:
            print(f"ComfyUI ready at {server.url} in {server.started_in:.1f} s", file=sys.stderr)
            try:
                return go(server.client, os.path.join(os.path.abspath(args.comfyui), "models"))
            except MissingNodeTypes as e:
                raise MissingNodeTypes(e.types, import_errors(log)) from None


def main(argv=None, prog: str = "python -m f2d_core.client.run") -> int:
    return run_command(run, build_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
