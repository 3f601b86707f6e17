#!/usr/bin/env bash
# The main job from a fresh machine: make .venv if needed (torch 2.13 and requirements-tools.txt:
# the pack's runtime requirements plus the runner's HTTP/websocket client and tqdm), then
# `python -m f2d_core ARGS`, e.g.
#   scripts/f2d.sh run --comfyui ~/ComfyUI --face me.jpg --prompt "a photo of f l as a chef"
#   scripts/f2d.sh encode --image me.jpg --models ~/ComfyUI/models --out me
set -euo pipefail
cd "$(dirname "$0")/.."
REQS=requirements-tools.txt . scripts/_venv.sh
exec python -m f2d_core "$@"
