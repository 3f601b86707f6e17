"""Headless batch generation: face photo(s) x prompts x seeds through a Face2Diffusion workflow.

    python -m f2d_core.client.run --comfyui ~/ComfyUI --face me.jpg --prompts prompts.txt --seeds 4

Starts ComfyUI on loopback (or uses --server), converts the UI workflow with the server's
/object_info, checks every model file it names is there, uploads the photo(s), then queues one
prompt per (prompt, seed): the F2DInjectFaceToken text and the KSampler seed are filled in.
Images are taken only from the workflow's final output (its SaveImage, or the node named with
--output-node), must have the requested size, and are saved as OUT/<face>_<prompt index>_<seed>.png,
listed in OUT/manifest.jsonl; a job ComfyUI rejects or fails is an error, and nothing of it is saved.

Several --face photos are several photos of ONE person. When the workflow has one LoadImage
feeding F2DEncodeFace (face2diffusion_basic.json), it gets the first photo and core ImageBatch
nodes added to the API prompt batch the rest into the same input, so F2DEncodeFace sees them
all; a workflow with several face LoadImage nodes (face2diffusion_multi_reference.json) gets
one photo per node, in the order of the encoder's inputs (image, image_2, ...). Photos batched
into one input are letterboxed to one size, because ImageBatch would otherwise centre-crop them
to the first photo's shape (and could cut off a face). To compare several people, run once per
person (with --server to keep one server).
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
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .comfy import ComfyClient
from .server import guess_python, start_server
from ..cli import run_command
from ..errors import F2DError
from .uploads import check_face_count, face_loaders, face_uploads, place_faces
from .model_check import check_models
from .workflow import (BYPASSED, MUTED, MissingNodeTypes, WorkflowError, find_nodes, get_input, is_api_format,
                       is_link, load_workflow, set_input, to_api)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_WORKFLOW = os.path.join(REPO, "workflows", "face2diffusion_basic.json")
TEXT = ("F2DInjectFaceToken", "text")
SEED, STEPS = ("KSampler", "seed"), ("KSampler", "steps")
CHECKPOINT = ("CheckpointLoaderSimple", "ckpt_name")
LATENT, FINAL_OUTPUT = "EmptyLatentImage", "SaveImage"
DEFAULT_TRIGGER = "f l"  # F2DInjectFaceToken's default (f2d_core.text.inject has it too, but imports torch)
MAX_SEED = 2**64 - 1  # ComfyUI's KSampler seed range is 0..2^64-1
MIN_SIZE, MAX_SIZE = 16, 16384  # EmptyLatentImage's range; it works in 8-pixel steps


class OutputError(F2DError):
    """The workflow ran but its final output is not the image that was asked for."""


def add_generation_arguments(ap) -> None:
    """The workflow and the values the runner overrides in it (shared with evaluate)."""
    ap.add_argument("--workflow", default=DEFAULT_WORKFLOW, metavar="FILE",
                    help="UI or API workflow JSON (default: this pack's workflows/face2diffusion_basic.json)")
    ap.add_argument("--checkpoint", metavar="NAME",
                    help="SD1.x checkpoint file in models/checkpoints (default: the workflow's)")
    ap.add_argument("--steps", type=int, metavar="N", help="KSampler steps (default: the workflow's)")
    ap.add_argument("--width", type=int, metavar="W", help="image width (default: the workflow's)")
    ap.add_argument("--height", type=int, metavar="H", help="image height (default: the workflow's)")
    ap.add_argument("--output-node", metavar="NODE",
                    help="id or title of the node whose images are the result (default: the workflow's one "
                         "SaveImage); preview images are never taken otherwise")


def check_generation_args(args) -> None:
    """The obvious mistakes in the numbers, before any server is started or contacted."""
    if args.seeds < 1:
        raise F2DError(f"--seeds must be 1 or more (got {args.seeds}).")
    if args.seed < 0 or args.seed + args.seeds - 1 > MAX_SEED:
        raise F2DError(f"--seed {args.seed}: seeds run from 0 to {MAX_SEED} (ComfyUI's KSampler range), and "
                       f"--seed {args.seed} with --seeds {args.seeds} goes outside it. Pass --seed 0 or more.")
    if args.steps is not None and args.steps < 1:
        raise F2DError(f"--steps {args.steps}: the sampler needs at least 1 step (ComfyUI's KSampler minimum). "
                       "Pass --steps 1 or more (e.g. 20), or leave it out to use the workflow's.")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and not (MIN_SIZE <= value <= MAX_SIZE and value % 8 == 0):
            raise F2DError(f"--{name} {value}: must be a multiple of 8 from {MIN_SIZE} to {MAX_SIZE} (Stable "
                           f"Diffusion works on 8x8-pixel blocks; ComfyUI's EmptyLatentImage range), e.g. 512.")


@dataclass
class Plan:
    """A job's prompt with everything but text and seed filled in, and what its result must be."""
    prompt: dict
    output: str                      # the node whose images are the result
    size: tuple[int, int] | None     # (width, height) they must have; None when the workflow does not say


def _titled(prompt: dict, ids: list[str]) -> str:
    return ", ".join(f"{i} ({prompt[i]['class_type']} '{prompt[i].get('_meta', {}).get('title', '')}')"
                     for i in ids) or "none"


def output_node(prompt: dict, object_info: dict, choice: str | None = None) -> str:
    """The node whose images are the job's result: `choice` (an id or a title), else the one SaveImage."""
    outputs = [nid for nid, n in prompt.items() if (object_info.get(n["class_type"]) or {}).get("output_node")]
    if choice is not None:
        ids = [choice] if choice in prompt else [nid for nid, n in prompt.items()
                                                 if n.get("_meta", {}).get("title") == choice]
        if len(ids) != 1:
            found = "no node" if not ids else f"{len(ids)} nodes ({', '.join(ids)}; give the id)"
            raise WorkflowError(f"--output-node {choice}: the workflow has {found} with that id or title. Its "
                                f"output nodes: {_titled(prompt, outputs)}.")
        if ids[0] not in outputs:
            raise WorkflowError(f"--output-node {choice}: node {_titled(prompt, ids)} is not an output node, so it "
                                f"saves no image. Its output nodes: {_titled(prompt, outputs)}.")
        return ids[0]
    saves = find_nodes(prompt, FINAL_OUTPUT)
    if len(saves) == 1:
        return saves[0]
    if not saves:
        raise WorkflowError(f"the workflow has no {FINAL_OUTPUT} node, so it has no final image to take (preview "
                            f"images are never taken as results). Add a {FINAL_OUTPUT} node at its end, or name the "
                            f"node whose images are the result with --output-node ID (its output nodes: "
                            f"{_titled(prompt, outputs)}).")
    raise WorkflowError(f"the workflow has {len(saves)} {FINAL_OUTPUT} nodes ({_titled(prompt, saves)}); name the "
                        "one whose images are the result with --output-node ID.")


def requested_size(prompt: dict) -> tuple[int, int] | None:
    """(width, height) of the workflow's one EmptyLatentImage, as the decoded image has it."""
    latents = find_nodes(prompt, LATENT)
    if len(latents) != 1:
        return None
    inputs = prompt[latents[0]]["inputs"]
    w, h = inputs.get("width"), inputs.get("height")
    if not all(isinstance(v, int) and not is_link(v) for v in (w, h)):
        return None
    return w // 8 * 8, h // 8 * 8  # the latent is 1/8 of the image, rounded down


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


def progress_bar(total: int, desc: str) -> tqdm:
    """The one progress display of the runner and the evaluation (on stderr; stdout keeps the results)."""
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def status(bar: tqdm, head: str, prompt: dict):
    """on_event for render: shows which node of `prompt` runs, and the sampler's step k/n, after `head`."""
    def on_event(kind: str, data: dict) -> None:
        node = prompt.get(str(data.get("node")), {}).get("class_type", data.get("node"))
        if kind == "executing" and data.get("node") is not None:
            bar.set_postfix_str(f"{head}: {node}")
        elif kind == "progress":
            bar.set_postfix_str(f"{head}: {node} step {data.get('value')}/{data.get('max')}")
    return on_event


def _format(ext: str) -> str:
    return {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff"}.get(ext.lower(), ext.lower().lstrip("."))


def results(client: ComfyClient, entry: dict, plan: Plan) -> list[tuple[str, bytes, Image.Image]]:
    """(file name, bytes, opened image) of every image of the plan's output node, each checked to be a
    readable image of the requested size; an OutputError otherwise (and nothing is saved)."""
    node = f"node {plan.output} ({plan.prompt[plan.output]['class_type']})"
    images = ((entry.get("outputs") or {}).get(plan.output) or {}).get("images") or []
    if not images:
        others = sorted(k for k, v in (entry.get("outputs") or {}).items() if v.get("images"))
        seen = f" (images came only from node(s) {', '.join(others)}, which are not the result)" if others else ""
        raise OutputError(f"the workflow ran but its final output, {node}, produced no image{seen}. Nothing was "
                          "saved. Check that the sampler's image reaches it, or name the right node with "
                          "--output-node ID.")
    found = []
    for img in images:
        data = client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output"))
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
        except (UnidentifiedImageError, OSError) as e:
            raise OutputError(f"ComfyUI's image {img['filename']} from {node} is not a readable image "
                              f"({type(e).__name__}: {e}). Nothing was saved.") from None
        if plan.size is not None and im.size != plan.size:
            raise OutputError(f"{node} gave a {im.width}x{im.height} image ({img['filename']}), but the job asks "
                              f"for {plan.size[0]}x{plan.size[1]} (the size of the workflow's {LATENT}, after "
                              "--width/--height): "
                              "it is not the generated image. Nothing was saved. Check that the sampler's image "
                              "reaches that node, or name the right node with --output-node ID.")
        found.append((img["filename"], data, im))
    return found


def save(found: list[tuple[str, bytes, Image.Image]], out_dir: str, stem: str, ext: str | None = None) -> list[str]:
    """Save a job's images as OUT/stem<ext> (and stem_1<ext>, ... for a batch). Without `ext`, the
    extension of the server's file; with it, images in another format are re-encoded (pixels kept)."""
    files = []
    for j, (name, data, im) in enumerate(found):
        theirs = os.path.splitext(name)[1].lower() or ".png"
        path = os.path.join(out_dir, stem + (f"_{j}" if j else "") + (ext or theirs))
        if ext and _format(ext) != _format(theirs):
            buf = io.BytesIO()
            try:
                im.save(buf, format=_format(ext))
            except (OSError, KeyError, ValueError) as e:
                raise OutputError(f"ComfyUI's image {name} could not be saved as {ext} "
                                  f"({type(e).__name__}: {e}).") from None
            data = buf.getvalue()
        with open(path + ".part", "wb") as f:  # atomic: an interrupted run never leaves half an image
            f.write(data)
        os.replace(path + ".part", path)
        files.append(path)
    return files


def render(client: ComfyClient, plan: Plan, text: str, seed: int, out_dir: str, stem: str, on_event=None,
           timeout: float | None = None, ext: str | None = None) -> tuple[str, list[str]]:
    """One job: fill in the prompt text and seed, queue only the branch of the final output, wait,
    check and save its images -> (prompt id, files). `on_event` gets the server's progress
    messages; `ext` is as for save."""
    prompt = copy.deepcopy(plan.prompt)
    set_input(prompt, *TEXT, text)
    set_input(prompt, *SEED, seed)
    prompt_id = client.queue_prompt(prompt, targets=[plan.output])
    try:
        entry = client.wait(prompt_id, on_event=on_event, timeout=timeout)
    except KeyboardInterrupt:
        client.cancel(prompt_id)  # a server we did not start would go on with it
        raise
    return prompt_id, save(results(client, entry, plan), out_dir, stem, ext)


def append_manifest(path: str, records: list[dict]) -> None:
    """Records of a finished job, appended (the file is created with the first one)."""
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def generate(client: ComfyClient, plan: Plan, label: str, faces: list[str], prompts: list[str], seeds: list[int],
             out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    width, saved = max(2, len(str(len(prompts) - 1))), []
    client.open_ws()
    bar = progress_bar(len(prompts) * len(seeds), "generating")
    try:
        for pi, text in enumerate(prompts):
            for seed in seeds:
                stem = f"{label}_{pi:0{width}d}_{seed}"
                bar.set_postfix_str(f"{stem}: queued")
                prompt_id, files = render(client, plan, text, seed, out_dir, stem,
                                          on_event=status(bar, stem, plan.prompt))
                # only now, with every image of the job checked and saved
                append_manifest(os.path.join(out_dir, "manifest.jsonl"), [
                    {"file": os.path.basename(path), "faces": faces, "prompt_index": pi, "prompt": text,
                     "seed": seed, "prompt_id": prompt_id} for path in files])
                for path in files:
                    bar.write(f"saved {path}", file=sys.stdout)
                bar.update(1)
                saved += files
    finally:
        bar.close()
    return saved


def prepare(client: ComfyClient, args, workflow: dict, models_dir: str) -> Plan:
    """The job's plan: the API prompt with everything but text and seed filled in, its models
    checked, faces uploaded; its final output node and the size the images must have."""
    info = client.object_info()
    api = to_api(workflow, info)
    for (node, name), value in ((STEPS, args.steps), ((LATENT, "width"), args.width),
                                ((LATENT, "height"), args.height), (CHECKPOINT, args.checkpoint)):
        if value is not None:
            set_input(api, node, name, value)
    loaders = face_loaders(api)  # first: a two-person graph is named as such, not by its second prompt
    get_input(api, *TEXT), get_input(api, *SEED)  # fail now, not after the uploads
    output = output_node(api, info, getattr(args, "output_node", None))
    check_face_count(loaders, len(args.face))
    check_models(api, info, models_dir, client.url, skip={(i, "image") for i in loaders})
    names = [client.upload_image(data, name) for name, data in face_uploads(args.face)]
    place_faces(api, loaders, names)
    return Plan(api, output, requested_size(api))


def run(args) -> int:
    check_generation_args(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    workflow_path = args.workflow
    if workflow_path == DEFAULT_WORKFLOW and not os.path.isfile(workflow_path):
        raise WorkflowError(f"the default workflow {workflow_path} is missing from this install; pass --workflow FILE.")
    workflow = load_workflow(workflow_path)
    # prompts without the trigger and unreadable photos fail before any server starts
    prompts = read_prompts([args.prompts] if args.prompts else [], args.prompt, workflow_trigger(workflow))
    face_uploads(args.face)
    label = face_label(args.face[0])

    def go(client, models_dir):
        plan = prepare(client, args, workflow, models_dir)
        faces = [os.path.abspath(f) for f in args.face]
        files = generate(client, plan, label, faces, prompts, seeds, args.out)
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
