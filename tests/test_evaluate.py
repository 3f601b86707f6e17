"""`python -m f2d_core.evaluate` against FAKE ComfyUI servers (tests/fake_comfy.py: an aiohttp
server on loopback with ComfyUI's routes and validation, canned execution), scored with test-built
models: a recogniser whose embedding is a known function of the crop and a detector that sees one
face in the middle of any picture (tests/recognizer_onnx.py), and a tiny random CLIP (tests/tiny_clip.py)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import recognizer_onnx as ro
from conftest import SHARED, TOKENIZER_DIR
from f2d_core.evaluate import metrics, report
from f2d_core.evaluate.clip_score import ClipEmbedder
from f2d_core.errors import CheckpointError, F2DError, ModelFilesMissing
from f2d_core.client.comfy import ComfyError
from f2d_core.evaluate import main
from f2d_core.evaluate.dispatch import Dispatcher, NoServerLeft
from f2d_core.evaluate import jobs
from f2d_core.evaluate.jobs import PAPER_PROMPTS, Face, find_faces, make_jobs, read_prompts
from f2d_core.client.run import trigger_pattern
from f2d_core.client.workflow import MissingNodeTypes
from f2d_core.client.workflow import load_workflow, to_api
from fake_comfy import FakeComfy, fake_object_info, latent_size, run_within, tiny_png

WORKFLOW = str(Path(__file__).with_name("data") / "f2d_test_workflow.json")
PROMPTS = ["a photo of f l as a chef", "f l in the snow"]


def structured(seed, size=(96, 96)):
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def rendering(fake):
    """What the fake server "generates": the uploaded face photo at the requested size, with a band
    whose colour depends on the prompt text and the seed (so every job has its own image)."""
    def image(prompt, seed):
        nodes = prompt.values()
        name = next(n["inputs"]["image"] for n in nodes if n["class_type"] == "LoadImage")
        text = next(n["inputs"]["text"] for n in nodes if n["class_type"] == "F2DInjectFaceToken")
        size = latent_size(prompt)
        face = np.asarray(Image.open(io.BytesIO(fake.uploads[name])).convert("RGB").resize(size))
        face = face.copy()
        face[size[1] * 3 // 4:, :] = np.frombuffer(hashlib.sha1(f"{text}|{seed}".encode()).digest()[:3], np.uint8)
        return png(face)
    fake.image = image
    return fake


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"SD1 CLIP tokenizer files not found at {TOKENIZER_DIR}")
    from tiny_clip import save_tiny_clip
    d = tmp_path_factory.mktemp("eval_models")
    return {"pack": str(ro.make_pack(d / "buffalo_test")), "clip": str(save_tiny_clip(d / "clip", TOKENIZER_DIR))}


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    Image.fromarray(structured(1)).save(d / "anna.png")
    Image.fromarray(structured(2)).save(d / "ben.png")
    return d


def evaluate(models, faces_dir, out, servers, *extra, clip=True):
    argv = ["--faces", str(faces_dir), "--seeds", "2", "--out", str(out), "--workflow", WORKFLOW,
            "--width", "64", "--height", "64", "--arcface", models["pack"], "--dlib", "off", "--device", "cpu"] + (["--clip", models["clip"]] if clip else [])
    for p in PROMPTS:
        argv += ["--prompt", p]
    for url in servers:
        argv += ["--server", url]
    return main(argv + list(extra))


def job(fake_prompt):
    nodes = fake_prompt.values()
    text = next(n["inputs"]["text"] for n in nodes if n["class_type"] == "F2DInjectFaceToken")
    seed = next(n["inputs"]["seed"] for n in nodes if n["class_type"] == "KSampler")
    face = next(n["inputs"]["image"] for n in nodes if n["class_type"] == "LoadImage").rsplit("-", 1)[1]
    return face, text, seed


@pytest.fixture(scope="module")
def two_servers_one_dying(models, faces_dir, tmp_path_factory):
    """2 faces x 2 prompts x 2 seeds + 4 reference images = 12 jobs; server A takes 2, accepts a
    3rd and dies with it."""
    out = tmp_path_factory.mktemp("eval") / "out"
    capture = tmp_path_factory.mktemp("log") / "stderr.txt"
    import contextlib
    import sys
    with FakeComfy(die_after=2, run_delay=0.1) as a, FakeComfy(run_delay=0.1) as b:
        rendering(a), rendering(b)
        with open(capture, "w") as err, contextlib.redirect_stderr(err):
            rc = evaluate(models, faces_dir, out, [a.url, b.url])
        sys.stderr.flush()
    return {"rc": rc, "out": out, "a": a, "b": b, "stderr": capture.read_text()}


def test_two_servers_share_the_jobs_and_the_dying_servers_job_is_made_by_the_other(two_servers_one_dying):
    r = two_servers_one_dying
    assert r["rc"] == 0, r["stderr"]
    a, b = r["a"], r["b"]
    assert len(a.prompts) == 3 and len(b.prompts) == 10
    lost = job(a.prompts[2])
    assert lost in [job(p) for p in b.prompts]  # retried elsewhere
    assert f"server {a.url} dropped" in r["stderr"] and "cannot reach ComfyUI" in r["stderr"]
    manifest = [json.loads(x) for x in (r["out"] / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 12 and {m["server"] for m in manifest} == {a.url, b.url}
    assert sum(m["server"] == a.url for m in manifest) == 2


def test_every_image_is_the_one_rendered_for_its_face_prompt_and_seed(two_servers_one_dying):
    out, b = two_servers_one_dying["out"], two_servers_one_dying["b"]
    files = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert files == sorted(f"{f}/{f}_{w}_{s}.png" for f in ("anna", "ben") for w in ("ref", "00", "01") for s in (0, 1))
    for prompt in b.prompts:
        face, text, seed = job(prompt)
        which = "ref" if text == "a photo of f l" else f"{PROMPTS.index(text):02d}"
        label = face.rsplit(".", 1)[0]
        saved = np.asarray(Image.open(out / "images" / label / f"{label}_{which}_{seed}.png"))
        np.testing.assert_array_equal(saved, np.asarray(Image.open(io.BytesIO(b.image(prompt, seed)))))


def test_outputs_are_written(two_servers_one_dying):
    out = two_servers_one_dying["out"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8 and {r["face"] for r in rows} == {"anna", "ben"}
    assert list(rows[0])[:6] == ["face", "prompt_index", "prompt", "seed", "file", "face_found"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 8 and summary["detection_rate"] == {"arcface": 1.0} and summary["seeds"] == [0, 1]
    assert {k for k, v in summary["mean"].items() if v is not None} == {"arcface", "clip", "dclip", "hmean_filled",
                                                                        "gmean_filled"}
    assert set(summary["missing"]) == {"adaface", "sphereface", "facenet", "dlib", "siglip", "hmean", "gmean"}
    assert summary["columns"]["arcface"]["filled"] and "w600k_r50.onnx" in summary["columns"]["arcface"]["model"]
    assert summary["columns"]["dlib"] == {"filled": False, "missing": "turned off (--dlib off)"}
    why = report.why_missing(summary)
    assert why["dlib"] == "turned off (--dlib off)" and why["siglip"] == "no --siglip folder given"
    assert summary["upper_bound"]["n"] == [1, 2] and summary["upper_bound"]["rank_by"] == "hmean_filled"
    assert set(summary["per_face"]) == {"anna", "ben"}
    for face in ("anna", "ben"):
        with Image.open(out / "grids" / f"{face}.jpg") as g:
            assert g.size == (220 + 2 * 160, 3 * 176)  # reference row + 2 prompts, 2 seeds
    pytest.importorskip("matplotlib")
    assert (out / "upper_bound.png").is_file() and summary["files"]["plot"] == "upper_bound.png"


def test_scores_are_the_metrics_of_the_saved_images(two_servers_one_dying, models, faces_dir):
    """Recomputed from the files with the models directly: the arcface identity from the known
    embedding function (Eq. 10), CLIP on the prompt with 'f l' read as 'a person' (Eq. 11), dCLIP
    from the same face's reference image of the same seed and 'A photo of a person' (Eq. 12-13)."""
    out = two_servers_one_dying["out"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    clip = ClipEmbedder(models["clip"])
    from f2d_core.faces.similarity import load_identity_scorer
    scorer = load_identity_scorer(models["pack"], device="cpu")

    def crop_embedding(rgb):
        face = scorer.detector.detect(rgb)[0]
        return ro.colour_embedding([scorer.recognizer.align(rgb, face.landmarks5)])[0]

    neutral = clip.texts(["A photo of a person"])[0]
    for r in rows:
        image = np.asarray(Image.open(out / r["file"]).convert("RGB"))
        photo = np.asarray(Image.open(faces_dir / f"{r['face']}.png").convert("RGB"))
        identity = max(0.0, metrics.cosine(crop_embedding(photo), crop_embedding(image)))
        assert float(r["arcface"]) == pytest.approx(identity, abs=1e-5)
        text = clip.texts([r["prompt"].replace("f l", "a person")])[0]
        img = clip.images([image])[0]
        assert float(r["clip"]) == pytest.approx(max(float(img @ text), 0.0), abs=1e-5)
        ref = clip.images([np.asarray(Image.open(out / "images" / r["face"] / f"{r['face']}_ref_{r['seed']}.png")
                                      .convert("RGB"))])[0]
        dclip = max(metrics.cosine(img - ref, text - neutral), 0.0)
        assert float(r["dclip"]) == pytest.approx(dclip, abs=1e-5)
        assert r["adaface"] == "" and r["siglip"] == "" and r["hmean"] == ""  # no model given: missing
        three = [identity, max(float(img @ text), 0.0), dclip]
        assert float(r["hmean_filled"]) == pytest.approx(metrics.harmonic_mean(three), abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean"]["arcface"] == pytest.approx(np.mean([float(r["arcface"]) for r in rows]), abs=1e-6)
    assert summary["upper_bound"]["arcface"][0] == pytest.approx(summary["mean"]["arcface"])  # N=1 is the mean
    assert summary["mean"]["arcface"] > 0.3  # the generated images keep the face photo's colours


def test_resume_after_interruption_makes_only_what_is_missing(models, faces_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with FakeComfy(die_after=5) as dying:
        rendering(dying)
        assert evaluate(models, faces_dir, out, [dying.url], clip=False) == 2
    err = capsys.readouterr().err
    assert "7 image(s) were not made" in err and "run the same command again" in err
    made = sorted(p.name for p in (out / "images").rglob("*.png"))
    assert len(made) == 5 and not (out / "results.csv").exists()
    assert not list((out / "images").rglob("*.part"))
    with FakeComfy() as fresh:
        rendering(fresh)
        assert evaluate(models, faces_dir, out, [fresh.url], clip=False) == 0, capsys.readouterr().err
    assert len(fresh.prompts) == 7  # only the missing ones
    assert len(list((out / "images").rglob("*.png"))) == 12
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 8
    # nothing left to make: no server is even needed to score again
    assert evaluate(models, faces_dir, out, ["http://127.0.0.1:9"], clip=False) == 0
    assert "all 12 image(s) already made" in capsys.readouterr().err


def test_a_rerun_with_other_settings_into_the_same_folder_is_refused(models, faces_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with FakeComfy() as fake:
        rendering(fake)
        assert evaluate(models, faces_dir, out, [fake.url], "--generate-only") == 0
        assert evaluate(models, faces_dir, out, [fake.url], "--steps", "5") == 2
    err = capsys.readouterr().err
    assert "holds images made with other settings" in err and "steps: None before, 5 now" in err
    assert "Use another --out folder" in err


def test_a_server_without_the_models_is_dropped_and_the_other_does_everything(models, faces_dir, tmp_path, capsys):
    with FakeComfy(object_info=fake_object_info(checkpoints=["other.safetensors"])) as bare, FakeComfy() as full:
        rendering(full)
        rc = evaluate(models, faces_dir, tmp_path / "out", [bare.url, full.url], "--generate-only")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not bare.prompts and len(full.prompts) == 12
    assert f"server {bare.url} dropped" in err and "'sd15.safetensors' for CheckpointLoaderSimple" in err


def test_a_server_that_hangs_is_interrupted_and_its_job_made_elsewhere(models, faces_dir, tmp_path, capsys):
    with FakeComfy(run_delay=30) as stuck, FakeComfy() as ok:
        rendering(ok)
        rc = evaluate(models, faces_dir, tmp_path / "out", [stuck.url, ok.url], "--generate-only", "--timeout", "1")
        assert rc == 0, capsys.readouterr().err
        assert len(stuck.prompts) == 1 and len(ok.prompts) == 12
        assert len(stuck.deleted) == 1 and stuck.interrupts == [{"prompt_id": stuck.deleted[0]}]  # its own prompt
    assert "did not finish within 1 s" in capsys.readouterr().err
    assert len(list((tmp_path / "out" / "images").rglob("*.png"))) == 12


def test_a_workflow_error_stops_the_run_with_the_nodes_message(models, faces_dir, tmp_path, capsys):
    with FakeComfy(fail_class="F2DInjectFaceToken") as a, FakeComfy(fail_class="F2DInjectFaceToken") as b:
        rc = evaluate(models, faces_dir, tmp_path / "out", [a.url, b.url], "--generate-only")
    err = capsys.readouterr().err
    assert rc == 2 and "ComfyUI failed in node 5 (F2DInjectFaceToken): ValueError: placeholder" in err
    assert len(a.prompts) + len(b.prompts) <= 2  # stopped, not retried on every server


def test_no_reachable_server_is_a_clear_error(models, faces_dir, tmp_path, capsys):
    rc = evaluate(models, faces_dir, tmp_path / "out", ["http://127.0.0.1:9"], "--generate-only")
    err = capsys.readouterr().err
    assert rc == 2 and "ComfyUI at http://127.0.0.1:9 failed: cannot reach ComfyUI" in err
    assert "12 image(s) were not made" in err


def test_a_server_answering_a_web_page_is_dropped_by_name_not_waited_on_forever(models, faces_dir, tmp_path,
                                                                                 capsys):
    with FakeComfy(bad_answers={"/object_info": "html"}) as web, FakeComfy() as ok:
        rendering(ok)
        rc = run_within(30, evaluate, models, faces_dir, tmp_path / "out", [web.url], "--generate-only")
        err = capsys.readouterr().err
        assert rc == 2 and f"ComfyUI at {web.url} failed: {web.url}/object_info answered with something" in err
        rc = run_within(30, evaluate, models, faces_dir, tmp_path / "out", [web.url, ok.url], "--generate-only")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"server {web.url} dropped" in err and "not JSON: is this ComfyUI's address?" in err
    assert len(ok.prompts) == 12


def test_an_unreadable_photo_is_named_before_any_server_is_used(models, faces_dir, tmp_path, capsys):
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "anna.png").write_bytes((faces_dir / "anna.png").read_bytes())
    (faces / "ben.png").write_text("not an image")
    with FakeComfy() as a, FakeComfy() as b:
        rc = evaluate(models, faces, tmp_path / "out", [a.url, b.url], "--generate-only")
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {faces / 'ben.png'}: not a readable image" in err
    assert "server" not in err and "BytesIO" not in err
    assert not a.uploads and not b.uploads and not a.prompts and not b.prompts


def test_images_are_saved_where_resume_and_scoring_look_whatever_format_the_workflow_saves(
        models, faces_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with FakeComfy(save_format="webp") as fake:
        rendering(fake)
        assert evaluate(models, faces_dir, out, [fake.url], "--generate-only") == 0, capsys.readouterr().err
    files = sorted((out / "images").rglob("*.*"))
    assert len(files) == 12 and {f.suffix for f in files} == {".png"}
    webps = [np.asarray(Image.open(io.BytesIO(fake.images[f"ComfyUI_{k:05d}_.webp"])).convert("RGB"))
             for k in range(12)]
    with Image.open(files[0]) as saved:
        assert saved.format == "PNG"  # converted, pixel for pixel
        assert any(np.array_equal(np.asarray(saved.convert("RGB")), w) for w in webps)
    # resumed: nothing to make again, and scoring finds every image
    assert evaluate(models, faces_dir, out, ["http://127.0.0.1:9"], clip=False) == 0
    assert "all 12 image(s) already made" in capsys.readouterr().err
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 8


# --- no fake results: what is counted as done is checked, a failed job leaves nothing -------------

def manifest_files(out):
    path = out / "manifest.jsonl"
    return [json.loads(x)["file"] for x in path.read_text().splitlines()] if path.exists() else []


def test_a_resumed_run_remakes_images_that_are_damaged_replaced_or_not_recorded(models, faces_dir, tmp_path,
                                                                                 capsys):
    out = tmp_path / "out"
    with FakeComfy() as fake:
        rendering(fake)
        assert evaluate(models, faces_dir, out, [fake.url], "--generate-only") == 0, capsys.readouterr().err
    images = out / "images"
    truncated, resized, unrecorded = images / "anna" / "anna_00_0.png", images / "ben" / "ben_ref_1.png", \
        images / "ben" / "ben_01_0.png"
    truncated.write_bytes(truncated.read_bytes()[:100])
    Image.new("RGB", (32, 32)).save(resized)  # readable, but not what the job made
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(x for x in lines if "ben_01_0" not in x) + "\n")
    with FakeComfy() as fresh:
        rendering(fresh)
        assert evaluate(models, faces_dir, out, [fresh.url], "--generate-only") == 0, capsys.readouterr().err
    assert sorted(job(p) for p in fresh.prompts) == [("anna.png", PROMPTS[0], 0), ("ben.png", "a photo of f l", 1),
                                                     ("ben.png", PROMPTS[1], 0)]
    for path in (truncated, resized, unrecorded):
        with Image.open(path) as im:
            assert im.size == (64, 64)
    assert "9 of 12 image(s) already made; making 3" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    ("--steps 0", "error: --steps 0: the sampler needs at least 1 step (ComfyUI's KSampler minimum)."),
    ("--steps -1", "error: --steps -1: the sampler needs at least 1 step"),
    ("--seed -1", "error: --seed -1: seeds run from 0 to 18446744073709551615 (ComfyUI's KSampler range)"),
], ids=["steps-0", "steps-negative", "seed-negative"])
def test_impossible_numbers_end_the_evaluation_before_anything_is_made(models, faces_dir, tmp_path, capsys,
                                                                       option, message):
    with FakeComfy() as fake:
        rc = evaluate(models, faces_dir, tmp_path / "out", [fake.url], "--generate-only", *option.split())
    assert rc == 2 and message in capsys.readouterr().err
    assert not fake.prompts and not (tmp_path / "out").exists()


def test_a_rejected_workflow_stops_the_evaluation_and_nothing_counts_as_done(models, faces_dir, tmp_path, capsys):
    api = to_api(load_workflow(WORKFLOW), fake_object_info())
    api["8"]["inputs"]["steps"] = 0  # past the local check: ComfyUI's validation says no
    (tmp_path / "zero.json").write_text(json.dumps(api))
    out = tmp_path / "out"
    with FakeComfy() as a, FakeComfy() as b:
        rc = evaluate(models, faces_dir, out, [a.url, b.url], "--generate-only", "--workflow",
                      str(tmp_path / "zero.json"))
    err = capsys.readouterr().err
    assert rc == 2 and ("ComfyUI rejected the workflow: Prompt outputs failed validation\n"
                        "  node 8 (KSampler): Value 0 smaller than min of 1: steps") in err
    assert not list(out.rglob("*.png")) and manifest_files(out) == []
    assert "dropped" not in err  # the workflow's fault, the same on every server: not retried


def test_an_image_of_the_wrong_size_is_not_saved_nor_counted_as_done(models, faces_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with FakeComfy() as fake:
        fake.image = lambda prompt, seed: tiny_png(seed, (112, 112))
        rc = evaluate(models, faces_dir, out, [fake.url], "--generate-only")
    err = capsys.readouterr().err
    assert rc == 2 and "node 10 (SaveImage) gave a 112x112 image" in err and "but the job asks for 64x64" in err
    assert not list(out.rglob("*.png")) and manifest_files(out) == []
    with FakeComfy() as fresh:  # resumed: nothing was counted as done
        rendering(fresh)
        assert evaluate(models, faces_dir, out, [fresh.url], "--generate-only") == 0
    assert len(fresh.prompts) == 12 and len(manifest_files(out)) == 12


# --- the dispatcher on its own (no server: clients are stand-ins) ----------------------------------

class StandIn:
    def __init__(self, url):
        self.url = url

    def object_info(self):
        if "html" in self.url:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")  # a surprise, not a ComfyError
        return {}

    def open_ws(self):
        return False

    def cancel(self, prompt_id=None):
        pass

    def close(self):
        pass


def dispatch(urls, prepare=lambda client, job: {}, render=lambda client, api, job: {}, jobs=range(4)):
    done, down = [], []
    todo = make_jobs([Face("anna", ("anna.png",))], ["f l"], list(jobs), reference=False)
    d = Dispatcher(urls, prepare, render, client_factory=StandIn)
    counts = run_within(10, d.run, todo, on_done=lambda job, url, info: done.append(url),
                        on_down=lambda url, reason: down.append((url, reason)))
    return counts, done, down


def test_a_worker_that_meets_an_unexpected_error_drops_its_server_by_name():
    counts, done, down = dispatch(["http://html", "http://ok"])
    assert counts == {"http://html": 0, "http://ok": 4}
    assert down == [("http://html", "ValueError: Expecting value: line 1 column 1 (char 0)")]
    with pytest.raises(NoServerLeft, match="ComfyUI at http://html failed: ValueError: Expecting value"):
        dispatch(["http://html"])  # the only server: the run ends, it does not wait for ever


def test_only_server_side_problems_drop_a_server_other_errors_stop_the_run():
    def prepare(client, job):
        if client.url == "http://a":
            raise MissingNodeTypes(["F2DEncodeFace"])
        raise F2DError("ben.png: not a readable image")
    with pytest.raises(F2DError, match="^ben.png: not a readable image$"):
        dispatch(["http://a", "http://b"], prepare=prepare)
    counts, done, down = dispatch(["http://a", "http://b"], prepare=lambda c, j: c.url == "http://a" and 1 / 0)
    assert counts["http://b"] == 4 and down[0][0] == "http://a" and "ZeroDivisionError" in down[0][1]

    def render(client, api, job):
        raise ComfyError("no answer")
    with pytest.raises(NoServerLeft, match="ComfyUI at http://a failed: no answer"):
        dispatch(["http://a"], render=render)


def test_a_bug_while_rendering_stops_the_run_with_it():
    def render(client, api, job):
        raise KeyError("oops")
    with pytest.raises(KeyError, match="oops"):
        dispatch(["http://a", "http://b"], render=render)


# --- inputs --------------------------------------------------------------------------------------

PAPER_TEXT = SHARED / "paper" / "face2diffusion-cvpr2024.txt"


def _table7_from_paper_text() -> list[str]:
    """Table 7 as the paper's text holds it (one flattened line), S* written as f l."""
    if not PAPER_TEXT.is_file():
        pytest.skip(f"the paper's text is not at {PAPER_TEXT}: put the project's shared folder beside the repo "
                    "(or set F2D_SHARED) to compare the prompts with the paper")
    line = next(ln for ln in PAPER_TEXT.read_text(encoding="utf-8").splitlines() if ln.startswith("Prompts A photo of"))
    body = line[len("Prompts "):].replace("Ssuperscript\U0001d446S^{*}", "f l")
    return [p.strip() for p in re.split(r"(?=A photo of f l )", body) if p.strip()]


def test_the_default_prompts_are_the_40_of_table_7_each_with_the_trigger_once():
    prompts = read_prompts([], [])
    assert len(prompts) == 40 and len(set(prompts)) == 40
    assert all(len(trigger_pattern("f l").findall(p)) == 1 for p in prompts)
    assert prompts[0] == "A photo of f l as a firefighter" and prompts[-1] == "A photo of f l in front of Niagara Falls"
    header = Path(PAPER_PROMPTS).read_text(encoding="utf-8").split("\nA photo", 1)[0]
    assert "Table 7" in header and "CVPR 2024" in header and "2403.05094" in header


def test_the_default_prompts_equal_table_7_of_the_paper_text():
    paper = _table7_from_paper_text()
    for spot in ("A photo of f l as a DJ", "A photo of f l sipping coffee at a café terrace",
                 "A photo of f l giving a thumbs-up", "A photo of f l at Mount Everest Base Camp"):
        assert spot in paper
    assert read_prompts([], []) == paper  # same prompts, same order


def test_an_emptied_paper_prompt_file_is_an_error_that_says_how_to_restore_it(tmp_path, monkeypatch):
    empty = tmp_path / "paper_prompts.txt"
    empty.write_text("# only comments\n\n")
    monkeypatch.setattr(jobs, "PAPER_PROMPTS", str(empty))
    with pytest.raises(F2DError, match=r"holds no prompts, but it ships with the 40 prompts of the paper's Table 7"
                                       r"(.|\n)*--prompts FILE"):
        jobs.read_prompts([], [])


def test_every_prompt_needs_the_identifier(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\nf l as a chef\n\na photo of a dog\nfl skiing\n")
    with pytest.raises(F2DError, match=r"needs the words 'f l'(.|\n)*2 do\(es\) not: 'a photo of a dog'; 'fl skiing'"):
        read_prompts([str(f)], [])
    assert read_prompts([], ["f l, oil painting"]) == ["f l, oil painting"]


def test_faces_are_photos_or_folders_of_photos(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "zoe smith.jpg")
    (tmp_path / "yan").mkdir()
    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "yan" / n)
    (tmp_path / "notes.txt").write_text("x")
    faces = find_faces(str(tmp_path))
    assert [(f.label, [os.path.basename(p) for p in f.photos]) for f in faces] == [
        ("yan", ["a.png", "b.png"]), ("zoe_smith", ["zoe smith.jpg"])]
    (tmp_path / "empty").mkdir()
    with pytest.raises(F2DError, match="no photos found"):
        find_faces(str(tmp_path / "empty"))


def test_clip_folder_errors_say_what_a_clip_folder_holds(tmp_path, models):
    with pytest.raises(ModelFilesMissing, match="has no config.json.*transformers CLIP model.*Nothing is downloaded"):
        ClipEmbedder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="could not be loaded as a CLIP model"):
        ClipEmbedder(tmp_path)


def test_clip_embeddings_are_normalised_and_deterministic(models):
    clip = ClipEmbedder(models["clip"])
    t = clip.texts(["a photo of a person", "a person in the snow", "a photo of a person"])
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    i = clip.images([structured(1), structured(2)])
    assert i.shape == (2, 16) and not np.allclose(i[0], i[1])
