"""Writing a result file: the folder checked before any work, the data written through a temp file
in the same folder and renamed into place.

A crash or a kill therefore never leaves half a file under the final name; what it can leave is a
temp file, named TEMP_PREFIX...TEMP_SUFFIX (hidden on Linux and macOS, and without the final
suffix, so no file list shows it), or the one safetensors' save_file writes first and renames onto
ours (`.tmp` and six letters or digits, the Rust tempfile crate's name), which the next write into
that folder removes once it is older than STALE_AFTER_S: ours by name, safetensors' only when its
header carries our metadata, so no other program's file is touched. The file written gets the mode
the umask gives any file the user saves (safetensors' own temp file is 0600). It lives with the
weights because this is the layer that reads and writes files: `convert` writes checkpoints
through it, and the identity layer above its face files.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from typing import Callable

from safetensors import SafetensorError

from ..errors import F2DError

TEMP_PREFIX = ".f2d-partial-"
TEMP_SUFFIX = ".tmp"
# a write takes seconds (a 26 MB identity file, a 90 MB checkpoint); a temp file an hour old
# belongs to a writer that was killed, never to one still running in another process
STALE_AFTER_S = 3600
_OURS = re.compile(re.escape(TEMP_PREFIX) + r"\d+-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$"
                   # and the temp files of earlier versions of Save Face: NAME.f2d.safetensors.tmp<pid>
                   + r"|.+\.f2d\.safetensors\.tmp\d+$")
# safetensors' save_file (0.4 to 0.8 at least) writes NAME's folder/.tmpXXXXXX, then renames it to NAME
_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}$")
_MAX_HEADER = 1 << 20  # our headers are a few KB (a converted checkpoint's ~400 tensors: ~50 KB)


def check_output_path(path, what: str = "output") -> str:
    """The absolute path, once its folder is known to exist and be writable (F2DError otherwise),
    so a command fails before its work, not after it."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise F2DError(f"{what} {path}: is a folder; give a file name inside it.")
    if not os.path.isdir(folder):
        raise F2DError(f"{what} {path}: the folder {folder} does not exist; create it first or write elsewhere.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise F2DError(f"{what} {path}: the folder {folder} is not writable; choose a folder you can write to.")
    return path


def written_by_us(path: str) -> bool:
    """Whether a file is a safetensors file (complete or cut short after its header) whose metadata is
    ours: an identity file's format (face2diffusion.*) or convert's f2d_kind. Reads the header only
    (safetensors can only open a complete file): 8 bytes of little-endian length, then JSON."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= _MAX_HEADER:
                return False
            meta = json.loads(f.read(size)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not a JSON object: not ours
        return False
    return isinstance(meta, dict) and (str(meta.get("format", "")).startswith("face2diffusion.")
                                       or "f2d_kind" in meta)


def remove_stale_temps(folder: str, now: float | None = None) -> list[str]:
    """Remove the temp files of killed writers older than STALE_AFTER_S (our names, and safetensors'
    temp names holding our metadata); returns them."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (_OURS.match(entry.name) or _SAFETENSORS_TEMP.match(entry.name)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat().st_mtime <= STALE_AFTER_S:
                continue
            if _OURS.match(entry.name) or written_by_us(entry.path):
                os.remove(entry.path)
                removed.append(entry.path)
        except OSError:  # another writer removed it first, or it is not ours to delete: leave it
            continue
    return removed


def write_atomic(path, write: Callable[[str], None], what: str = "output") -> str:
    """write(temp_path) into the folder of `path`, then rename it to `path`; F2DError on failure,
    with no temp file left behind. The folder must exist (check_output_path). The file gets the mode
    the umask gives a new file, whatever mode `write` leaves."""
    path = check_output_path(path, what)
    folder = os.path.dirname(path)
    remove_stale_temps(folder)
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        # created here first, so the kernel applies the umask as to any file the user saves; the mode
        # is then kept when the writer replaces the file (safetensors renames its own 0600 file onto it)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise F2DError(f"{what} {path}: could not be written ({reason}). Check the free space and the "
                       "permissions of the folder, or write elsewhere.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
