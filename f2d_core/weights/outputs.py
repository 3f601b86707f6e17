"""Writing a result file: the folder checked before any work, the data written through a temp file
in the same folder and renamed into place.

A crash or a kill therefore never leaves half a file under the final name; what it can leave is a
temp file, named TEMP_PREFIX...TEMP_SUFFIX (hidden on Linux and macOS, and without the final
suffix, so no file list shows it), which the next write into that folder removes once it is older
than STALE_AFTER_S. It lives with the weights because this is the layer that reads and writes
files: `convert` writes checkpoints through it, and the identity layer above its face files.
"""
from __future__ import annotations

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


def remove_stale_temps(folder: str, now: float | None = None) -> list[str]:
    """Remove the temp files of killed writers (our names only, older than STALE_AFTER_S); returns them."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _OURS.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > STALE_AFTER_S:
                os.remove(entry.path)
                removed.append(entry.path)
        except OSError:  # another writer removed it first, or it is not ours to delete: leave it
            continue
    return removed


def write_atomic(path, write: Callable[[str], None], what: str = "output") -> str:
    """write(temp_path) into the folder of `path`, then rename it to `path`; F2DError on failure,
    with no temp file left behind. The folder must exist (check_output_path)."""
    path = check_output_path(path, what)
    folder = os.path.dirname(path)
    remove_stale_temps(folder)
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise F2DError(f"{what} {path}: could not be written ({reason}). Check the free space and the "
                       "permissions of the folder, or write elsewhere.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
