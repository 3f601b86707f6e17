"""python -m f2d_core.evaluate: generate every face x prompt x seed on ComfyUI server(s), score, report."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from types import SimpleNamespace

from ..client import run as runner
from ..faces.detect import find_detector_files
from ..cli import run_command
from ..errors import F2DError
from ..client.uploads import face_uploads
from ..faces.dlib_detector import INSTALL as DLIB_INSTALL, dlib_available
from ..faces.recognize import find_recognizer_file
from ..client.workflow import load_workflow
from . import report
from .dispatch import Dispatcher
from ..weights.files import file_sha256
from .jobs import (MANIFEST, PAPER_PROMPTS, check_settings, find_faces, made_record, make_jobs, pending,
                   read_prompts, settings_record)
from .scoring import NEUTRAL_TEXT, SUBJECT, Scorer

PROG = "python -m f2d_core.evaluate"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog, description="The paper's evaluation: every face x prompt x seed generated through a "
        "Face2Diffusion workflow on one or more ComfyUI servers, then the paper's scores (Appendix E.3): identity "
        "(AdaFace, SphereFace, FaceNet; plus ArcFace and dlib), text alignment (CLIP, dCLIP, SigLIP), their "
        "per-image harmonic/geometric means and the best-of-N upper bound. Rerun the same command to continue an "
        "interrupted run.")
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
    scoring = ap.add_argument_group("scoring (the paper's Appendix E.3; a column without its model is reported missing)")
    scoring.add_argument("--adaface", metavar="FILE", help="AdaFace IR-101/IR-50 weights, e.g. "
                         "adaface_ir101_webface12m.ckpt (or its weights extracted to .safetensors)")
    scoring.add_argument("--sphereface", metavar="FILE", help="SphereFace sphere20a_20171020.pth "
                         "(clcarwin/sphereface_pytorch)")
    scoring.add_argument("--facenet", metavar="FILE", help="facenet-pytorch's 20180402-114759-vggface2.pt")
    scoring.add_argument("--arcface", "--insightface", dest="arcface", metavar="PACK_DIR",
                         help="insightface pack with a detector and a recognition model (an extra 'arcface' column), "
                              "e.g. ComfyUI/models/insightface/models/buffalo_l")
    scoring.add_argument("--dlib", choices=("auto", "on", "off"), default="auto",
                         help="the 'dlib' identity column (dlib's recogniser, installed by requirements-dlib.txt): "
                              "auto fills it when dlib is installed (default)")
    scoring.add_argument("--detector", default="auto", metavar="dlib|PACK_DIR",
                         help="face detector for AdaFace/SphereFace/FaceNet: 'dlib' or an insightface pack folder "
                              "(default auto: the --arcface pack, else dlib)")
    scoring.add_argument("--clip", metavar="DIR", help="a local transformers CLIP folder for the clip and dclip "
                         "columns; the paper's is laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    scoring.add_argument("--siglip", metavar="DIR", help="a local transformers SigLIP folder for the siglip column, "
                         "e.g. google/siglip-so400m-patch14-384 (needs sentencepiece)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="for scoring (default auto)")
    ap.add_argument("--subject", default=SUBJECT, help=f"what CLIP reads for 'f l' (default {SUBJECT!r})")
    ap.add_argument("--neutral-text", default=NEUTRAL_TEXT,
                    help=f"text origin of the directional CLIP score (default {NEUTRAL_TEXT!r})")
    ap.add_argument("--generate-only", action="store_true", help="make the images, score nothing")
    return ap


def _check_scoring_models(args) -> None:
    """Before anything is generated: every model file given exists, and some identity column can be filled."""
    if args.generate_only:
        return
    for flag in ("adaface", "sphereface", "facenet"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise F2DError(f"--{flag} {path}: file not found.")
    if args.arcface:
        find_detector_files(args.arcface)
        find_recognizer_file(args.arcface)
    for flag in ("clip", "siglip"):
        folder = getattr(args, flag)
        if folder and not os.path.isfile(os.path.join(folder, "config.json")):
            raise F2DError(f"--{flag} {folder}: no config.json there. Give a local transformers {flag.upper()} model "
                           "folder (config.json, weights, tokenizer and preprocessor files); nothing is downloaded.")
    dlib_ok = dlib_available()
    if args.dlib == "on" and not dlib_ok:
        raise F2DError(f"--dlib on: dlib is not installed. {DLIB_INSTALL[0].upper()}{DLIB_INSTALL[1:]}.")
    if not (args.adaface or args.sphereface or args.facenet or args.arcface or (args.dlib != "off" and dlib_ok)):
        raise F2DError("no identity column can be filled: give --adaface, --sphereface and/or --facenet (the paper's "
                       f"recognisers), --arcface PACK_DIR, or install dlib ({DLIB_INSTALL}); or pass --generate-only "
                       "to only make the images.")


def generate(args, workflow: dict, todo: list, total: int) -> None:
    settings = SimpleNamespace(steps=args.steps, width=args.width, height=args.height, checkpoint=args.checkpoint,
                               output_node=args.output_node)

    def prepare(client, job):
        return runner.prepare(client, SimpleNamespace(face=list(job.face.photos), **vars(settings)), workflow,
                              os.path.join("ComfyUI", "models"))

    def render(client, plan, job):
        t0 = time.monotonic()
        folder = os.path.dirname(job.path(args.out))
        os.makedirs(folder, exist_ok=True)
        # saved as job.path() whatever format the workflow saves in: resuming and scoring look there
        prompt_id, files = runner.render(client, plan, job.prompt, job.seed, folder, job.stem, timeout=args.timeout,
                                         ext=os.path.splitext(job.path(args.out))[1])
        if files != [job.path(args.out)]:
            for f in files:  # a failed job leaves nothing behind
                os.remove(f)
            raise runner.OutputError(f"{job.stem}: the workflow's final output gave {len(files)} images; the "
                                     "evaluation scores one image per job, so its batch size must be 1.")
        return {"prompt_id": prompt_id, "seconds": round(time.monotonic() - t0, 2)}

    bar = runner.progress_bar(len(todo), "generating")
    bar.write(f"{total - len(todo)} of {total} image(s) already made; making {len(todo)} on "
              f"{len(set(args.server))} server(s)", file=sys.stderr)

    def done(job, url, info):  # only jobs whose image was checked and saved get here
        runner.append_manifest(os.path.join(args.out, MANIFEST),
                               [{**made_record(job, args.out, job.path(args.out)), "server": url, **info}])
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
    from .clip_score import ClipEmbedder, SiglipEmbedder  # torch and transformers: only when scoring
    from .identity_models import load_backends
    device = args.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    identity, missing = load_backends({c: getattr(args, c) for c in ("adaface", "sphereface", "facenet")},
                                      arcface=args.arcface, dlib=args.dlib, detector=args.detector, device=device)
    clip = ClipEmbedder(args.clip, device=device) if args.clip else None
    siglip = SiglipEmbedder(args.siglip, device=device) if args.siglip else None
    scorer = Scorer(identity, clip, siglip, missing, subject=args.subject, neutral_text=args.neutral_text)
    n = sum(not j.is_reference for j in jobs)
    bar = runner.progress_bar(n, "scoring")
    try:
        rows = scorer.score(jobs, args.out, progress=bar.update)
    finally:
        bar.close()
    out = args.out
    files = {"csv": report.write_csv(rows, os.path.join(out, "results.csv")), "grids": []}
    os.makedirs(os.path.join(out, "grids"), exist_ok=True)
    for face in faces:
        files["grids"].append(report.grid(face, jobs, rows, out, os.path.join(out, "grids", face.label + ".jpg")))
    info = {"faces": [f.label for f in faces], "prompts": len(prompts),
            "prompt_files": [os.path.abspath(p) for p in args.prompts] or ([] if args.prompt else [PAPER_PROMPTS]),
            "seeds": seeds, "generation": generation, "subject": args.subject, "neutral_text": args.neutral_text}
    summary = report.summarize(rows, info, scorer.columns())
    files["plot"] = report.plot_upper_bound(summary["upper_bound"], os.path.join(out, "upper_bound.png"))
    summary["files"] = {k: (os.path.relpath(v, out) if isinstance(v, str) else
                            [os.path.relpath(p, out) for p in v] if isinstance(v, list) else v)
                        for k, v in files.items()}
    report.write_json(summary, os.path.join(out, "summary.json"))
    if files["plot"] is None:
        print("no plot: matplotlib is not installed (pip install -r requirements-eval.txt)", file=sys.stderr)
    return summary


def run(args) -> int:
    runner.check_generation_args(args)
    faces = find_faces(args.faces)
    prompts = read_prompts(args.prompts, args.prompt)
    for face in faces:  # an unreadable photo fails now, by name, not as a failure of every server
        face_uploads(face.photos)
    seeds = list(range(args.seed, args.seed + args.seeds))
    _check_scoring_models(args)
    workflow = load_workflow(args.workflow)
    generation = {"workflow": os.path.basename(args.workflow), "workflow_sha256": file_sha256(args.workflow),
                  "checkpoint": args.checkpoint, "steps": args.steps, "width": args.width, "height": args.height,
                  "output_node": args.output_node}
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
    means = "  ".join(f"{k} {v:.4f}" for k, v in summary["mean"].items() if v is not None)
    found = ", ".join(f"{k} {100 * v:.0f}%" for k, v in summary["detection_rate"].items())
    print(f"{summary['images']} image(s); face found by {found}: {means}")
    reasons = defaultdict(list)
    for column, why in report.why_missing(summary).items():
        reasons[why].append(column)
    for why, cols in reasons.items():
        print(f"missing {', '.join(cols)}: {why}")
    print(f"wrote {os.path.join(args.out, 'results.csv')}, summary.json, grids/, "
          + (summary["files"]["plot"] or "no plot"))
    return 0


def main(argv=None, prog: str = PROG) -> int:
    return run_command(run, build_parser(prog).parse_args(argv),
                       "interrupted: the finished images are kept; run the same command again to continue")
