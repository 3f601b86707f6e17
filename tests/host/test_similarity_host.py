"""F2DFaceSimilarity and `python -m f2d_core.evaluate` in a real ComfyUI (see conftest for fixtures).

Scoring uses a test-built insightface-like pack, models/insightface/models/f2d_eval_test: a
detector that sees one face in the middle of any picture and a recogniser whose embedding is a
fixed projection of the crop's mean colours (tests/recognizer_onnx.py), so a photo matches
itself and a different photo less. Generation uses the conftest's models (recipe weights, the
painted-square detector, the tiny SD1.5): its images are noise, the plumbing is real.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import recognizer_onnx as ro
import synthetic_onnx as om
from conftest import FACES, TOKENIZER_DIR

from .conftest import CHECKPOINT_NAME, PACK_DIR_NAME, REPO

PACK = "f2d_eval_test"
PROMPTS = ["a photo of f l", "f l in the snow"]


@pytest.fixture(scope="module")
def eval_pack(f2d_models_dir):
    return ro.make_pack(f2d_models_dir / "insightface" / "models" / PACK)


@pytest.fixture(scope="module")
def node(comfy_inprocess, eval_pack):
    return comfy_inprocess.pack_nodes()["F2DFaceSimilarity"]


def face(i: int) -> np.ndarray:
    if not (FACES / f"f2d_input_{i}.jpg").is_file():
        pytest.skip(f"../shared/faces not found at {FACES}")
    return np.asarray(Image.open(FACES / f"f2d_input_{i}.jpg").convert("RGB"))


def recompressed(rgb: np.ndarray) -> np.ndarray:
    """The same face as a generated image would carry it: JPEG quality 60, slightly brighter."""
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb.astype(int) + 12, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=60)
    return np.asarray(Image.open(buf).convert("RGB"))


def batch(*images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).float() / 255.0


# --- the node in-process --------------------------------------------------------------------------

def test_the_node_is_registered_with_a_description_tooltips_and_only_packs_with_a_recognizer(node):
    info = node.GET_SCHEMA().get_v1_info(node)
    assert info.category == "Face2Diffusion" and info.output_node and "ArcFace" in info.description
    inputs = {**info.input["required"], **info.input.get("optional", {})}
    assert set(inputs) == {"reference", "images", "recognizer", "device"}
    assert all(spec[1].get("tooltip") for spec in inputs.values())
    assert inputs["recognizer"][1]["options"] == [PACK]  # buffalo_l here has a detector only
    assert info.output == ["FLOAT", "STRING", "FLOAT"] and info.output_is_list == [True, False, False]
    assert all(info.output_tooltips)


def test_the_score_rises_for_the_same_face_and_drops_for_a_different_one(node):
    ref, same, other = face(0), recompressed(face(0)), face(1)
    out = node.execute(batch(ref), batch(same, other, face(2)), PACK, "cpu")
    sims, summary, rate = out.result
    assert len(sims) == 3 and rate == 1.0
    assert sims[0] > 0.95 and sims[0] > max(sims[1:]) + 0.1
    assert summary.startswith("identity similarity (w600k_r50.onnx") and f"#1: {sims[0]:.3f}" in summary
    assert out.ui.as_dict() == {"text": (summary,)}


def test_several_reference_photos_of_the_person_are_one_identity(node):
    sims, _, _ = node.execute(batch(face(0), recompressed(face(0))), batch(face(0), face(1)), PACK, "cpu").result
    assert sims[0] > 0.95 and sims[1] < sims[0]


def test_a_pack_without_a_recognition_model_says_what_it_holds_and_expects(node):
    with pytest.raises(ValueError, match=r"No face recognition model in .*buffalo_l: found det_10g\.onnx\. "
                                         r"Expected w600k_r50\.onnx \(buffalo_l\)"):
        node.execute(batch(face(0)), batch(face(0)), "buffalo_l", "cpu")


# --- the node over HTTP ----------------------------------------------------------------------------

def test_the_node_runs_in_a_graph_and_shows_its_summary(comfy_server, eval_pack, tmp_path):
    paths = []
    for name, img in (("ref.png", face(0)), ("gen.png", recompressed(face(0)))):
        Image.fromarray(img).save(tmp_path / name)
        paths.append(comfy_server.upload(tmp_path / name))
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": paths[0]}},
              "2": {"class_type": "LoadImage", "inputs": {"image": paths[1]}},
              "3": {"class_type": "F2DFaceSimilarity", "inputs": {"reference": ["1", 0], "images": ["2", 0],
                                                                  "recognizer": PACK, "device": "cpu"}}}
    text = comfy_server.queue(prompt)["3"]["text"][0]
    assert "face found in 1/1 (100%)" in text and float(text.split("#1: ")[1][:5]) > 0.95


# --- evaluate against real servers ------------------------------------------------------------------

def painted_face(path):
    """A photo the server's synthetic detector sees one face in."""
    Image.fromarray(om.paint_face(np.zeros((640, 640, 3), np.uint8), 32, 8, 8)).save(path)


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, eval_pack):
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"SD1 CLIP tokenizer files not found at {TOKENIZER_DIR}")
    from tiny_clip import save_tiny_clip
    d = tmp_path_factory.mktemp("eval_inputs")
    (d / "faces").mkdir()
    painted_face(d / "faces" / "painted.png")
    return {"faces": d / "faces", "clip": save_tiny_clip(d / "clip", TOKENIZER_DIR), "pack": eval_pack}


def evaluate(inputs, out, servers, seeds=2):
    from f2d_core.evaluate import main
    argv = ["--faces", str(inputs["faces"]), "--seeds", str(seeds), "--out", str(out),
            "--workflow", str(REPO / "workflows" / "face2diffusion_basic.json"), "--checkpoint", CHECKPOINT_NAME,
            "--steps", "2", "--width", "64", "--height", "64", "--insightface", str(inputs["pack"]),
            "--clip", str(inputs["clip"]), "--dlib", "off", "--device", "cpu"]  # dlib sees no painted face
    for p in PROMPTS:
        argv += ["--prompt", p]
    for s in servers:
        argv += ["--server", s]
    return main(argv)


def check_outputs(out, images):
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == images and all(r["face_found"] == "True" for r in rows)
    assert all(0.0 <= float(r[c]) <= 1.0 for r in rows for c in ("arcface", "clip", "dclip", "hmean_filled"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == images and "w600k_r50.onnx" in summary["columns"]["arcface"]["model"]
    assert {k for k, v in summary["mean"].items() if v is not None} == {"arcface", "clip", "dclip", "hmean_filled",
                                                                        "gmean_filled"}
    assert summary["upper_bound"]["rank_by"] == "hmean_filled"
    assert (out / "grids" / "painted.jpg").is_file()
    with Image.open(out / "images" / "painted" / "painted_01_1.png") as im:
        assert im.size == (64, 64)
    try:
        import matplotlib  # noqa: F401  (not in ComfyUI's requirements: the plot is skipped without it)
    except ImportError:
        assert summary["files"]["plot"] is None
    else:
        assert (out / "upper_bound.png").is_file()
    return summary


def test_evaluate_end_to_end_against_the_real_server(comfy_server, eval_inputs, tmp_path, capsys):
    assert evaluate(eval_inputs, tmp_path / "out", [comfy_server.url]) == 0, capsys.readouterr().err
    summary = check_outputs(tmp_path / "out", images=4)  # 1 face x 2 prompts x 2 seeds
    assert summary["upper_bound"]["n"] == [1, 2]
    assert "missing dlib: turned off (--dlib off)" in capsys.readouterr().out.splitlines()


def test_evaluate_on_two_real_servers_survives_one_being_stopped(comfy_server, comfyui_path, comfy_home,
                                                                 f2d_models_dir, eval_inputs, tmp_path, capsys):
    """A second ComfyUI process takes jobs too; it is stopped after its first image, and the job it
    was running is made by the first server."""
    from .comfy_server import ComfyServer
    second = ComfyServer(comfyui_path, comfy_home / "server2", models_dir=f2d_models_dir,
                         custom_nodes={PACK_DIR_NAME: REPO})
    out = tmp_path / "out"
    stopped = threading.Event()

    def stop_after_first_image():
        while not stopped.is_set():
            manifest = out / "manifest.jsonl"
            if manifest.is_file() and second.url in manifest.read_text():
                second.stop()
                stopped.set()
            time.sleep(0.2)

    with second:
        second.require_nodes(["F2DFaceSimilarity"])
        watcher = threading.Thread(target=stop_after_first_image, daemon=True)
        watcher.start()
        try:
            rc = evaluate(eval_inputs, out, [comfy_server.url, second.url], seeds=3)
        finally:
            stopped.set()
    err = capsys.readouterr().err
    assert rc == 0, err
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    servers = [m["server"] for m in manifest]
    assert len(manifest) == 9 and second.url in servers and comfy_server.url in servers  # 3 refs + 6 images
    assert f"server {second.url} dropped" in err
    check_outputs(out, images=6)
