"""results.csv, summary.json, an image grid per face and the upper-bound plot.

summary.json names, per score column, the model that filled it (and whether it is the paper's)
or why it is missing; a missing column is null in "mean", empty in results.csv, and left out of
the combined scores and the plot, never filled with another model's numbers."""
from __future__ import annotations

import csv
import json
import os
import textwrap
from collections import defaultdict

from . import metrics
from .jobs import Job
from .scoring import COLUMNS, COMBINED, IDENTITY_COLUMNS, PAPER_SIX, SCORE_COLUMNS, TEXT_COLUMNS

SCORES = list(SCORE_COLUMNS + COMBINED)
_ID = "max(cos(f_fr(x), f_fr(y)), 0) of the generated face y and the face photo(s) x, 0 when no face is found (Eq. 10)"
DEFINITIONS = {
    "adaface": f"ID with AdaFace: {_ID}",
    "sphereface": f"ID with SphereFace: {_ID}",
    "facenet": f"ID with FaceNet: {_ID}",
    "arcface": f"ID with insightface's ArcFace (not one of the paper's recognisers): {_ID}",
    "dlib": f"ID with dlib's face recognition ResNet (not one of the paper's recognisers): {_ID}",
    "clip": "max(cos(E_I(y), E_T(p)), 0), prompt p with the identifier 'f l' read as the subject text (Eq. 11)",
    "dclip": "max(cos(E_I(y) - E_I(y_r), E_T(p) - E_T(p_r)), 0), y_r the image of 'a photo of f l' of the same face "
             "and seed, p_r the neutral text (Eq. 12-13)",
    "siglip": "sigmoid(s * cos(E_I(y), E_T(p)) + b), s = exp(logit_scale) and b = logit_bias of the SigLIP model (Eq. 14)",
    "hmean": "per-image harmonic mean of the six paper columns (adaface, sphereface, facenet, clip, dclip, siglip), "
             "averaged over images (Sec. 4.2); missing unless all six are filled",
    "gmean": "per-image geometric mean of the six paper columns, averaged over images (Sec. 4.2); missing unless all "
             "six are filled",
    "hmean_filled": "per-image harmonic mean of the score columns that were filled (listed under 'combined'), "
                    "averaged over images; NOT the paper's hMean unless those are its six",
    "gmean_filled": "per-image geometric mean of the score columns that were filled, averaged over images; NOT the "
                    "paper's gMean unless those are its six",
    "upper_bound": "Fig. 7: for N in (1, 2, 4, 8, 16) up to the seeds made, the sample with the best rank_by among N "
                   "of a face x prompt, expected over every choice of N of its seeds, averaged over face x prompt",
}


def _present(rows: list[dict]) -> list[str]:
    return [k for k in SCORES if rows and all(r.get(k) is not None for r in rows)]


def _means(rows: list[dict], keys: list[str]) -> dict:
    """Every score column: the mean over images, or None (missing) when not every image has it."""
    return {k: (metrics.mean_of_per_image([r[k] for r in rows]) if k in keys else None) for k in SCORES}


def upper_bound(rows: list[dict], keys: list[str]) -> dict:
    """Fig. 7, ranked by the paper's hMean; when that is missing, by hmean_filled (and said so)."""
    rank_by = next((k for k in ("hmean", "hmean_filled") if k in keys), None)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["face"], r["prompt_index"])].append(r)
    if not groups or rank_by is None:
        return {"rank_by": rank_by, "n": []}
    ns = metrics.best_of_ns(min(len(g) for g in groups.values()))
    out = {"rank_by": rank_by, "n": ns}
    for k in keys:
        out[k] = [float(sum(metrics.expected_best_of_n([r[rank_by] for r in g], [r[k] for r in g], n)
                            for g in groups.values()) / len(groups)) for n in ns]
    return out


def _detection(rows: list[dict], columns: dict) -> dict:
    """Per identity column filled: the fraction of images in which its detector found a face."""
    return {c: metrics.mean_of_per_image([c not in (r.get("no_face") or "").split() for r in rows])
            for c in IDENTITY_COLUMNS if columns.get(c, {}).get("filled")}


def why_missing(summary: dict) -> dict:
    """{missing column: why}, from summarize()'s output: no model, no face in a face's photos, or
    (for the combinations) which of their parts is missing."""
    columns, missing = summary["columns"], summary["missing"]
    out = {}
    for c in missing:
        col = columns.get(c, {})
        if c in ("hmean", "gmean"):
            out[c] = "needs all six of the paper's columns (" + ", ".join(PAPER_SIX) + ")"
        elif c in ("hmean_filled", "gmean_filled"):
            filled = [k for k in SCORE_COLUMNS if columns.get(k, {}).get("filled")]
            if not (set(filled) & set(IDENTITY_COLUMNS) and set(filled) & set(TEXT_COLUMNS)):
                out[c] = "needs an identity and a text column"
            else:
                out[c] = "needs every filled column in every image; missing in some: " + ", ".join(
                    k for k in filled if k in missing)
        elif not col.get("filled"):
            out[c] = col.get("missing", "no model given")
        elif col.get("no_face_in_photos_of"):
            out[c] = "its detector found no face in the photos of " + ", ".join(col["no_face_in_photos_of"])
        else:
            out[c] = "not every image has a score"
    return out


def summarize(rows: list[dict], info: dict, columns: dict | None = None) -> dict:
    """columns: Scorer.columns(), which model filled which column or why it is missing."""
    keys = _present(rows)
    columns = dict(columns or {})
    filled_scores = [c for c in SCORE_COLUMNS if c in keys]
    columns["combined"] = {"hmean_gmean": list(PAPER_SIX) if "hmean" in keys else None,
                           "hmean_filled_gmean_filled": filled_scores if "hmean_filled" in keys else None}
    per_face = defaultdict(list)
    for r in rows:
        per_face[r["face"]].append(r)
    return {
        **info,
        "images": len(rows),
        "columns": columns,
        "missing": [c for c in SCORES if c not in keys],
        "detection_rate": _detection(rows, columns),
        "mean": _means(rows, keys),
        "per_face": {f: {"images": len(rs), "detection_rate": _detection(rs, columns), **_means(rs, keys)}
                     for f, rs in per_face.items()},
        "upper_bound": upper_bound(rows, keys),
        "definitions": {k: v for k, v in DEFINITIONS.items() if k in keys or k == "upper_bound"},
    }


def write_csv(rows: list[dict], path: str) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def write_json(obj: dict, path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=True)
        f.write("\n")
    return path


def _grid_text(r: dict) -> str:
    """The first filled identity column, CLIP, and hMean (H) or, without it, hmean_filled (H*)."""
    ident = next((c for c in IDENTITY_COLUMNS if r.get(c) is not None), None)
    parts = [f"{ident[:4]} {r[ident]:.2f}"] if ident else []
    parts += [f"T {r['clip']:.2f}"] if r.get("clip") is not None else []
    h = next((k for k in ("hmean", "hmean_filled") if r.get(k) is not None), None)
    parts += [f"{'H' if h == 'hmean' else 'H*'} {r[h]:.2f}"] if h else []
    return "  ".join(parts)


def grid(face, jobs: list[Job], rows: list[dict], out_dir: str, path: str, cell: int = 160) -> str:
    """Rows: the face photo and the reference images, then one row per prompt; columns: seeds.
    Under each image: its first identity score, CLIP and hMean (as filled)."""
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
                draw.text((x + 4, y + cell + 2), _grid_text(r), fill="black" if r["face_found"] else "red")
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
    for k in SCORES:  # the filled columns only: a missing one has no curve
        if k in ub:
            ax.plot(ns, ub[k], marker="o", label=k)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel(f"N samples per face x prompt (best by {ub.get('rank_by')})")
    ax.set_ylabel("mean score of the best sample")
    ax.set_title("Upper bound (Fig. 7): best of N")
    ax.grid(True, alpha=0.3)
    if ax.lines:  # none without an Identity x Text score to rank by
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
