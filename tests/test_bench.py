"""`python -m f2d_core bench` measures the user's own setup and says what it could not measure.
(Speed goals are not asserted here: timings on shared test machines mean nothing.)"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from f2d_core import bench
from f2d_core.__main__ import main as cli
from f2d_core.models.mapping import MappingNetwork
from f2d_core.models.msid import MSIDEncoder
from tests import synthetic_onnx as so

FAST = ["--device", "cpu", "--batches", "1,2", "--repeat", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ComfyUI models folder: random-weight msid/mapping files and a synthetic insightface pack."""
    root = tmp_path_factory.mktemp("models")
    (root / "face2diffusion").mkdir()
    for name, module in (("msid", MSIDEncoder()), ("mapping", MappingNetwork())):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                  str(root / "face2diffusion" / f"{name}.safetensors"))
    pack = root / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    so.save(so.scrfd_model(), pack / "det_10g.onnx")
    so.save(so.landmark68_model(), pack / "1k3d68.onnx")
    return root


def photo(path, face: bool):
    img = np.random.default_rng(0).integers(0, 60, (1024, 1024, 3), dtype=np.uint8)
    img[..., 1] //= 4  # away from the green levels the synthetic detector reads as faces
    if face:
        so.paint_face(img, 32, 8, 8, blue=60, scale=640 / 1024)
    Image.fromarray(img).save(path)
    return str(path)


def test_without_model_files_it_times_random_networks_and_says_so(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(FAST + ["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["figure"]: r for r in data["figures"]}
    assert set(rows) == {"encode, batch 1", "encode, batch 2"}
    assert rows["encode, batch 2"]["per_face"] == pytest.approx(rows["encode, batch 2"]["median"] / 2)
    assert data["memory"]["encode"]["peak_rss_mb"] > 0
    assert "randomly initialised" in data["config"]["weights"]
    printed = capsys.readouterr().out
    assert "randomly initialised" in printed and "photo -> tokens and injection were not measured" in printed


def test_with_a_models_folder_it_times_loading_and_a_photo_and_names_what_it_skipped(models, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(FAST + ["--models", str(models), "--photo", photo(tmp_path / "face.png", True),
                              "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    figures = [r["figure"] for r in data["figures"]]
    assert figures == ["load msid + mapping", "encode, batch 1", "encode, batch 2",
                       "photo -> identity tokens, 1024x1024"]
    assert set(data["memory"]) == {"load", "encode", "photo"}
    assert "msid.safetensors" in data["config"]["weights"]
    assert any("injection overhead skipped" in n for n in data["notes"])  # no CLIP in the folder


def test_without_a_photo_it_times_detection_alone(models, capsys):
    assert bench.main(FAST + ["--batches", "1", "--models", str(models)]) == 0
    assert "detect, 1024x1024 image" in capsys.readouterr().out


def test_a_photo_without_a_face_is_a_clear_error(models, tmp_path, capsys):
    blank = photo(tmp_path / "blank.png", False)
    assert cli(["bench"] + FAST + ["--batches", "1", "--models", str(models), "--photo", blank]) == 2
    assert f"error: --photo {blank}: the detector found no face in it" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert cli(["bench", "--device", "cuda"]) == 2
    assert "error: --device cuda: this torch sees no CUDA GPU" in capsys.readouterr().err


def test_an_sd1_text_encoder_is_found_in_a_checkpoint_but_a_larger_clip_is_not(tmp_path):
    q = "text_model.encoder.layers.11.self_attn.q_proj.weight"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "clip").mkdir()
    save_file({"cond_stage_model.transformer." + q: torch.zeros(768, 768)},
              str(tmp_path / "checkpoints" / "sd15.safetensors"))
    save_file({q: torch.zeros(1280, 1280), "text_model.encoder.layers.12.mlp.fc1.weight": torch.zeros(1, 1)},
              str(tmp_path / "clip" / "clip_g.safetensors"))
    assert bench.find_sd1_clip(str(tmp_path)) == (str(tmp_path / "checkpoints" / "sd15.safetensors"),
                                                  "cond_stage_model.transformer.")
    (tmp_path / "checkpoints" / "sd15.safetensors").unlink()
    assert bench.find_sd1_clip(str(tmp_path)) is None


def test_the_injection_overhead_is_timed_against_the_plain_clip_encode_of_a_checkpoint(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel
    config = dict(bench.SD1_CLIP, num_hidden_layers=1, intermediate_size=64)  # SD1's width and vocabulary
    clip = CLIPTextModel(CLIPTextConfig(**config))
    ckpt = tmp_path / "sd15.safetensors"
    save_file({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v.half()  # SD1.5's keys
               for k, v in clip.state_dict().items() if not k.endswith("position_ids")}, str(ckpt))
    b = bench.Bench("cpu", repeat=1)
    bench.bench_inject(b, bench.random_encoder("cpu", torch.float32), str(ckpt), "cond_stage_model.transformer.",
                       config)
    assert [r["figure"] for r in b.rows] == ["plain CLIP text encode", "inject identity + CLIP text encode",
                                             "injection overhead"]
    plain, injected, overhead = b.rows
    assert overhead["median"] == pytest.approx((injected["median"] / plain["median"] - 1) * 100)
