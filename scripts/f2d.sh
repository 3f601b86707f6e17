#!/usr/bin/env bash
# The main job from a fresh machine: make .venv if needed, then `python -m f2d_core ARGS`.
# e.g. scripts/f2d.sh encode --image me.jpg --models ~/ComfyUI/models --out me
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
exec python -m f2d_core "$@"
