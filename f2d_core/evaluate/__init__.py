"""The paper's evaluation protocol, run through ComfyUI (see README, "Evaluating").

    python -m f2d_core.evaluate --faces DIR --prompts PROMPTS.txt --seeds 4 \
        --server http://gpu1:8188 --server http://gpu2:8188 --out eval/ \
        --insightface ComfyUI/models/insightface/models/buffalo_l --clip models/clip-vit-large-patch14

One concept per module: jobs (what to make, what exists), dispatch (several servers, retries),
scoring (per-image metrics), report (csv, summary, grids, plot), progress, cli.
"""
from .cli import main

__all__ = ["main"]
