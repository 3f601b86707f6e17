"""The identity file (`NAME.f2d.safetensors`): one person's face, reusable without the encoder.

Tensors: `features` (1536,) mean MSID features over the faces used; the identity tokens for
the learned neutral expression, per text encoder of the base model family the mapping network
was for: SD1.x `s1`, `s2` (768,) (the only layout before SDXL, so older files load as SD1.x),
SDXL `s1.l`, `s2.l` (768,) and `s1.g`, `s2.g` (1280,); optionally `features_per_face`
(N, 1536) and `aligned` (N, 112, 112, 3) uint8 crops, to show what was encoded.
Metadata (strings): format version, `family` (absent: sd1), model file hashes, sources, boxes, scores.
The MSID features do not depend on the family: any mapping network can make tokens from them.
"""
from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import F2DError
from ..models.families import FAMILIES, SD1, Family, family as family_named
from ..weights.outputs import TEMP_PREFIX, write_atomic
from .bounds import FEATURE_LIMIT, TOKEN_LIMIT, require_finite

FORMAT = "face2diffusion.identity"
VERSION = "1"
SUFFIX = ".f2d.safetensors"
# shapes of the stored tensors; None = any length (the number of faces); the tokens: token_names()
SHAPES = {"features": (1536,), "features_per_face": (None, 1536), "aligned": (None, 112, 112, 3)}


def token_names(family: Family, word: str) -> dict[str, int]:
    """{tensor name: width} of one identity word ("s1" or "s2") per text encoder of `family`:
    SD1.x keeps the one-encoder name `s1` of the first format, others `s1.l`, `s1.g`, ..."""
    if family == SD1:
        return {word: family.streams[0].width}
    return {f"{word}.{st.key}": st.width for st in family.streams}


@dataclass
class FaceIdentity:
    features: torch.Tensor                      # (1536,) float32
    s1: torch.Tensor | None = None              # (768,) float32, neutral-expression tokens
    s2: torch.Tensor | None = None
    features_per_face: torch.Tensor | None = None  # (N, 1536)
    aligned: torch.Tensor | None = None         # (N, 112, 112, 3) uint8
    meta: dict = field(default_factory=dict)    # JSON-serialisable
    family: Family = SD1                        # the base model family s1, s2 are for (their width)

    @property
    def num_faces(self) -> int:
        return int(self.meta.get("num_faces", 1 if self.features_per_face is None else len(self.features_per_face)))

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"features": self.features}
        for word in ("s1", "s2"):
            value = getattr(self, word)
            if value is not None:  # one tensor per text encoder
                if value.numel() != self.family.token_width:
                    raise F2DError(f"{word} has {value.numel()} values, but {self.family.label} identity words have "
                                   f"{self.family.token_width}: the face's family does not match its tokens.")
                parts = self.family.split(value.reshape(-1))
                out.update(zip(token_names(self.family, word), (parts[st.key] for st in self.family.streams)))
        for k in ("features_per_face", "aligned"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def save(self, path: str) -> str:
        """Write atomically (temp file + rename) into an existing folder: a crash never leaves a
        half-written identity. F2DError when the folder is missing or the write fails."""
        meta = {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "family": self.family.name, "meta": json.dumps(self.meta, sort_keys=True)}
        tensors = self.tensors()
        return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta), "identity file")

    @classmethod
    def load(cls, path: str) -> "FaceIdentity":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise F2DError(f"{path}: identity file not found.")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise F2DError(f"{path}: not a readable identity file ({e}); save the face again.") from None
        if header.get("format") != FORMAT or "features" not in tensors:
            raise F2DError(f"{path}: not a Face2Diffusion identity file (expected metadata format={FORMAT!r} and a "
                           f"'features' tensor; found {sorted(tensors)[:5]}). Create one with the Save Face node "
                           "or `python -m f2d_core encode`.")
        try:
            family = family_named(header.get("family") or SD1.name)
        except ValueError:
            raise F2DError(f"{path}: made for the base model family {header.get('family')!r}, which this version of "
                           f"the pack does not know ({', '.join(FAMILIES)}). Update the pack.") from None
        words = {w: token_names(family, w) for w in ("s1", "s2")}
        shapes = {**SHAPES, **{n: (width,) for names in words.values() for n, width in names.items()}}
        foreign = sorted(k for k in tensors if k.startswith(("s1", "s2")) and k not in shapes)
        if foreign:
            raise F2DError(f"{path}: holds {foreign} but a {family.label} face stores "
                           f"{sorted(n for names in words.values() for n in names)}; the file was not written by this "
                           "pack. Save the face again.")
        for k, shape in shapes.items():
            found = tuple(tensors[k].shape) if k in tensors else shape
            if len(found) != len(shape) or any(w not in (None, f) for w, f in zip(shape, found)):
                expected = tuple("N" if w is None else w for w in shape)
                raise F2DError(f"{path}: {k!r} has shape {found}, expected {expected}; the file "
                               "was not written by this pack. Save the face again.")
        if "aligned" in tensors and tensors["aligned"].dtype != torch.uint8:
            raise F2DError(f"{path}: 'aligned' holds {tensors['aligned'].dtype} values, expected uint8 pixels; the "
                           "file was not written by this pack. Save the face again.")
        for k in ("features", "features_per_face", *(n for names in words.values() for n in names)):
            if k in tensors:
                tensors[k] = tensors[k].float()
        fix = ("The file is damaged or forged: save the face again (Encode Face -> Save Face, or "
               "`python -m f2d_core encode`).")
        limits = {"features": FEATURE_LIMIT, "features_per_face": FEATURE_LIMIT,
                  **{n: TOKEN_LIMIT for names in words.values() for n in names}}
        require_finite([(f"{path}: {k!r}", tensors.get(k), limit, fix) for k, limit in limits.items()])
        stored = {}
        for word, names in words.items():  # a word is stored whole or not at all
            present = [n for n in names if n in tensors]
            if present and len(present) != len(names):
                raise F2DError(f"{path}: has {present} but not {sorted(set(names) - set(present))}; the file is "
                               "incomplete. Save the face again.")
            stored[word] = torch.cat([tensors[n] for n in names]) if present else None
        try:
            meta = json.loads(header.get("meta", "{}"))
        except json.JSONDecodeError:
            raise F2DError(f"{path}: its metadata is not valid JSON; save the face again.") from None
        return cls(features=tensors["features"], s1=stored["s1"], s2=stored["s2"],
                   features_per_face=tensors.get("features_per_face"), aligned=tensors.get("aligned"), meta=meta,
                   family=family)


# ---- face names: NAME or folder/NAME under the identity folder ----------------------------------
# Checked before the disk is touched, so a refused name creates nothing. The rules are those of
# every file system a ComfyUI user may have (ext4, APFS, NTFS), so a face saved on one machine can
# be copied to another.
MAX_NAME_CHARS = 150  # with output/face2diffusion/ (~60 characters on Windows portable) and the
#                       suffix, the path stays under Windows' 260-character limit
MAX_PART_BYTES = 255 - len(SUFFIX)  # a file or folder name is at most 255 bytes (UTF-8 on Linux)
_PART_CHARS = re.compile(r"[\w\- .]+")
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{d}{i}" for d in ("COM", "LPT") for i in "0123456789¹²³")}


def face_name_parts(name: str) -> list[str]:
    """The folder parts of a face name ('family/anna' -> ['family', 'anna']), or an F2DError saying
    which rule it breaks. `.f2d.safetensors` at the end is optional; nothing touches the disk.
    The name is taken in NFC, so 'Zoë' typed or pasted decomposed (e + U+0308, as macOS file names
    come) is the same name, and the same file, as 'Zoë' written with one letter."""
    name = unicodedata.normalize("NFC", (name or "").strip())
    name = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name

    def refuse(why: str):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise F2DError(f"face name {shown!r} is not usable: {why}")

    if not name:
        refuse("it is empty. Write a name such as 'anna', or 'family/anna' for a subfolder.")
    if len(name) > MAX_NAME_CHARS:
        refuse(f"it is {len(name)} characters long; at most {MAX_NAME_CHARS} fit (with the output folder and "
               f"{SUFFIX} the path must stay under Windows' 260-character limit). Use a shorter name.")
    bad = sorted({c for c in name if c != "/" and not _PART_CHARS.fullmatch(c)})
    if bad:
        slash = " (use '/' for subfolders)" if "\\" in bad else ""
        refuse(f"it contains {' '.join(map(_shown, bad))}{slash}. Use letters, digits, spaces, '-', '_' or '.', "
               "and '/' for subfolders (e.g. 'family/anna').")
    parts = name.split("/")
    for part in parts:
        if not part:
            refuse("it has an empty folder part ('//', or '/' at the start or end). Write it as 'family/anna'.")
        if part in (".", ".."):
            refuse(f"it has a {part!r} part, which would point outside the faces folder. Use plain folder names "
                   "such as 'family/anna'.")
        if part.startswith("."):
            refuse(f"the part {part!r} starts with '.', which hides it on Linux and macOS. Remove the dot.")
        if part != part.strip() or part.endswith("."):
            refuse(f"the part {part!r} starts or ends with a space or ends with '.', which Windows drops from "
                   "file names. Remove it.")
        if part.split(".")[0].rstrip().upper() in WINDOWS_RESERVED:
            refuse(f"{part.split('.')[0]!r} is a device name on Windows (CON, PRN, AUX, NUL, COM0-9, LPT0-9) and "
                   f"cannot name a file or folder there. Use another name, e.g. '{part}_face'.")
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            refuse(f"the part {part[:20]!r}... is {len(part.encode('utf-8'))} bytes in UTF-8; a file name holds "
                   f"255 bytes, so with {SUFFIX} at most {MAX_PART_BYTES} are left. Use a shorter name.")
    return parts


def _shown(char: str) -> str:
    """A refused character as the user can find it: itself, or for an invisible one (a combining mark,
    a zero-width or control character) its code point and Unicode name."""
    if unicodedata.category(char)[0] in "MCZ" and char != " ":
        return f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')}, invisible)"
    return repr(char)


def face_path(root: str, name: str) -> str:
    """root/NAME.f2d.safetensors for a valid face name (see face_name_parts); touches nothing."""
    return os.path.join(os.fspath(root), *face_name_parts(name)) + SUFFIX


def _make_folders(folder: str, name: str) -> list[str]:
    """Create `folder` and its missing parents; returns the created ones, deepest last."""
    missing, d = [], folder
    while not os.path.isdir(d) and os.path.dirname(d) != d:
        missing.append(d)
        d = os.path.dirname(d)
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except OSError as e:
            _remove_folders(created)
            raise F2DError(f"face name {name!r}: could not create the folder {d} ({e.strerror}; a file of that "
                           "name may be in the way). Choose another name.") from None
        created.append(d)
    return created


def _remove_folders(created: list[str]) -> None:
    for d in reversed(created):
        try:
            os.rmdir(d)  # only empty ones: never what another save put there meanwhile
        except OSError:
            break


def save_face(face: "FaceIdentity", root: str, name: str) -> str:
    """Save Face: validate the name, create its folders under root, write the file atomically.
    Folders created for a save that then fails are removed again."""
    path = face_path(os.path.abspath(os.fspath(root)), name)
    created = _make_folders(os.path.dirname(path), name)
    try:
        return face.save(path)
    except BaseException:
        _remove_folders(created)
        raise


def list_faces(root: str) -> list[str]:
    """Saved faces under root as 'folder/NAME.f2d.safetensors', sorted: complete files only (a write
    in progress is a hidden temp file without the suffix, see outputs.write_atomic)."""
    root = os.fspath(root)
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.endswith(SUFFIX) and not f.startswith((".", TEMP_PREFIX)):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def listed_face_path(root: str, name: str) -> str:
    """The path of a file Load Face lists, whatever its name (copies like 'anna (1).f2d.safetensors'
    too), as long as it stays inside root."""
    root = os.path.abspath(os.fspath(root))
    path = os.path.abspath(os.path.join(root, *(name or "").split("/")))
    if os.path.commonpath([root, path]) != root or not path.endswith(SUFFIX):
        raise F2DError(f"{name!r} is not a saved face in {root}; pick one from the list (press R to refresh).")
    return path
