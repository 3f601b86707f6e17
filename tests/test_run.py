"""The headless runner end to end against tests/fake_comfy.py (a FAKE ComfyUI on loopback: an
aiohttp server with ComfyUI's routes and validation, canned execution), plus error formatting."""
from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import websocket
from PIL import Image

from f2d_core.client.comfy import ComfyClient, ComfyError, PromptRejected
from f2d_core.client.server import ServerStartError, start_server
from f2d_core.client.run import DEFAULT_WORKFLOW, main, workflow_trigger
from f2d_core.client.workflow import load_workflow, to_api
from fake_comfy import PREVIEW_SIZE, FakeComfy, fake_object_info, run_within, tiny_png

DATA = Path(__file__).with_name("data")
WORKFLOW = str(DATA / "f2d_test_workflow.json")
FAKE_MAIN = Path(__file__).with_name("fake_comfy.py")


def photo(path: Path, size=(64, 80), color=(200, 150, 120)) -> str:
    Image.new("RGB", size, color).save(path)
    return str(path)


def run(fake, tmp_path, *extra, faces=None):
    faces = faces or [photo(tmp_path / "alice.png")]
    argv = ["--server", fake.url, "--workflow", WORKFLOW, "--out", str(tmp_path / "out")]
    for f in faces:
        argv += ["--face", f]
    return main(argv + list(extra))


def by_type(prompt, class_type):
    return [n for n in prompt.values() if n["class_type"] == class_type]


def test_end_to_end_saves_every_prompt_and_seed_with_the_values_filled_in(tmp_path, capsys):
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "a photo of f l", "--prompt", "f l as a chef", "--seeds", "2",
                 "--seed", "10", "--steps", "3", "--width", "256", "--height", "320")
    out, err = capsys.readouterr()
    assert rc == 0, err
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == ["alice_00_10.png", "alice_00_11.png", "alice_01_10.png", "alice_01_11.png", "manifest.jsonl"]
    assert (tmp_path / "out" / "alice_01_11.png").read_bytes() == tiny_png(11, (256, 320))  # that seed's image
    assert len(fake.prompts) == 4
    (upload, data), = fake.uploads.items()
    assert data == (tmp_path / "alice.png").read_bytes() and upload.endswith("-alice.png")
    texts_seeds = [(by_type(p, "F2DInjectFaceToken")[0]["inputs"]["text"], by_type(p, "KSampler")[0]["inputs"]["seed"])
                   for p in fake.prompts]
    assert texts_seeds == [("a photo of f l", 10), ("a photo of f l", 11), ("f l as a chef", 10), ("f l as a chef", 11)]
    p = fake.prompts[0]
    assert by_type(p, "KSampler")[0]["inputs"]["steps"] == 3
    assert by_type(p, "EmptyLatentImage")[0]["inputs"] == {"width": 256, "height": 320, "batch_size": 1}
    assert by_type(p, "LoadImage")[0]["inputs"]["image"] == upload
    assert by_type(p, "F2DEncodeFace")[0]["inputs"] == {"encoder": ["2", 0], "image": ["3", 0]}
    assert not by_type(p, "MarkdownNote")
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [(m["file"], m["prompt_index"], m["seed"]) for m in manifest][-1] == ("alice_01_11.png", 1, 11)
    assert f"saved {tmp_path / 'out' / 'alice_00_10.png'}" in out and "4 image(s) in" in out
    assert "4/4" in err and "alice_01_11: KSampler step 3/3" in err  # progress from the websocket
    assert fake.pongs[:1] == [b"hi"]  # the client answered the server's ping
    assert fake.targets == [["10"]] * 4  # only the SaveImage branch is asked for


def test_prompts_file_times_seeds_count(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# the paper's prompts\nf l as a chef\n\n  f l in the snow  \nf l, oil painting\n")
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "a photo of f l", "--prompts", str(prompts), "--seeds", "2")
    assert rc == 0, capsys.readouterr().err
    assert len(fake.prompts) == 8
    pngs = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".png"))
    assert pngs[-2:] == ["alice_03_0.png", "alice_03_1.png"]
    assert by_type(fake.prompts[4], "F2DInjectFaceToken")[0]["inputs"]["text"] == "f l in the snow"


@pytest.mark.parametrize("knobs", [{"history_messages": False}, {"ws": False}], ids=["from-websocket", "from-history"])
def test_execution_error_is_a_clear_message_and_exit_code_2(tmp_path, capsys, knobs):
    with FakeComfy(fail_class="F2DInjectFaceToken", **knobs) as fake:
        rc = run(fake, tmp_path, "--prompt", "a photo of f l")
    err = capsys.readouterr().err
    assert rc == 2
    assert ("error: ComfyUI failed in node 5 (F2DInjectFaceToken): ValueError: placeholder 'f l' not found "
            "in the prompt") in err
    assert "Traceback" not in err and len(fake.prompts) == 1


def test_missing_models_are_listed_in_one_message_before_anything_runs(tmp_path, capsys):
    info = fake_object_info(checkpoints=["dreamshaper_8.safetensors"])
    info["LoadF2DEncoder"] = json.loads(json.dumps(info["LoadF2DEncoder"]))
    req = info["LoadF2DEncoder"]["input"]["required"]
    req["msid"][0], req["mapping"][1]["options"] = [], []
    with FakeComfy(object_info=info) as fake:
        rc = run(fake, tmp_path, "--prompt", "f l")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1
    assert "'sd15.safetensors' for CheckpointLoaderSimple.ckpt_name (node 1): put it in " in err
    assert os.path.join("models", "checkpoints") in err and "dreamshaper_8.safetensors" in err and "--checkpoint" in err
    assert "'msid.pt' for LoadF2DEncoder.msid" in err and "'mapping.pt' for LoadF2DEncoder.mapping" in err
    assert "'buffalo_l'" not in err  # present on the server
    assert "Face2Diffusion files go here" in err and "face2diffusion" in err and "det_10g.onnx" in err
    assert not fake.prompts and not fake.uploads


def test_checkpoint_option_picks_a_file_the_server_has(tmp_path, capsys):
    with FakeComfy(object_info=fake_object_info(checkpoints=["dreamshaper_8.safetensors"])) as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--checkpoint", "dreamshaper_8.safetensors")
    assert rc == 0, capsys.readouterr().err
    assert by_type(fake.prompts[0], "CheckpointLoaderSimple")[0]["inputs"]["ckpt_name"] == "dreamshaper_8.safetensors"


def test_validation_rejection_lists_node_errors(tmp_path, capsys):
    answer = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                        "details": "", "extra_info": {}},
              "node_errors": {"8": {"class_type": "KSampler", "dependent_outputs": ["10"], "errors": [
                  {"type": "value_bigger_than_max", "message": "Value 20000 bigger than max of 10000",
                   "details": "steps", "extra_info": {}}]}}}
    with FakeComfy(reject=answer) as fake:
        rc = run(fake, tmp_path, "--prompt", "f l")
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: ComfyUI rejected the workflow: Prompt outputs failed validation\n" in err
    assert "  node 8 (KSampler): Value 20000 bigger than max of 10000: steps" in err


def test_unknown_node_types_on_the_server_are_named(tmp_path, capsys):
    info = fake_object_info()
    del info["F2DEncodeFace"], info["LoadF2DEncoder"]
    with FakeComfy(object_info=info) as fake:
        assert run(fake, tmp_path, "--prompt", "f l") == 2
    assert "no node type F2DEncodeFace, LoadF2DEncoder" in capsys.readouterr().err


@pytest.mark.parametrize("knobs", [{"ws": False}, {"ws_drop_after": 2}], ids=["no-websocket", "websocket-drops"])
def test_falls_back_to_polling_history_without_a_websocket(tmp_path, capsys, knobs):
    with FakeComfy(**knobs) as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--seed", "7")
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "alice_00_7.png").read_bytes() == tiny_png(7, (512, 512))
    assert fake.ws_connects == (0 if knobs.get("ws") is False else 1)


def test_several_photos_of_one_person_are_letterboxed_and_batched(tmp_path, capsys):
    faces = [photo(tmp_path / "a.png", (64, 80)), photo(tmp_path / "b.jpg", (100, 50)),
             photo(tmp_path / "c.png", (30, 30))]
    with FakeComfy() as fake:
        assert run(fake, tmp_path, "--prompt", "f l", faces=faces) == 0, capsys.readouterr().err
    assert len(fake.uploads) == 3
    sizes = {Image.open(io.BytesIO(d)).size for d in fake.uploads.values()}
    assert sizes == {(100, 80)}  # one canvas, nothing scaled or cropped
    p = fake.prompts[0]
    (first,) = [k for k, n in p.items() if n["class_type"] == "LoadImage" and n["inputs"]["image"].endswith("-a.png")]
    batches = {k: n for k, n in p.items() if n["class_type"] == "ImageBatch"}
    assert len(batches) == 2 and len(by_type(p, "LoadImage")) == 3
    enc_image = by_type(p, "F2DEncodeFace")[0]["inputs"]["image"]
    last = batches[enc_image[0]]  # the encoder reads the last batch, which chains back to the first photo
    assert batches[last["inputs"]["image1"][0]]["inputs"]["image1"] == [first, 0]
    assert sorted(os.listdir(tmp_path / "out"))[0] == "a_00_0.png"


def multi_reference_workflow(tmp_path, shape="batched") -> str:
    """The test workflow as an API prompt with three face LoadImage nodes: batched by ImageBatch into
    the encoder's `image`, or (shape="direct") into `image`, `image_2`, `image_3`, the shape of
    workflows/face2diffusion_multi_reference.json, wired out of node id order."""
    api = to_api(load_workflow(WORKFLOW), fake_object_info())
    api["20"] = {"class_type": "LoadImage", "inputs": {"image": "face2.jpg"}}
    api["21"] = {"class_type": "LoadImage", "inputs": {"image": "face3.jpg"}}
    if shape == "direct":
        api["4"]["inputs"].update(image=["21", 0], image_2=["3", 0], image_3=["20", 0])
    else:
        api["22"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["20", 0]}}
        api["23"] = {"class_type": "ImageBatch", "inputs": {"image1": ["22", 0], "image2": ["21", 0]}}
        api["4"]["inputs"]["image"] = ["23", 0]
    (tmp_path / "multi.json").write_text(json.dumps(api))
    return str(tmp_path / "multi.json")


@pytest.mark.parametrize("shape, order", [("batched", ("3", "20", "21")), ("direct", ("21", "3", "20"))])
def test_a_workflow_with_one_loader_per_photo_gets_one_photo_each(tmp_path, capsys, shape, order):
    faces = [photo(tmp_path / f"{n}.png") for n in ("x", "y", "z")]
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--workflow", multi_reference_workflow(tmp_path, shape),
                 faces=faces)
        assert rc == 0, capsys.readouterr().err
    p = fake.prompts[0]
    # photo k goes to the loader behind the encoder's k-th photo input
    assert [p[i]["inputs"]["image"].rsplit("-", 1)[1] for i in order] == ["x.png", "y.png", "z.png"]
    assert len(by_type(p, "ImageBatch")) == (2 if shape == "batched" else 0)  # nothing added


def test_a_workflow_with_one_loader_per_photo_needs_that_many_photos(tmp_path, capsys):
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--workflow", multi_reference_workflow(tmp_path),
                 faces=[photo(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "takes exactly 3 face photos (LoadImage nodes 3, 20, 21) but 1 --face were given" in err
    assert not fake.uploads


def test_a_workflow_with_two_face_encoders_is_refused(tmp_path, capsys):
    api = to_api(load_workflow(WORKFLOW), fake_object_info())
    api["30"] = json.loads(json.dumps(api["4"]))
    (tmp_path / "two.json").write_text(json.dumps(api))
    with FakeComfy() as fake:
        assert run(fake, tmp_path, "--prompt", "f l", "--workflow", str(tmp_path / "two.json")) == 2
    assert "exactly one F2DEncodeFace node; this one has 2" in capsys.readouterr().err


def test_the_shipped_regional_two_person_workflow_is_named_as_two_people_not_by_its_second_prompt(tmp_path, capsys):
    regional = str(Path(DEFAULT_WORKFLOW).with_name("face2diffusion_two_people_regional.json"))
    with FakeComfy() as fake:
        assert run(fake, tmp_path, "--prompt", "f l", "--workflow", regional) == 2
        assert not fake.uploads
    err = capsys.readouterr().err
    assert "exactly one F2DEncodeFace node; this one has 2" in err and "run two-person workflows in ComfyUI" in err
    assert "give the title" not in err


def test_ctrl_c_takes_the_prompt_off_the_server_and_saves_nothing(tmp_path, capsys, monkeypatch):
    queued = []

    def wait(self, prompt_id, **kw):
        queued.append(prompt_id)
        raise KeyboardInterrupt
    monkeypatch.setattr(ComfyClient, "wait", wait)
    with FakeComfy() as fake:
        assert run(fake, tmp_path, "--prompt", "f l") == 130
    assert "interrupted" in capsys.readouterr().err
    assert fake.deleted == queued and fake.interrupts == [{"prompt_id": queued[0]}]  # that prompt only
    assert not list((tmp_path / "out").iterdir())


def test_unreadable_face_fails_before_contacting_any_server(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    rc = main(["--server", "http://127.0.0.1:9", "--face", str(tmp_path / "notes.png"), "--prompt", "f l"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'notes.png'}: not a readable image" in err
    assert "BytesIO" not in err  # the file is named, not the buffer it was read into


def test_a_prompt_without_the_trigger_fails_before_any_server_is_contacted(tmp_path, capsys):
    face = photo(tmp_path / "a.png")
    rc = main(["--server", "http://127.0.0.1:9", "--face", face, "--prompt", "f l as a chef",
               "--prompt", "a chef", "--workflow", WORKFLOW])
    err = capsys.readouterr().err
    assert rc == 2 and "every prompt needs the words 'f l' where the person goes; 1 do(es) not: 'a chef'" in err
    assert "cannot reach" not in err


def test_the_trigger_checked_is_the_one_the_workflow_sets(tmp_path, capsys):
    api = to_api(load_workflow(WORKFLOW), fake_object_info())
    api["5"]["inputs"]["trigger"] = "sks"
    (tmp_path / "sks.json").write_text(json.dumps(api))
    argv = ["--server", "http://127.0.0.1:9", "--face", photo(tmp_path / "a.png"),
            "--workflow", str(tmp_path / "sks.json")]
    assert main(argv + ["--prompt", "a photo of f l"]) == 2
    assert "every prompt needs the words 'sks'" in capsys.readouterr().err
    assert main(argv + ["--prompt", "a photo of SKS"]) == 2  # passes the check (CLIP reads any case) ...
    assert "cannot reach ComfyUI" in capsys.readouterr().err  # ... and goes on to the server


def test_workflow_trigger_reads_the_ui_widgets_by_name_or_by_position():
    basic = json.loads(Path(DEFAULT_WORKFLOW).read_text())
    assert workflow_trigger(basic) == "f l"
    (node,) = [n for n in basic["nodes"] if n["type"] == "F2DInjectFaceToken"]
    node["widgets_values"][1] = "zq x"
    assert workflow_trigger(basic) == "zq x"
    node["inputs"] = [i for i in node["inputs"] if "widget" not in i]  # older frontends list no widgets
    assert workflow_trigger(basic) == "zq x"
    node["mode"] = 4  # bypassed: no trigger is used, the default stands
    assert workflow_trigger(basic) == "f l"
    assert workflow_trigger(json.loads(Path(WORKFLOW).read_text())) == "f l"  # only a text widget


@pytest.mark.parametrize("how", ["html", "cut"])
def test_a_server_that_is_not_comfyui_is_an_error_message_not_a_traceback(tmp_path, capsys, how):
    with FakeComfy(bad_answers={"/object_info": how}) as fake:
        rc = run(fake, tmp_path, "--prompt", "f l")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    if how == "html":
        assert (f"error: {fake.url}/object_info answered with something that is not JSON: is this ComfyUI's "
                "address? (the answer began '<!doctype html>") in err
    else:
        assert f"error: {fake.url}/object_info broke off its answer to GET (IncompleteRead" in err


def test_an_upload_answered_with_a_web_page_is_a_comfy_error():
    with FakeComfy(bad_answers={"/upload/image": "html"}) as fake:
        with pytest.raises(ComfyError, match=r"/upload/image answered with something that is not JSON"):
            ComfyClient(fake.url).upload_image(b"x", "a.png")


SAVE_ONLY = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}


def test_the_timeout_holds_while_the_websocket_keeps_bringing_messages():
    with FakeComfy(run_delay=30, chatter=0.02) as fake:  # progress every 20 ms, never done
        client = ComfyClient(fake.url)
        assert client.open_ws()
        prompt_id = client.queue_prompt(SAVE_ONLY)
        t0 = time.monotonic()
        with pytest.raises(ComfyError, match="did not finish within 1 s"):
            run_within(10, client.wait, prompt_id, timeout=1)
        assert time.monotonic() - t0 < 3
        client.close()


def test_a_broken_websocket_is_closed_before_falling_back_to_polling():
    with FakeComfy(ws_drop_after=2) as fake:
        client = ComfyClient(fake.url)
        assert client.open_ws()
        ws = client.ws
        entry = client.wait(client.queue_prompt(SAVE_ONLY), timeout=10)
    assert entry["status"]["completed"] and client.ws is None
    assert ws.sock is None and not ws.connected  # the socket was closed, not dropped open


def test_the_fake_server_ends_every_thread_it_started():
    before = set(threading.enumerate())
    with FakeComfy(run_delay=30) as fake:
        ws = websocket.create_connection(fake.url.replace("http", "ws") + "/ws?clientId=t")  # left open
        ComfyClient(fake.url).queue_prompt(SAVE_ONLY)  # still "running" at exit
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    left = set(threading.enumerate()) - before
    ws.shutdown()
    assert not left, left


def test_unreachable_server_says_so(tmp_path, capsys):
    rc = main(["--server", "http://127.0.0.1:9", "--face", photo(tmp_path / "a.png"), "--prompt", "f l",
               "--workflow", WORKFLOW])
    assert rc == 2 and "cannot reach ComfyUI at http://127.0.0.1:9" in capsys.readouterr().err


def test_missing_default_workflow_says_to_pass_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("f2d_core.client.run.DEFAULT_WORKFLOW", str(tmp_path / "workflows" / "none.json"))
    import f2d_core.client.run as r
    args = r.build_parser().parse_args(["--server", "http://127.0.0.1:9", "--face", photo(tmp_path / "a.png"),
                                        "--prompt", "f l", "--workflow", r.DEFAULT_WORKFLOW])
    with pytest.raises(r.WorkflowError, match="default workflow .* is missing .*--workflow"):
        r.run(args)


# -- starting ComfyUI ---------------------------------------------------------------------------
def fake_checkout(tmp_path: Path, body: str) -> Path:
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text(body)
    return root


def test_server_that_exits_at_start_shows_its_log_tail(tmp_path, capsys):
    root = fake_checkout(tmp_path, "import sys\nprint('Traceback (most recent call last):')\n"
                                   "print(\"ModuleNotFoundError: No module named 'torch'\")\nsys.exit(1)\n")
    rc = main(["--comfyui", str(root), "--python", sys.executable, "--face", photo(tmp_path / "a.png"),
               "--prompt", "f l", "--workflow", WORKFLOW, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "ComfyUI exited while starting (exit code 1)" in err and "No module named 'torch'" in err
    assert "is --python the Python of your ComfyUI install" in err
    assert str(tmp_path / "out" / "comfyui.log") in err


# ComfyUI 0.3.64's own last lines on this machine (CPU-only torch) when started without --cpu; 0.8.0 ends alike
NO_CUDA_LOG = """Checkpoint files will always be loaded safely.
Traceback (most recent call last):
  File "/ComfyUI/main.py", line 149, in <module>
    import execution
  File "/ComfyUI/comfy/model_management.py", line 187, in get_torch_device
    return torch.device(torch.cuda.current_device())
  File "/ComfyUI/venv/lib/python3.11/site-packages/torch/cuda/__init__.py", line 522, in _lazy_init
    raise AssertionError("Torch not compiled with CUDA enabled")
AssertionError: Torch not compiled with CUDA enabled"""


def test_a_comfyui_whose_torch_has_no_cuda_ends_with_the_hint_to_add_cpu(tmp_path, capsys):
    root = fake_checkout(tmp_path, f"import sys\nprint({NO_CUDA_LOG!r})\nsys.exit(1)\n")
    rc = main(["--comfyui", str(root), "--python", sys.executable, "--face", photo(tmp_path / "a.png"),
               "--prompt", "f l", "--workflow", WORKFLOW, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "AssertionError: Torch not compiled with CUDA enabled" in err
    assert err.rstrip().endswith(
        "AssertionError: Torch not compiled with CUDA enabled\nComfyUI's torch cannot use a GPU on this machine (a "
        "CPU-only torch, or no NVIDIA driver), and ComfyUI uses the GPU unless started with --cpu. Add --cpu to the "
        "command to run on the CPU (slower; for a GPU, install a CUDA build of torch in ComfyUI's python).")


def test_a_node_stopping_on_a_missing_gpu_gets_the_same_hint():
    from f2d_core.client.comfy import ExecutionFailed
    e = ExecutionFailed({"node_id": "4", "node_type": "CheckpointLoaderSimple", "exception_type": "AssertionError",
                         "exception_message": "Torch not compiled with CUDA enabled"})
    assert str(e).startswith("ComfyUI failed in node 4 (CheckpointLoaderSimple): AssertionError: Torch not compiled "
                             "with CUDA enabled\nComfyUI's torch cannot use a GPU on this machine")
    assert "--cpu" not in str(ExecutionFailed({"node_id": "5", "exception_type": "ValueError",
                                               "exception_message": "placeholder 'f l' not found"}))


def test_server_that_never_answers_times_out_with_its_log(tmp_path):
    root = fake_checkout(tmp_path, "import time\nprint('loading custom nodes...', flush=True)\ntime.sleep(30)\n")
    with pytest.raises(ServerStartError, match=r"did not answer on http://127.0.0.1:\d+ within 1 s(.|\n)*loading"):
        with start_server(root, python=sys.executable, timeout=1):
            pass


def test_not_a_comfyui_folder(tmp_path):
    with pytest.raises(ServerStartError, match="has no main.py"):
        with start_server(tmp_path):
            pass


def test_runner_starts_and_stops_the_server_it_uses(tmp_path, capsys, monkeypatch):
    # the fake server script stands in for ComfyUI's main.py and records its arguments
    root = fake_checkout(tmp_path, f"import runpy, sys\nsys.path.insert(0, {str(FAKE_MAIN.parent)!r})\n"
                                   f"runpy.run_path({str(FAKE_MAIN)!r}, run_name='__main__')\n")
    monkeypatch.setenv("FAKE_COMFY_ARGV", str(tmp_path / "argv.json"))
    rc = main(["--comfyui", str(root), "--python", sys.executable, "--face", photo(tmp_path / "a.png"),
               "--prompt", "f l", "--workflow", WORKFLOW, "--out", str(tmp_path / "out"), "--cpu"])
    assert rc == 0, capsys.readouterr().err
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[:2] == ["--listen", "127.0.0.1"] and "--cpu" in argv and "--output-directory" in argv
    assert (tmp_path / "out" / "a_00_0.png").is_file()
    assert "fake ComfyUI starting" in (tmp_path / "out" / "comfyui.log").read_text()
    port = int(argv[argv.index("--port") + 1])
    with pytest.raises(Exception, match="cannot reach"):
        ComfyClient(f"http://127.0.0.1:{port}", timeout=2).object_info()  # stopped


def test_a_pack_that_failed_to_import_is_shown_from_the_log(tmp_path, capsys, monkeypatch):
    root = fake_checkout(tmp_path, f"import runpy, sys\nsys.path.insert(0, {str(FAKE_MAIN.parent)!r})\n"
                                   f"runpy.run_path({str(FAKE_MAIN)!r}, run_name='__main__')\n")
    monkeypatch.setenv("FAKE_COMFY_IMPORT_ERROR", "1")
    monkeypatch.setenv("FAKE_COMFY_ARGV", str(tmp_path / "argv.json"))
    rc = main(["--comfyui", str(root), "--python", sys.executable, "--face", photo(tmp_path / "a.png"),
               "--prompt", "f l", "--workflow", WORKFLOW, "--out", str(tmp_path / "out"),
               "--comfyui-args", "--lowvram --preview-method none"])
    err = capsys.readouterr().err
    assert rc == 2 and "no node type F2DEncodeFace, F2DInjectFaceToken, LoadF2DEncoder" in err
    # the exception line above it is kept, the blank line between dropped
    assert "ModuleNotFoundError: No module named 'onnxruntime'\nCannot import /x/custom_nodes/face2diffusion" in err
    assert f"(full log: {tmp_path / 'out' / 'comfyui.log'})" in err
    assert json.loads((tmp_path / "argv.json").read_text())[-3:] == ["--lowvram", "--preview-method", "none"]


def test_cpu_flag_is_only_passed_when_asked(tmp_path, monkeypatch):
    root = fake_checkout(tmp_path, f"import runpy, sys\nsys.path.insert(0, {str(FAKE_MAIN.parent)!r})\n"
                                   f"runpy.run_path({str(FAKE_MAIN)!r}, run_name='__main__')\n")
    monkeypatch.setenv("FAKE_COMFY_ARGV", str(tmp_path / "argv.json"))
    with start_server(root, python=sys.executable) as server:
        assert server.client.object_info()["KSampler"]
        proc = server.process
    assert "--cpu" not in json.loads((tmp_path / "argv.json").read_text())
    assert proc.poll() is not None


# -- pieces ------------------------------------------------------------------------------------
def test_prompt_rejection_without_node_errors_shows_the_details():
    e = PromptRejected({"error": {"type": "invalid_prompt", "message": "Cannot execute because node X does not exist.",
                                  "details": "Node ID '#3'"}, "node_errors": {}})
    assert str(e) == "ComfyUI rejected the workflow: Cannot execute because node X does not exist.\n  Node ID '#3'"


# -- no fake results: a rejected or wrong job is an error, and nothing of it is saved ----------------
def api_workflow(tmp_path, edit) -> str:
    """The test workflow as an API prompt (1 checkpoint ... 7 EmptyLatentImage, 8 KSampler,
    10 SaveImage), changed by edit(api), as a file."""
    api = to_api(load_workflow(WORKFLOW), fake_object_info())
    edit(api)
    (tmp_path / "api.json").write_text(json.dumps(api))
    return str(tmp_path / "api.json")


def with_preview(api):
    """A PreviewImage of the face photo, as the pack's workflows preview the aligned face."""
    api["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}, "_meta": {"title": "What was encoded"}}


def nothing_saved(tmp_path):
    out = tmp_path / "out"
    return not out.exists() or not [p.name for p in out.iterdir() if p.name != "comfyui.log"]


@pytest.mark.parametrize("option, message", [
    (["--steps", "0"], "error: --steps 0: the sampler needs at least 1 step (ComfyUI's KSampler minimum). "
                       "Pass --steps 1 or more (e.g. 20), or leave it out to use the workflow's."),
    (["--steps", "-1"], "error: --steps -1: the sampler needs at least 1 step"),
    (["--seed", "-1"], "error: --seed -1: seeds run from 0 to 18446744073709551615 (ComfyUI's KSampler range), "
                       "and --seed -1 with --seeds 1 goes outside it. Pass --seed 0 or more."),
    (["--seed", str(2**64 - 1), "--seeds", "2"], "goes outside it"),
    (["--width", "100"], "error: --width 100: must be a multiple of 8 from 16 to 16384 (Stable Diffusion works on "
                         "8x8-pixel blocks; ComfyUI's EmptyLatentImage range), e.g. 512."),
    (["--height", "8"], "error: --height 8: must be a multiple of 8 from 16 to 16384"),
    (["--seeds", "0"], "error: --seeds must be 1 or more (got 0)."),
], ids=["steps-0", "steps-negative", "seed-negative", "seed-too-large", "width-not-8", "height-too-small",
        "seeds-0"])
def test_impossible_numbers_are_refused_before_any_server_is_contacted(tmp_path, capsys, option, message):
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", *option)
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert not fake.prompts and not fake.uploads and nothing_saved(tmp_path)


def test_a_prompt_comfyui_rejects_is_its_message_per_node_and_nothing_is_saved(tmp_path, capsys):
    workflow = api_workflow(tmp_path, lambda api: api["8"]["inputs"].update(steps=0))  # past the local check
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--workflow", workflow)
    err = capsys.readouterr().err
    assert rc == 2
    assert ("error: ComfyUI rejected the workflow: Prompt outputs failed validation\n"
            "  node 8 (KSampler): Value 0 smaller than min of 1: steps\n") in err
    assert not fake.images and nothing_saved(tmp_path)


def test_node_errors_on_http_200_are_a_rejection_the_rest_is_taken_off_the_queue(tmp_path, capsys):
    # a server that runs every valid output (ComfyUI before partial_execution_targets) answers 200
    # with node_errors for the sampler and would still run the preview branch
    def edit(api):
        with_preview(api)
        api["8"]["inputs"]["steps"] = 0
    with FakeComfy(ignores_targets=True, run_delay=0.5) as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--workflow", api_workflow(tmp_path, edit))
        time.sleep(0.7)
    err = capsys.readouterr().err
    assert rc == 2
    assert ("error: ComfyUI rejected part of the workflow (it would have run only the rest, so it was taken off "
            "the queue and nothing was saved)\n  node 8 (KSampler): Value 0 smaller than min of 1: steps\n") in err
    (pid,) = fake.deleted
    assert fake.interrupts == [{"prompt_id": pid}]
    assert not fake.images and fake.history[pid]["status"]["status_str"] == "error"  # the preview never ran
    assert nothing_saved(tmp_path)


def test_only_the_final_save_image_is_taken_never_a_preview(tmp_path, capsys):
    with FakeComfy(ignores_targets=True) as fake:  # the preview runs too: its image must not be taken
        rc = run(fake, tmp_path, "--prompt", "f l", "--seed", "5",
                 "--workflow", api_workflow(tmp_path, with_preview))
        assert rc == 0, capsys.readouterr().err
        temp = [n for n in fake.images if "temp" in n]
    assert temp  # a preview image was made ...
    saved = Image.open(tmp_path / "out" / "alice_00_5.png")
    assert saved.size == (512, 512) and saved.getpixel((0, 0)) == (5, 7, 7)  # ... but SaveImage's was saved
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_without_save_image_the_runner_refuses_to_take_another_output(tmp_path, capsys):
    def edit(api):
        with_preview(api)
        del api["10"]
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--workflow", api_workflow(tmp_path, edit))
    err = capsys.readouterr().err
    assert rc == 2
    assert ("error: the workflow has no SaveImage node, so it has no final image to take (preview images are never "
            "taken as results). Add a SaveImage node at its end, or name the node whose images are the result with "
            "--output-node ID (its output nodes: 20 (PreviewImage 'What was encoded')).") in err
    assert not fake.prompts and not fake.uploads


def test_two_save_images_need_the_output_node_named(tmp_path, capsys):
    def edit(api):
        api["21"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "b"},
                     "_meta": {"title": "Second save"}}
    workflow = api_workflow(tmp_path, edit)
    with FakeComfy() as fake:
        assert run(fake, tmp_path, "--prompt", "f l", "--workflow", workflow) == 2
        assert ("the workflow has 2 SaveImage nodes (10 (SaveImage 'Save Image'), 21 (SaveImage 'Second save')); "
                "name the one whose images are the result with --output-node ID.") in capsys.readouterr().err
        rc = run(fake, tmp_path, "--prompt", "f l", "--workflow", workflow, "--output-node", "Second save")
        assert rc == 0, capsys.readouterr().err
    assert fake.targets == [["21"]]


@pytest.mark.parametrize("name, message", [
    ("99", "error: --output-node 99: the workflow has no node with that id or title. Its output nodes: "
           "10 (SaveImage 'Save Image')."),
    ("9", "error: --output-node 9: node 9 (VAEDecode 'VAE Decode') is not an output node, so it saves no image. "
          "Its output nodes: 10 (SaveImage 'Save Image')."),
])
def test_an_output_node_that_is_not_one_is_named(tmp_path, capsys, name, message):
    with FakeComfy() as fake:
        assert run(fake, tmp_path, "--prompt", "f l", "--output-node", name) == 2
    assert message in capsys.readouterr().err and not fake.prompts


def test_an_image_of_another_size_than_asked_is_an_error_and_nothing_is_saved(tmp_path, capsys):
    # the user named the preview: it runs, but its 112x112 face crop is not a 256x256 generated image
    with FakeComfy() as fake:
        rc = run(fake, tmp_path, "--prompt", "f l", "--width", "256", "--height", "256",
                 "--workflow", api_workflow(tmp_path, with_preview), "--output-node", "20")
    err = capsys.readouterr().err
    assert rc == 2 and fake.targets == [["20"]]
    assert (f"error: node 20 (PreviewImage) gave a {PREVIEW_SIZE[0]}x{PREVIEW_SIZE[1]} image (ComfyUI_temp_00000_.png), "
            "but the job asks for 256x256 (the size of the workflow's EmptyLatentImage, after --width/--height): it "
            "is not the generated image. Nothing was saved.") in err
    assert nothing_saved(tmp_path)


def test_an_unreadable_result_is_an_error_and_nothing_is_saved(tmp_path, capsys):
    with FakeComfy(image=lambda prompt, seed: b"not a png") as fake:
        rc = run(fake, tmp_path, "--prompt", "f l")
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: ComfyUI's image ComfyUI_00000_.png from node 10 (SaveImage) is not a readable image" in err
    assert "Nothing was saved." in err and nothing_saved(tmp_path)


def test_a_failed_job_after_good_ones_leaves_only_the_good_ones_in_the_manifest(tmp_path, capsys):
    with FakeComfy() as fake:
        good = fake.image
        fake.image = lambda prompt, seed: good(prompt, seed) if seed == 0 else tiny_png(seed, (8, 8))
        assert run(fake, tmp_path, "--prompt", "f l", "--seeds", "2") == 2
    assert "node 10 (SaveImage) gave a 8x8 image" in capsys.readouterr().err
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [m["file"] for m in manifest] == ["alice_00_0.png"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["alice_00_0.png"]


def test_without_the_tools_requirements_the_runner_says_what_to_install(tmp_path):
    import subprocess
    code = ("import sys; sys.modules['websocket'] = None\n"  # as if websocket-client were not installed
            "from f2d_core.__main__ import main\nsys.exit(main(['run', '--server', 'http://127.0.0.1:9', "
            "'--face', 'x.png', '--prompt', 'f l']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == ("error: websocket-client is not installed, and `run` needs it. Install the "
                        "tools' requirements: pip install -r requirements-tools.txt (scripts/f2d.sh does this).\n")
