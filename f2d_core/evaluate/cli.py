"""python -m f2d_core.evaluate: generate every face x prompt x seed on ComfyUI server(s), score, report."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

from ..client import run as runner
from ..faces.detect import find_detector_files
from ..cli import run_command
from ..errors import F2DError
from ..client.uploads import face_uploads
from ..faces.recognize import find_recognizer_file
from ..client.workflow import load_workflow
from . import report
from .dispatch import Dispatcher
from ..weights.files import file_sha256
from .jobs import (PAPER_PROMPTS, check_settings, find_faces, make_jobs, pending, read_prompts,
                   settings_record)
from .progress import progress_bar
from .scoring import NEUTRAL_TEXT, SUBJECT, Scorer

PROG = "python -m f2d_core.evaluate"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="The paper's evaluation: every face x prompt x seed generated through a "
        "Face2Diffusion workflow on one or more ComfyUI servers, then identity (ArcFace) and text alignment "
        "(CLIP) scores, their per-image harmonic/geometric means and the best-of-N upper bound. Rerun the "
        "same command to continue an interrupted run.")
    ap.add_argument("--faces", required=True, metavar="DIR",
                    help="one photo per person (or one subfolder of photos per person)")
    ap.add_argument("--prompts", action="append", default=[], metavar="FILE",
                    help=f"prompts, one per line with 'f l' where the person goes (default: {PAPER_PROMPTS})")
    ap.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt; repeatable")
    ap.add_argument("--seeds", type=int, default=4, metavar="N", help="seeds per face x prompt (default 4)")
    ap.add_argument("--seed", type=int, default=0, metavar="S", help="first seed; seeds are S..S+N-1 (default 0)")
    ap.add_argument("--server", action="append", required=True, metavar="URL",
                    help="a running ComfyUI with this pack, e.g. http://127.0.0.1:8188; repeat for several "
                         "(GPUs or machines): jobs are shared out, a failing server's jobs go to the others")
    ap.add_argument("--out", required=True, metavar="DIR", help="images, results.csv, summary.json, grids, plot")
    runner.add_generation_arguments(ap)
    ap.add_argument("--timeout", type=float, default=1800, metavar="SECONDS",
                    help="a server that has not finished an image after this long is dropped (default 1800)")
    ap.add_argument("--insightface", metavar="PACK_DIR",
                    help="insightface pack folder with a detector and a recognition model, e.g. "
                         "ComfyUI/models/insightface/models/buffalo_l (w600k_r50.onnx) or .../antelopev2")
    ap.add_argument("--clip", metavar="DIR", help="a local transformers CLIP model folder for the text scores "
                    "(e.g. a copy of openai/clip-vit-large-patch14); without it only identity is scored")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="for scoring (default auto)")
    ap.add_argument("--subject", default=SUBJECT, help=f"what CLIP reads for 'f l' (default {SUBJECT!r})")
    ap.add_argument("--neutral-text", default=NEUTRAL_TEXT,
                    help=f"text origin of the directional CLIP score (default {NEUTRAL_TEXT!r})")
    ap.add_argument("--generate-only", action="store_true", help="make the images, score nothing")
    return ap


def _check_scoring_models(args) -> None:
    if args.generate_only:
        return
    if not args.insightface:
        raise F2DError("--insightface PACK_DIR is needed to score identity (e.g. ComfyUI/models/insightface/models/"
                       "buffalo_l); or pass --generate-only to only make the images.")
    find_detector_files(args.insightface)
    find_recognizer_file(args.insightface)
    if args.clip and not os.path.isfile(os.path.join(args.clip, "config.json")):
        raise F2DError(f"--clip {args.clip}: no config.json there. Give a local transformers CLIP model folder "
                       "(config.json, weights, tokenizer and preprocessor files); nothing is downloaded.")


def generate(args, workflow: dict, todo: list, total: int) -> None:
    settings = SimpleNamespace(steps=args.steps, width=args.width, height=args.height, checkpoint=args.checkpoint)

    def prepare(client, job):
        return runner.prepare(client, SimpleNamespace(face=list(job.face.photos), **vars(settings)), workflow,
                              os.path.join("ComfyUI", "models"))

    def render(client, api, job):
        t0 = time.monotonic()
        folder = os.path.dirname(job.path(args.out))
        os.makedirs(folder, exist_ok=True)
        # saved as job.path() whatever format the workflow saves in: resuming and scoring look there
        prompt_id, _ = runner.render(client, api, job.prompt, job.seed, folder, job.stem, timeout=args.timeout,
                                     ext=os.path.splitext(job.path(args.out))[1])
        return {"prompt_id": prompt_id, "seconds": round(time.monotonic() - t0, 2)}

    bar = progress_bar(len(todo), "generating")
    bar.write(f"{total - len(todo)} of {total} image(s) already made; making {len(todo)} on "
              f"{len(set(args.server))} server(s)", file=sys.stderr)
    with open(os.path.join(args.out, "manifest.jsonl"), "a", encoding="utf-8") as manifest:
        def done(job, url, info):
            manifest.write(json.dumps({"file": os.path.relpath(job.path(args.out), args.out), "face": job.face.label,
                                       "prompt_index": job.prompt_index, "prompt": job.prompt, "seed": job.seed,
                                       "server": url, **info}) + "\n")
            manifest.flush()
            bar.set_postfix_str(url)
            bar.update(1)

        def down(url, reason):
            bar.write(f"server {url} dropped, its image goes to the others: {reason}", file=sys.stderr)
        try:
            counts = Dispatcher(args.server, prepare, render).run(todo, on_done=done, on_down=down)
        finally:
            bar.close()
    print("made " + ", ".join(f"{n} on {u}" for u, n in counts.items()), file=sys.stderr)


def score_and_report(args, faces, jobs, prompts, seeds, generation) -> dict:
    from .clip_score import ClipEmbedder
    from ..faces.similarity import load_identity_scorer
    device = args.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    identity = load_identity_scorer(args.insightface, device="cpu" if args.device == "cpu" else "auto")
    clip = ClipEmbedder(args.clip, device=device) if args.clip else None
    scorer = Scorer(identity, clip, subject=args.subject, neutral_text=args.neutral_text)
    n = sum(not j.is_reference for j in jobs)
    bar = progress_bar(n, "scoring")
    try:
        rows = scorer.score(jobs, args.out, progress=bar.update)
    finally:
        bar.close()
    out = args.out
    files = {"csv": report.write_csv(rows, os.path.join(out, "results.csv")), "grids": []}
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    for face in faces:
        files["grids"].append(report.grid(face, jobs, rows, out, os.path.join(out, "grids", face.label + ".jpg")))
    info = {"recognizer": identity.recognizer.name, "insightface_pack": os.path.abspath(args.insightface),
            "clip": clip.path if clip else None, "faces": [f.label for f in faces], "prompts": len(prompts),
            "prompt_files": [os.path.abspath(p) for p in args.prompts] or ([] if args.prompt else [PAPER_PROMPTS]),
            "seeds": seeds, "generation": generation, "subject": args.subject, "neutral_text": args.neutral_text}
    summary = report.summarize(rows, info)
    files["plot"] = report.plot_upper_bound(summary["upper_bound"], os.path.join(out, "upper_bound.png"))
    summary["files"] = {k: (os.path.relpath(v, out) if isinstance(v, str) else
                            [os.path.relpath(p, out) for p in v] if isinstance(v, list) else v)
                        for k, v in files.items()}
    report.write_json(summary, os.path.join(out, "summary.json"))
    if files["plot"] is None:
        print("no plot: matplotlib is not installed (pip install -r requirements-eval.txt)", file=sys.stderr)
    return summary


def run(args) -> int:
    if args.seeds < 1:
        raise F2DError(f"--seeds must be 1 or more (got {args.seeds}).")
    faces = find_faces(args.faces)
    prompts = read_prompts(args.prompts, args.prompt)
    for face in faces:  # an unreadable photo fails now, by name, not as a failure of every server
        face_uploads(face.photos)
    seeds = list(range(args.seed, args.seed + args.seeds))
    _check_scoring_models(args)
    workflow = load_workflow(args.workflow)
    generation = {"workflow": os.path.basename(args.workflow), "workflow_sha256": file_sha256(args.workflow),
                  "checkpoint": args.checkpoint, "steps": args.steps, "width": args.width, "height": args.height}
    jobs = make_jobs(faces, prompts, seeds)
    check_settings(args.out, settings_record(faces, prompts, generation))
    todo = pending(jobs, args.out)
    if todo:
        generate(args, workflow, todo, len(jobs))
    else:
        print(f"all {len(jobs)} image(s) already made in {args.out}", file=sys.stderr)
    if args.generate_only:
        return 0
    summary = score_and_report(args, faces, jobs, prompts, seeds, generation)
    means = "  ".join(f"{k} {v:.4f}" for k, v in summary["mean"].items())
    print(f"{summary['images']} image(s), face found in {100 * summary['detection_rate']:.1f}%: {means}")
    print(f"wrote {os.path.join(args.out, 'results.csv')}, summary.json, grids/, "
          + (summary["files"]["plot"] or "no plot"))
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return run_command(run, build_parser(prog).parse_args(argv),
                       "interrupted: the finished images are kept; run the same command again to continue")
