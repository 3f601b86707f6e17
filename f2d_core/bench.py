"""Speed and memory of Face2Diffusion on your machine: `python -m f2d_core bench`.

    python -m f2d_core bench [--device cpu|cuda] [--models DIR] [--threads N] [--json OUT]
                             [--photo PHOTO] [--precision fp32|fp16|bf16]

Measures, as median and spread of repeated runs after a warm-up:
- load:    loading your msid/mapping files (from --models, a ComfyUI models folder);
- encode:  MSID + mapping network at batch 1 and 8 (ms per call and per face);
- photo:   one 1024x1024 photo -> identity tokens (detect, align, encode), with the insightface
           pack in --models and a face photo (--photo); without a photo, detection alone;
- inject:  injecting the identity into a prompt against the plain CLIP text encode, with an
           SD1.x checkpoint or CLIP-L text encoder in --models (checkpoints/, clip/, text_encoders/);
- memory:  peak resident memory (and peak CUDA memory).
Without --models the networks are randomly initialised (the speed is the same, the output says
so) and the steps that need real files are skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .choices import DTYPES
from .errors import F2DError, ModelFilesMissing, NoFaceError
from .faces.detect import load_detector
from .faces.images import read_image
from .faces.preprocess import resize
from .identity.encoder import F2DEncoder, load_encoder
from .identity.pipeline import encode_images
from .models.mapping import MappingNetwork
from .models.msid import MSIDEncoder
from .text.clip import clip_text_model, encode_token_chunks, position_embedding
from .text.inject import inject_face
from .weights.files import find_models
from .weights.outputs import check_output_path

CLIP_FOLDERS = ("checkpoints", "clip", "text_encoders")
CLIP_PREFIXES = ("cond_stage_model.transformer.", "transformer.", "")  # SD1.x checkpoint, ComfyUI, transformers
# SD1.x text encoder (CLIP ViT-L/14 text tower), CLIPTextConfig keyword arguments
SD1_CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                projection_dim=768)
# "a photo of f l eating bread" in CLIP BPE ids (BOS ... EOS), padded with EOS; "f l" = 325, 331
PROMPT_IDS = [49406, 320, 1125, 539, 325, 331, 4371, 5066] + [49407] * 69
TRIGGER_IDS = (325, 331)


class Bench:
    def __init__(self, device: str, repeat: int | None):
        self.device, self.repeat, self.rows, self.notes, self.memory = device, repeat, [], [], {}

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def time(self, figure: str, fn, repeat: int, per: int = 1, unit: str = "ms", note: str = "") -> float:
        """Median of `repeat` timed calls of fn() after one warm-up; `per` faces per call."""
        repeat = self.repeat or repeat
        fn()
        self.sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        scale = {"ms": 1e3, "s": 1.0}[unit]
        s = sorted(t * scale for t in times)
        row = {"figure": figure, "median": statistics.median(s), "min": s[0], "max": s[-1], "unit": unit,
               "runs": repeat, "note": note}
        if per > 1:
            row["per_face"] = row["median"] / per
        self.rows.append(row)
        return row["median"]

    def section(self, name: str, fn) -> None:
        """fn(), then the peak memory so far (and the CUDA peak within the section)."""
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fn()
        self.memory[name] = {"peak_rss_mb": peak_rss_mb()}
        if self.device == "cuda":
            self.memory[name]["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far (None on Windows)."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)


def random_encoder(device, dtype) -> F2DEncoder:
    torch.manual_seed(0)
    msid, mapping = MSIDEncoder(), MappingNetwork()
    for norm in msid.norms.values():  # BatchNorm statistics as a trained network has them
        norm[0].running_var.uniform_(0.5, 1.5)
    return F2DEncoder(msid.to(device, dtype).eval().requires_grad_(False),
                      mapping.to(device, dtype).eval().requires_grad_(False))


def pixels(batch: int, device, dtype) -> torch.Tensor:
    return (torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch)) * 2 - 1).to(device, dtype)


def bench_encode(b: Bench, encoder: F2DEncoder, batches) -> None:
    for batch in batches:
        x = pixels(batch, encoder.device, encoder.dtype)
        b.time(f"encode, batch {batch}", lambda: encoder.encode(x), repeat=20 if batch == 1 else 5, per=batch)


def bench_photo(b: Bench, encoder: F2DEncoder, pack: str, photo_path: str | None) -> None:
    detector = load_detector(pack, device="cpu" if b.device == "cpu" else "auto")
    if photo_path is None:
        image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
        b.time("detect, 1024x1024 image", lambda: detector.detect(image), repeat=10,
               note=f"{os.path.basename(pack)}; no --photo, so no face to align and encode")
        return
    image = resize(read_image(photo_path), 1024, 1024)
    try:
        encode_images(encoder, [image], detector)
    except NoFaceError:
        raise F2DError(f"--photo {photo_path}: the detector found no face in it; give a photo with a clear, "
                       "frontal face.") from None
    b.time("photo -> identity tokens, 1024x1024", lambda: encode_images(encoder, [image], detector), repeat=10,
           note=f"detect ({os.path.basename(pack)}), align, encode")


def find_sd1_clip(models_dir: str):
    """(file, key prefix) of the first SD1.x text encoder in the models folder, or None."""
    probe = "text_model.encoder.layers.11.self_attn.q_proj.weight"
    for folder in CLIP_FOLDERS:
        for path in sorted(Path(models_dir, folder).glob("**/*.safetensors")):
            try:
                with safe_open(str(path), "pt") as f:
                    keys = set(f.keys())
                    prefix = next((p for p in CLIP_PREFIXES if p + probe in keys
                                   and p + "text_model.encoder.layers.12.mlp.fc1.weight" not in keys), None)
                    if prefix is not None and f.get_slice(prefix + probe).get_shape() == [768, 768]:
                        return str(path), prefix
            except Exception:  # not a readable safetensors file: not ours to judge here
                continue
    return None


def bench_inject(b: Bench, encoder: F2DEncoder, clip_file: str, prefix: str, config: dict = SD1_CLIP) -> None:
    with safe_open(clip_file, "pt") as f:
        sd = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix + "text_model.")}
    clip = clip_text_model(sd, config, clip_file).to(b.device)
    s1, s2 = encoder.face_tokens(encoder.identity_features(pixels(1, encoder.device, encoder.dtype)))
    tokens = {"l": [[(t, 1.0) for t in PROMPT_IDS]]}
    pos = position_embedding(clip)

    def plain():
        with torch.inference_mode():
            encode_token_chunks(clip, tokens["l"])

    def injected():
        with torch.inference_mode():
            encode_token_chunks(clip, inject_face(tokens, TRIGGER_IDS, s1[0], s2[0], pos)["l"])
    what = f"CLIP text encoder of {os.path.basename(clip_file)}"
    base = b.time("plain CLIP text encode", plain, repeat=10, note=what)
    with_face = b.time("inject identity + CLIP text encode", injected, repeat=10, note=what)
    b.rows.append({"figure": "injection overhead", "median": (with_face / base - 1) * 100, "unit": "%",
                   "note": "over the plain encode"})


def print_report(b: Bench, config: dict, out=None) -> None:
    out = out or sys.stdout
    print(f"Face2Diffusion bench: {config['device']} ({config['device_name']}), torch {torch.__version__}, "
          f"{config['threads']} threads, {config['precision']}; weights: {config['weights']}", file=out)
    width = max(len(r["figure"]) for r in b.rows) if b.rows else 10
    for r in b.rows:
        if "min" in r:
            value = f"{r['median']:9.2f} {r['unit']:2s} (range {r['min']:.2f}-{r['max']:.2f}, {r['runs']} runs)"
        else:
            value = f"{r['median']:+9.2f} {r['unit']}"
        per_face = f", {r['per_face']:.2f} ms/face" if "per_face" in r else ""
        note = f"  [{r['note']}]" if r.get("note") else ""
        print(f"  {r['figure']:{width}s} {value}{per_face}{note}", file=out)
    for name, m in b.memory.items():
        cuda = f", CUDA peak {m['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in m else ""
        rss = "unknown on this OS" if m["peak_rss_mb"] is None else f"{m['peak_rss_mb']:.0f} MB"
        print(f"  peak memory after {name}: {rss} resident{cuda}", file=out)
    for note in b.notes:
        print(f"note: {note}", file=out)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m f2d_core bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"),
                    help="default: cuda when torch sees a GPU, else cpu")
    ap.add_argument("--models", help="a ComfyUI models folder (face2diffusion/, insightface/models/, checkpoints/); "
                                     "without it the networks are randomly initialised")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    ap.add_argument("--photo", help="a photo with a face, for the photo -> tokens figure (resized to 1024x1024)")
    ap.add_argument("--precision", default="fp32", choices=tuple(DTYPES), help="the encoder's dtype (default fp32)")
    ap.add_argument("--batches", default="1,8", help="encode batch sizes (default 1,8)")
    ap.add_argument("--repeat", type=int, help="timed runs per figure (default: 5 to 20 by figure)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.json_out:
        check_output_path(args.json_out, "--json")  # before minutes of measuring, not after
    if args.device == "cuda" and not torch.cuda.is_available():
        raise F2DError("--device cuda: this torch sees no CUDA GPU (a CPU build, or no driver); use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batches = [int(v) for v in args.batches.split(",")]
    except ValueError:
        raise F2DError(f"--batches: expected batch sizes like 1,8, got {args.batches!r}") from None
    dtype = DTYPES[args.precision]
    b = Bench(args.device, args.repeat)
    models = find_models(args.models, need_detector=False) if args.models else None
    if models:
        files = models["msid"], models["mapping"]
        b.section("load", lambda: b.time("load msid + mapping", lambda: load_encoder(*files, args.device, dtype),
                                         repeat=5, unit="s", note=" + ".join(os.path.basename(f) for f in files)))
        encoder = load_encoder(*files, args.device, dtype)
        weights = f"{files[0]}, {files[1]}"
    else:
        encoder = random_encoder(args.device, dtype)
        weights = "randomly initialised (no --models): the speed is that of the real networks"
        b.notes.append("no --models: load time, photo -> tokens and injection were not measured.")
    b.section("encode", lambda: bench_encode(b, encoder, batches))
    if models:
        try:
            pack = find_models(args.models)["pack"]
        except ModelFilesMissing:
            b.notes.append(f"no insightface pack in {args.models}/insightface/models: photo -> tokens skipped.")
        else:
            b.section("photo", lambda: bench_photo(b, encoder, pack, args.photo))
        clip = find_sd1_clip(args.models)
        if clip is None:
            b.notes.append(f"no SD1.x checkpoint or CLIP-L text encoder (.safetensors) in {args.models}/"
                           f"{{{','.join(CLIP_FOLDERS)}}}: injection overhead skipped.")
        else:
            b.section("inject", lambda: bench_inject(b, encoder, *clip))
    config = {"device": args.device, "threads": torch.get_num_threads(), "precision": args.precision,
              "weights": weights, "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()}
    print_report(b, config)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": config, "figures": b.rows, "memory": b.memory,
                                                   "notes": b.notes}, indent=2))
        print(f"wrote {args.json_out}")
    return 0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
