"""Command line: `python -m f2d_core {encode,convert,run} ...` (see README)."""
from __future__ import annotations

import argparse
import os
import sys

from .cli import run_command
from .errors import F2DError

# requirements-tools.txt: import name -> package name
TOOLS_MODULES = {"requests": "requests", "websocket": "websocket-client", "tqdm": "tqdm"}
from .weights.outputs import check_output_path


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise F2DError("--device cuda: this torch sees no CUDA GPU; use --device cpu (or auto).")
    return name


def cmd_encode(args) -> int:
    from .faces.detect import load_detector
    from .identity.encoder import load_encoder
    from .identity.face_file import SUFFIX
    from .weights.files import find_models
    from .choices import face_policy
    from .faces.images import read_image
    from .identity.pipeline import MIN_FACE_PX, encode_images
    out = args.out if args.out.endswith(SUFFIX) else args.out + SUFFIX
    check_output_path(out, "--out")  # before minutes of encoding, not after
    models = find_models(args.models, pack=args.pack)
    images = [read_image(p) for p in args.image]  # as LoadImage sees them
    device = _device(args.device)
    encoder = load_encoder(models["msid"], models["mapping"], device=device)
    detector = load_detector(models["pack"], device=device)  # torch runs the face models too
    policy = face_policy("index", int(args.face)) if args.face.isdigit() else \
        face_policy({"confident": "most confident"}.get(args.face, args.face))
    identity = encode_images(encoder, images, detector, policy=policy, on_no_face=args.on_no_face,
                             min_face_px=MIN_FACE_PX if args.min_face_px is None else args.min_face_px,
                             names=[os.path.basename(p) for p in args.image],
                             progress=lambda i, n: print(f"  face {i}/{n}", file=sys.stderr))
    identity.save(out)
    for f in identity.meta["faces"]:
        print(f"used {f['image']}: box {f.get('box')}, score {f.get('score')}, {f.get('faces_in_image')} face(s) seen")
    for s in identity.meta["skipped"]:
        print(f"skipped {s['image']}: {s['reason']}")
    print(f"wrote {out} ({identity.num_faces} face(s))")
    return 0


def cmd_convert(args) -> int:
    from .weights.checkpoint import convert
    kind = convert(args.src, args.dst)
    print(f"wrote {args.dst} ({kind})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m f2d_core", description="Face2Diffusion engine tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode", help="photos of one person -> an identity file (.f2d.safetensors)")
    e.add_argument("--image", action="append", required=True, help="a photo of the person (repeat for more)")
    e.add_argument("--models", required=True,
                   help="a ComfyUI-style models folder: face2diffusion/{msid,mapping}.pt and insightface/models/<pack>/")
    e.add_argument("--out", required=True, help="output NAME.f2d.safetensors")
    e.add_argument("--pack", default=None, help="insightface pack name (default: buffalo_l, else the first found)")
    e.add_argument("--face", default="largest",
                   help="which face per photo: largest, confident (the detector's most confident), or an index "
                        "(0 = largest)")
    e.add_argument("--on-no-face", default="error", choices=("error", "skip"))
    e.add_argument("--min-face-px", type=float, default=None,
                   help="smallest face encoded, in pixels on its box's longer side (default 32; 0 allows any)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    e.set_defaults(fn=cmd_encode)
    c = sub.add_parser("convert", help="official .pt -> .safetensors (kind detected from the keys)")
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(fn=cmd_convert)
    # these three parse their own options, so they are dispatched before this parser runs
    sub.add_parser("bench", add_help=False, help="speed and memory figures (see benchmarks/RESULTS.md)")
    sub.add_parser("run", add_help=False, help="photo(s) x prompts x seeds -> images, through ComfyUI headless")
    sub.add_parser("evaluate", add_help=False, help="the paper's evaluation on ComfyUI server(s): images, "
                   "identity and CLIP scores, report")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["run"]:  # run has its own parser; REMAINDER would reject a leading --face
            from .client.run import main as run_main
            return run_main(argv[1:], "python -m f2d_core run")
        if argv[:1] == ["evaluate"]:
            from .evaluate import main as evaluate_main
            return evaluate_main(argv[1:], "python -m f2d_core evaluate")
    except ModuleNotFoundError as e:  # the tools' own dependencies, which the node pack does not install
        if e.name not in TOOLS_MODULES:
            raise
        print(f"error: {TOOLS_MODULES[e.name]} is not installed, and `{argv[0]}` needs it. Install the "
              "tools' requirements: pip install -r requirements-tools.txt (scripts/f2d.sh does this).",
              file=sys.stderr)
        return 2
    if argv[:1] == ["bench"]:  # likewise: bench parses its own options (--device, --json, ...)
        from .bench import main as bench_main
        return run_command(bench_main, argv[1:])
    args = ap.parse_args(argv)
    return run_command(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
