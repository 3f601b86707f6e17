"""What an evaluation generates, and what of it is already on disk.

Faces: every image file directly in --faces DIR is one person; every subfolder with images is
one person photographed several times (the photos are encoded together). Jobs: every face x
prompt x seed, plus one reference image per face x seed ("a photo of f l", the image-side
origin of the directional CLIP score). A job counts as done only when manifest.jsonl records it
as made by a successful job (file name, size, SHA-256) and its file is still that readable image
of that size, so a rerun makes what is missing or damaged and nothing else. settings.json records
what the images were made with; a rerun with other settings into the same folder is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import F2DError
from ..weights.files import file_sha256
from ..client import run as runner
from ..client.run import face_label, read_prompt_file, trigger_pattern

MANIFEST = "manifest.jsonl"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TRIGGER = "f l"
REFERENCE_PROMPT = "a photo of f l"
PAPER_PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_prompts.txt")
_TRIGGER_RE = trigger_pattern(TRIGGER)


@dataclass(frozen=True)
class Face:
    label: str
    photos: tuple


@dataclass(frozen=True)
class Job:
    face: Face
    prompt_index: int   # -1: the reference image ("a photo of f l")
    prompt: str
    seed: int

    @property
    def is_reference(self) -> bool:
        return self.prompt_index < 0

    @property
    def stem(self) -> str:
        which = "ref" if self.is_reference else f"{self.prompt_index:02d}"
        return f"{self.face.label}_{which}_{self.seed}"

    def path(self, out_dir: str) -> str:
        return os.path.join(out_dir, "images", self.face.label, self.stem + ".png")


def find_faces(folder: str) -> list[Face]:
    if not os.path.isdir(folder):
        raise F2DError(f"--faces {folder}: not a folder. Give a folder with one photo per person (or one "
                       "subfolder of photos per person).")
    faces, seen = [], {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            photos = tuple(os.path.join(path, f) for f in sorted(os.listdir(path)) if f.lower().endswith(IMAGE_EXTS))
            label = face_label(name)
        elif name.lower().endswith(IMAGE_EXTS):
            photos, label = (path,), face_label(name)
        else:
            continue
        if not photos:
            continue
        if label in seen:
            raise F2DError(f"{seen[label]} and {path} both become the face name {label!r}; rename one of them.")
        seen[label] = path
        faces.append(Face(label, photos))
    if not faces:
        raise F2DError(f"--faces {folder}: no photos found (looked for {', '.join(IMAGE_EXTS)} files and "
                       "subfolders holding them).")
    return faces


def read_prompts(files: list[str], texts: list[str]) -> list[str]:
    """--prompt texts, then the lines of each --prompts file; without either, the paper's list."""
    if not files and not texts:
        if not read_prompt_file(PAPER_PROMPTS):
            raise F2DError(
                f"{PAPER_PROMPTS} holds no prompts, but it ships with the 40 prompts of the paper's Table 7: "
                "the file was emptied or damaged. Restore it (git checkout -- f2d_core/evaluate/paper_prompts.txt "
                "or reinstall the pack), or pass your own with --prompts FILE or --prompt TEXT.")
        files = [PAPER_PROMPTS]
    return runner.read_prompts(files, texts, TRIGGER)


def subject_text(prompt: str, subject: str) -> str:
    """The prompt as CLIP should read it: the identifier words replaced by a plain subject."""
    return _TRIGGER_RE.sub(subject, prompt)


def make_jobs(faces: list[Face], prompts: list[str], seeds: list[int], reference: bool = True) -> list[Job]:
    jobs = []
    for face in faces:
        for seed in seeds:
            if reference:
                jobs.append(Job(face, -1, REFERENCE_PROMPT, seed))
            jobs += [Job(face, i, p, seed) for i, p in enumerate(prompts)]
    return jobs


def made_record(job: Job, out_dir: str, path: str) -> dict:
    """The manifest record of a job whose image was checked and saved at `path`."""
    with Image.open(path) as im:
        width, height = im.size
    return {"file": os.path.relpath(path, out_dir), "face": job.face.label, "prompt_index": job.prompt_index,
            "prompt": job.prompt, "seed": job.seed, "width": width, "height": height, "sha256": file_sha256(path)}


def read_manifest(out_dir: str) -> dict[str, dict]:
    """file (relative to out_dir) -> the last manifest record of a successful job that made it."""
    records = {}
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:  # a line cut off when a run was killed
                    continue
                if isinstance(r, dict) and isinstance(r.get("file"), str):
                    records[os.path.normpath(r["file"])] = r
    except FileNotFoundError:
        pass
    return records


def is_made(job: Job, out_dir: str, record: dict | None) -> bool:
    """The job's file is the readable image, of the recorded size, that a successful job recorded."""
    if not record or not {"sha256", "width", "height"} <= set(record):
        return False
    path = job.path(out_dir)
    try:
        if file_sha256(path) != record["sha256"]:
            return False
        with Image.open(path) as im:
            im.load()
            return list(im.size) == [record["width"], record["height"]]
    except (OSError, UnidentifiedImageError):  # missing, unreadable, truncated
        return False


def pending(jobs: list[Job], out_dir: str) -> list[Job]:
    """The jobs whose image is not (or no longer) the one a successful job made."""
    records = read_manifest(out_dir)
    return [j for j in jobs if not is_made(j, out_dir, records.get(os.path.relpath(j.path(out_dir), out_dir)))]


def settings_record(faces: list[Face], prompts: list[str], generation: dict) -> dict:
    return {"generation": generation, "prompts": prompts, "reference_prompt": REFERENCE_PROMPT,
            "faces": {f.label: [file_sha256(p) for p in f.photos] for f in faces}}


def check_settings(out_dir: str, record: dict) -> None:
    """Write settings.json, or check the existing one agrees: the same generation settings, the
    same prompts at the same positions (more may be appended), the same photos per face name
    (more faces and seeds may be added)."""
    path = os.path.join(out_dir, "settings.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diffs = [f"{k}: {old['generation'].get(k)!r} before, {v!r} now"
                 for k, v in record["generation"].items() if old["generation"].get(k) != v]
        n = min(len(old["prompts"]), len(record["prompts"]))
        diffs += [f"prompt {i}: {old['prompts'][i]!r} before, {record['prompts'][i]!r} now"
                  for i in range(n) if old["prompts"][i] != record["prompts"][i]]
        diffs += [f"face {k}: other photos than before" for k, v in record["faces"].items()
                  if k in old["faces"] and old["faces"][k] != v]
        if diffs:
            raise F2DError(f"{out_dir} holds images made with other settings, so they cannot be reused:\n  "
                           + "\n  ".join(diffs[:10]) + f"\nUse another --out folder (or delete {out_dir}).")
        record = {**record, "prompts": record["prompts"] if len(record["prompts"]) >= len(old["prompts"])
                  else old["prompts"], "faces": {**old["faces"], **record["faces"]}}
    os.makedirs(out_dir, exist_ok=True)
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".part", path)
