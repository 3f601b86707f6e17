"""results.csv, summary.json, an image grid per face and the upper-bound plot."""
from __future__ import annotations

import csv
import json
import os
import textwrap
from collections import defaultdict

from . import metrics
from .jobs import Job
from .scoring import COLUMNS

SCORES = ["identity", "clip_t", "clip_i", "clip_dir", "hmean_t", "gmean_t", "hmean_dir", "gmean_dir"]
DEFINITIONS = {
    "identity": "ArcFace cosine of generated face vs face photo(s), clipped to [0, 1]; 0 when no face is found",
    "clip_t": "CLIP cosine of image vs prompt (identifier 'f l' read as the subject text)",
    "clip_i": "CLIP cosine of image vs face photo(s)",
    "clip_dir": "directional CLIP: cos(E_I(image) - E_I(reference image 'a photo of f l', same seed), "
                "E_T(prompt) - E_T('A photo of a person'))",
    "hmean_t": "per-image harmonic mean of identity and clip_t, averaged over images",
    "gmean_t": "per-image geometric mean of identity and clip_t, averaged over images",
    "hmean_dir": "per-image harmonic mean of identity and clip_dir, averaged over images",
    "gmean_dir": "per-image geometric mean of identity and clip_dir, averaged over images",
    "upper_bound": "best of N samples per face x prompt (picked by rank_by), expected over every choice of N "
                   "of the seeds, averaged over face x prompt",
}


def _present(rows: list[dict]) -> list[str]:
    return [k for k in SCORES if rows and all(r.get(k) is not None for r in rows)]


def _means(rows: list[dict], keys: list[str]) -> dict:
    return {k: metrics.mean_of_per_image([r[k] for r in rows]) for k in keys}


def upper_bound(rows: list[dict], keys: list[str]) -> dict:
    rank_by = "hmean_t" if "hmean_t" in keys else "identity"
    groups = defaultdict(list)
    for r in rows:
        groups[(r["face"], r["prompt_index"])].append(r)
    if not groups:
        return {"rank_by": rank_by, "n": []}
    ns = metrics.best_of_ns(min(len(g) for g in groups.values()))
    out = {"rank_by": rank_by, "n": ns}
    for k in keys:
        out[k] = [float(sum(metrics.expected_best_of_n([r[rank_by] for r in g], [r[k] for r in g], n)
                            for g in groups.values()) / len(groups)) for n in ns]
    return out


def summarize(rows: list[dict], info: dict) -> dict:
    keys = _present(rows)
    per_face = defaultdict(list)
    for r in rows:
        per_face[r["face"]].append(r)
    return {
        **info,
        "images": len(rows),
        "detection_rate": metrics.mean_of_per_image([float(r["face_found"]) for r in rows]),
        "mean": _means(rows, keys),
        "per_face": {f: {"images": len(rs), "detection_rate": metrics.mean_of_per_image([float(r["face_found"])
                                                                                         for r in rs]),
                         **_means(rs, keys)} for f, rs in per_face.items()},
        "upper_bound": upper_bound(rows, keys),
        "definitions": {k: v for k, v in DEFINITIONS.items() if k in keys or k == "upper_bound"},
    }


def write_csv(rows: list[dict], path: str) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def write_json(obj: dict, path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=True)
        f.write("\n")
    return path


def grid(face, jobs: list[Job], rows: list[dict], out_dir: str, path: str, cell: int = 160) -> str:
    """Rows: the face photo and the reference images, then one row per prompt; columns: seeds.
    Under each image: its identity (ID) and CLIP (T) scores."""
    from PIL import Image, ImageDraw, ImageOps
    seeds = sorted({j.seed for j in jobs if j.face == face})
    prompts = sorted({(j.prompt_index, j.prompt) for j in jobs if j.face == face})
    scores = {(r["prompt_index"], r["seed"]): r for r in rows if r["face"] == face.label}
    label_w, text_h = 220, 16
    canvas = Image.new("RGB", (label_w + cell * len(seeds), (cell + text_h) * len(prompts)), "white")
    draw = ImageDraw.Draw(canvas)

    def paste(img_path, x, y):
        if os.path.isfile(img_path):
            with Image.open(img_path) as im:
                im = ImageOps.contain(im.convert("RGB"), (cell, cell))  # small images are enlarged too
                canvas.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))

    for row, (pi, prompt) in enumerate(prompts):
        y = row * (cell + text_h)
        if pi < 0:  # the face photo, then the images of the bare identity
            paste(face.photos[0], (label_w - cell) // 2, y)
            draw.text((4, y + cell + 2), f"{face.label}; right: {prompt!r}", fill="black")
        else:
            draw.multiline_text((4, y + 4), "\n".join(textwrap.wrap(f"{pi}: {prompt}", 30)[:9]), fill="black")
        for col, seed in enumerate(seeds):
            x = label_w + col * cell
            paste(Job(face, pi, prompt, seed).path(out_dir), x, y)
            r = scores.get((pi, seed))
            if r is not None:
                text = f"ID {r['identity']:.2f}" + (f"  T {r['clip_t']:.2f}" if r.get("clip_t") is not None else "")
                draw.text((x + 4, y + cell + 2), text, fill="black" if r["face_found"] else "red")
            elif pi < 0:
                draw.text((x + 4, y + cell + 2), f"seed {seed}", fill="black")
    canvas.save(path)
    return path


def plot_upper_bound(ub: dict, path: str) -> str | None:
    """The upper-bound curve (score vs N) as a PNG; None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ns = ub.get("n") or []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for k in ("identity", "clip_t", "clip_dir", "hmean_t", "gmean_t"):
        if k in ub:
            ax.plot(ns, ub[k], marker="o", label=k)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel(f"N samples per face x prompt (best by {ub.get('rank_by')})")
    ax.set_ylabel("mean score of the best sample")
    ax.set_title("Upper bound: best of N")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
