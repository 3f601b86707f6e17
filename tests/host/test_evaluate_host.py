"""`python -m f2d_core.evaluate` against a real ComfyUI with this pack (random SD1.5-shaped weights,
the synthetic SCRFD detector), scored with the columns that can be filled here: ArcFace (a
test-built insightface-format pack: fixed-face detector + colour recogniser) and dlib (real
models, when dlib is importable in this python); every other column must come out missing."""
from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from .conftest import CHECKPOINT_NAME, REPO

PHOTOS = ("f2d_input_0.jpg", "f2d_input_3.jpg")


def faces_for_both_detectors(folder, shared):
    """The real shared photos (dlib finds their faces) with one square painted in a corner that
    the server's synthetic SCRFD reads as a face (so the pack can encode them)."""
    from synthetic_onnx import paint_face
    folder.mkdir()
    for name in PHOTOS:
        rgb = np.asarray(Image.open(shared / "faces" / name).convert("RGB")).copy()
        paint_face(rgb, 32, 0, 0, scale=640 / max(rgb.shape[:2]))
        Image.fromarray(rgb).save(folder / name.replace(".jpg", ".png"))
    return folder


def test_an_evaluation_on_real_comfyui_fills_arcface_and_dlib_and_marks_the_rest_missing(comfy_server, tmp_path,
                                                                                         capsys):
    from conftest import SHARED
    import recognizer_onnx as ro
    from f2d_core.evaluate import main
    if not (SHARED / "faces" / PHOTOS[0]).is_file():
        pytest.skip(f"the shared face photos are not at {SHARED / 'faces'}")
    dlib_here = importlib.util.find_spec("dlib") is not None
    faces = faces_for_both_detectors(tmp_path / "faces", SHARED)
    pack = ro.make_pack(tmp_path / "buffalo_test")
    out = tmp_path / "eval"
    argv = ["--faces", str(faces), "--seeds", "2", "--prompt", "A photo of f l as a chef", "--server", comfy_server.url,
            "--workflow", str(REPO / "workflows" / "face2diffusion_basic.json"), "--checkpoint", CHECKPOINT_NAME,
            "--steps", "1", "--width", "64", "--height", "64", "--arcface", str(pack), "--dlib", "auto",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nsummary: images {summary['images']}, detection {summary['detection_rate']}, "
          f"means { {k: v for k, v in summary['mean'].items() if v is not None} }, missing {summary['missing']}")
    assert summary["images"] == 4  # 2 faces x 1 prompt x 2 seeds (+ 4 reference images, not scored)
    columns = summary["columns"]
    assert columns["arcface"]["filled"] and "w600k_r50.onnx" in columns["arcface"]["model"]
    for c in ("adaface", "sphereface", "facenet", "clip", "dclip", "siglip"):
        assert not columns[c]["filled"] and columns[c]["missing"].startswith("no --"), c
        assert summary["mean"][c] is None
    assert summary["mean"]["hmean"] is None and summary["mean"]["hmean_filled"] is None  # no text column
    assert 0.0 <= summary["mean"]["arcface"] <= 1.0
    if dlib_here:
        assert columns["dlib"]["filled"] and "dlib_face_recognition_resnet_model_v1.dat" in columns["dlib"]["model"]
        assert "no_face_in_photos_of" not in columns["dlib"]  # dlib found the real faces in the photos
        assert summary["mean"]["dlib"] is not None and "dlib" in summary["detection_rate"]
    else:
        assert columns["dlib"] == {"filled": False, "missing": "dlib is not installed (pip install -r "
                                   "requirements-dlib.txt (it installs dlib-bin and face-recognition-models))"}
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and all(r["adaface"] == "" and r["arcface"] != "" for r in rows)
