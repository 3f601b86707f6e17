"""How well each MSID depth tells people apart (the paper's Fig. 4 analysis).

For anchor/positive/negative triplets (positive: another photo of the anchor's person,
negative: a photo of someone else), the cosine similarity of anchor-positive pairs should
exceed that of anchor-negative pairs. The AUC of that separation is computed per tap
(blocks 3, 6, 9, 12, after their necks) and for the concatenated 1536-d feature.
An ArcFace-trained ViT separates identities only at depth; MSID should do so at every tap.
"""
from __future__ import annotations

import csv
import json
import os
import random

import numpy as np
import torch

from ..errors import F2DError

TAP_NAMES = ("block3", "block6", "block9", "block12", "concat")


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive pair > score of a negative pair), ties counting half (Mann-Whitney U)."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs positive and negative scores")
    scores = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties share their average rank
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def tap_similarities(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """(N, 1536) x2 -> (N, 5) cosine similarity per 384-d tap and of the whole vector."""
    from ..models.msid import TAPS, WIDTH
    cols = [torch.nn.functional.cosine_similarity(features_a[:, i * WIDTH:(i + 1) * WIDTH],
                                                  features_b[:, i * WIDTH:(i + 1) * WIDTH], dim=1)
            for i in range(len(TAPS))]
    cols.append(torch.nn.functional.cosine_similarity(features_a, features_b, dim=1))
    return torch.stack(cols, 1)


def make_triplets(labels: list[int], count: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """`count` random (anchor, positive, negative) index triplets."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(i)
    with_pairs = [lab for lab, idx in by_label.items() if len(idx) >= 2]
    if not with_pairs or len(by_label) < 2:
        raise F2DError("triplets need at least one person with two photos and at least two people.")
    out = []
    for _ in range(count):
        lab = rng.choice(with_pairs)
        a, p = rng.sample(by_label[lab], 2)
        other = rng.choice([x for x in by_label if x != lab])
        out.append((a, p, rng.choice(by_label[other])))
    return out


@torch.no_grad()
def evaluate(msid: torch.nn.Module, dataset, triplets, batch_size: int = 256, device="cpu") -> dict:
    """{tap name: AUC} over the triplets; `dataset[i]` -> ((3, 112, 112) uint8, label)."""
    from .data import to_msid_pixels
    msid = msid.to(device).eval()
    needed = sorted({i for t in triplets for i in t})
    feats = {}
    for s in range(0, len(needed), batch_size):
        idx = needed[s:s + batch_size]
        crops = torch.stack([dataset[i][0] for i in idx])
        for i, f in zip(idx, msid(to_msid_pixels(crops).to(device)).float().cpu()):
            feats[i] = f
    a = torch.stack([feats[t[0]] for t in triplets])
    pos = tap_similarities(a, torch.stack([feats[t[1]] for t in triplets])).numpy()
    neg = tap_similarities(a, torch.stack([feats[t[2]] for t in triplets])).numpy()
    return {name: auc(pos[:, j], neg[:, j]) for j, name in enumerate(TAP_NAMES)}


def read_triplets(path: str, paths: list[str]) -> list[tuple[int, int, int]]:
    """A CSV of anchor,positive,negative image paths (relative to the data folder) -> index triplets."""
    where = {p: i for i, p in enumerate(paths)}
    out = []
    if not os.path.isfile(path):
        raise F2DError(f"--triplets {path}: file not found (a CSV of anchor,positive,negative image paths).")
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#") or row[0] == "anchor":
                continue
            try:
                out.append(tuple(where[p.strip()] for p in row[:3]))
            except KeyError as e:
                raise F2DError(f"{path} line {n}: {e.args[0]} is not an image of the data folder.") from None
    return out


def run_eval(data: str, msid_path: str, out: str | None = None, triplets_csv: str | None = None,
             count: int = 2000, seed: int = 0, device: str = "cpu", batch_size: int = 256) -> dict:
    from ..weights.checkpoint import load_checkpoint
    from ..models.msid import MSIDEncoder

    from .data import AlignedFaceDataset, FaceRecord, identity_folders
    paths, labels, _ = identity_folders(data)
    dataset = AlignedFaceDataset(data, [FaceRecord(p, None, None, labels[p]) for p in paths])
    if triplets_csv:
        trip = read_triplets(triplets_csv, paths)
    else:
        trip = make_triplets([labels[p] for p in paths], count, seed)
    msid = MSIDEncoder()
    msid.load_state_dict(load_checkpoint(msid_path, "msid"), strict=True)
    result = {"msid": os.path.basename(os.fspath(msid_path)), "triplets": len(trip),
              "auc": evaluate(msid, dataset, trip, batch_size, device)}
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
    return result
