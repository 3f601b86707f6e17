"""Regenerate object_info_core.json from a running ComfyUI (our own captured data, not ComfyUI code).

    python tests/data/capture_object_info.py http://127.0.0.1:8188

Keeps only the core nodes the workflow tests use and drops tooltips and descriptions, so the
fixture stays small. Captured from ComfyUI 0.3.64 (a125cd84), started with --disable-all-custom-nodes.
"""
import json
import sys
import urllib.request
from pathlib import Path

NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
         "SaveImage", "PreviewImage", "LoadImage", "LoadImageMask", "ImageBatch", "LoraLoader",
         "PrimitiveInt", "ImageStitch", "LatentBatchSeedBehavior", "ConditioningSetAreaPercentage",
         "ConditioningCombine"]
DROP = {"tooltip", "description", "output_tooltips", "python_module", "category"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in DROP}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def main(url: str) -> None:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as r:
        info = json.load(r)
    out = {name: _strip(info[name]) for name in NODES}
    path = Path(__file__).with_name("object_info_core.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(out)} nodes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
