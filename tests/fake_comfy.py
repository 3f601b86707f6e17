"""A FAKE ComfyUI server for the runner's tests: an aiohttp server on 127.0.0.1 (in its own thread,
since the client under test is synchronous) with ComfyUI's routes and canned behaviour. It is a
test double, not ComfyUI:
- GET /object_info: a fixed answer (ComfyUI 0.3.64's core nodes, stand-ins for the pack's).
- POST /upload/image: stores the multipart upload.
- POST /prompt: validates as ComfyUI does (unknown node types; INT/FLOAT inputs against their
  min/max, with ComfyUI's messages; each output node with the nodes it needs, only the
  partial_execution_targets when given): no valid output is a 400, some valid outputs are a 200
  with node_errors and only those outputs queued.
- "Runs" a prompt by walking the needed nodes in id order and sending ComfyUI's /ws messages
  (execution_start, executing, progress for KSampler steps, executed, execution_success or
  execution_error, executing None); /history is written after execution_success as ComfyUI does.
  SaveImage makes an image of the EmptyLatentImage size whose colour encodes the seed;
  PreviewImage a 112x112 "temp" image (what the aligned-face preview is).
- GET /history/<id>, GET /view, POST /interrupt ({"prompt_id"}), POST /queue ({"delete": [...]}).
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
import uuid
from pathlib import Path

from aiohttp import WSMsgType, web
from PIL import Image

DATA = Path(__file__).with_name("data")
PREVIEW_SIZE = (112, 112)

# Stand-ins for the pack's nodes, whose real input names are not final yet: just enough
# object_info for conversion, the model check and the runner. V1 lists and V3 "COMBO" both appear.
FAKE_F2D_NODES = {
    "LoadF2DEncoder": {"input": {"required": {
        "msid": [["msid.pt"]], "mapping": ["COMBO", {"options": ["mapping.pt"]}],
        "detector": [["buffalo_l"]]}}, "output": ["F2D_ENCODER"], "name": "LoadF2DEncoder",
        "display_name": "Load F2D Encoder"},
    "F2DEncodeFace": {"input": {"required": {"encoder": ["F2D_ENCODER"], "image": ["IMAGE"]}},
                      "output": ["F2D_FACE"], "name": "F2DEncodeFace", "display_name": "F2D Encode Face"},
    "F2DInjectFaceToken": {"input": {"required": {
        "clip": ["CLIP"], "face": ["F2D_FACE"], "text": ["STRING", {"multiline": True, "default": ""}]}},
        "output": ["CONDITIONING"], "name": "F2DInjectFaceToken", "display_name": "F2D Inject Face Token"},
}


def fake_object_info(checkpoints=("sd15.safetensors",)) -> dict:
    info = json.loads((DATA / "object_info_core.json").read_text())
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(checkpoints)
    return {**info, **FAKE_F2D_NODES}


def tiny_png(seed: int, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 7, 7)).save(buf, format="PNG")
    return buf.getvalue()


def latent_size(prompt: dict, default=(64, 64)) -> tuple[int, int]:
    """The image size the prompt's EmptyLatentImage asks for (as ComfyUI decodes it: multiples of 8)."""
    for n in prompt.values():
        if n["class_type"] == "EmptyLatentImage":
            return n["inputs"]["width"] // 8 * 8, n["inputs"]["height"] // 8 * 8
    return default


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)


def upstream(prompt: dict, nid: str) -> set[str]:
    """nid and every node it needs."""
    seen, todo = set(), [nid]
    while todo:
        n = todo.pop()
        if n in seen or n not in prompt:
            continue
        seen.add(n)
        todo += [v[0] for v in prompt[n]["inputs"].values() if _is_link(v)]
    return seen


class FakeComfy:
    """with FakeComfy() as fake: ... fake.url ...; knobs: ws (False: /ws answers 404),
    ws_drop_after (break the socket after that many messages), fail_class (that node raises),
    reject (a canned 400 answer for /prompt), ignores_targets (validate and run every output, as
    ComfyUI before partial_execution_targets), history_messages (False: /history keeps no status
    messages, so errors are only seen on the websocket), image (a function (prompt, seed) -> PNG
    bytes for SaveImage; default tiny_png(seed, latent size)), save_format (SaveImage writes that
    format, e.g. "webp", with its extension), die_after (accept that many prompts, then "crash" when
    the next one arrives: it is queued but never run, the sockets and the port close), run_delay
    (seconds each prompt "runs"), chatter (while it runs, a progress message every that many
    seconds), bad_answers ({path: "html"}: a web page instead of JSON; {path: "cut"}: the answer
    breaks off). Records: prompts, targets, uploads, images, history, ws_connects, pongs,
    interrupts (their JSON bodies), deleted (prompt ids taken off the queue).
    `python fake_comfy.py --port P [...]` serves until killed and writes its arguments to
    $FAKE_COMFY_ARGV, so it can stand in for ComfyUI's main.py."""

    def __init__(self, object_info=None, ws=True, ws_drop_after=None, fail_class=None, reject=None,
                 history_delay=0.05, port=0, history_messages=True, image=None, die_after=None, run_delay=0.0,
                 save_format=None, chatter=None, bad_answers=None, ignores_targets=False):
        self.object_info = object_info or fake_object_info()
        self.ws, self.ws_drop_after, self.fail_class, self.reject = ws, ws_drop_after, fail_class, reject
        self.history_delay, self.history_messages, self.port = history_delay, history_messages, port
        self.image = image or (lambda prompt, seed: tiny_png(seed, latent_size(prompt)))
        self.die_after, self.run_delay, self.chatter = die_after, run_delay, chatter
        self.save_format, self.bad_answers, self.ignores_targets = save_format, bad_answers or {}, ignores_targets
        self.dead = False
        self.prompts, self.targets, self.uploads, self.history, self.images = [], [], {}, {}, {}
        self.ws_connects, self.pongs, self.interrupts, self.deleted = 0, [], [], []
        self._sockets, self._cancelled = {}, set()
        self.loop = asyncio.new_event_loop()
        self._ready, self._error = threading.Event(), None

    # -- lifecycle: the aiohttp loop runs in its own thread ------------------------------------
    def __enter__(self):
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake ComfyUI")
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # handed to __enter__
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._shutdown())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    async def _start(self):
        app = web.Application()
        app.router.add_get("/object_info", self._object_info)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/history/{prompt_id}", self._history)
        app.router.add_get("/view", self._view)
        app.router.add_post("/upload/image", self._upload)
        app.router.add_post("/prompt", self._prompt)
        app.router.add_post("/interrupt", self._interrupt)
        app.router.add_post("/queue", self._queue)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]
        self.jobs = asyncio.Queue()
        self._worker_task = asyncio.ensure_future(self._worker())

    async def _shutdown(self):
        if not self.dead:
            await self._crash()
        self._worker_task.cancel()
        await asyncio.gather(self._worker_task, return_exceptions=True)

    async def _crash(self):
        """Stop running prompts, break every websocket, close every connection and the port."""
        self.dead = True
        for request, _ in list(self._sockets.values()):
            request.transport and request.transport.abort()
        await self.runner.cleanup()

    # -- routes ---------------------------------------------------------------------------------
    async def _bad_answer(self, request):
        how = self.bad_answers.get(request.path)
        if how == "html":
            return web.Response(text="<!doctype html><html><body>Welcome to nginx!</body></html>",
                                content_type="text/html")
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"KSampler": ')  # 1000 bytes promised, 13 sent
        request.transport.close()
        return resp

    async def _object_info(self, request):
        if request.path in self.bad_answers:
            return await self._bad_answer(request)
        return web.json_response(self.object_info)

    async def _history(self, request):
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def _view(self, request):
        name = request.query.get("filename")
        if name not in self.images:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=self.images[name], content_type="image/png")

    async def _upload(self, request):
        if request.path in self.bad_answers:
            await request.read()
            return await self._bad_answer(request)
        form = await request.post()
        image = form["image"]
        self.uploads[image.filename] = image.file.read()
        return web.json_response({"name": image.filename, "subfolder": "", "type": "input"})

    async def _interrupt(self, request):
        body = await request.json() if request.can_read_body else {}
        self.interrupts.append(body)
        if body.get("prompt_id"):
            self._cancelled.add(body["prompt_id"])
        return web.Response()

    async def _queue(self, request):
        body = await request.json()
        for pid in body.get("delete", []):
            self.deleted.append(pid)
            self._cancelled.add(pid)
        return web.Response()

    def _input_errors(self, node: dict) -> list[dict]:
        """ComfyUI's min/max checks of a node's INT and FLOAT inputs, with its messages."""
        errors = []
        for section in ("required", "optional"):
            for name, spec in ((self.object_info[node["class_type"]].get("input") or {}).get(section) or {}).items():
                value, opts = node["inputs"].get(name), spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if spec[0] not in ("INT", "FLOAT") or not isinstance(value, (int, float)) or _is_link(value):
                    continue
                if "min" in opts and value < opts["min"]:
                    errors.append({"type": "value_smaller_than_min", "message": f"Value {value} smaller than min "
                                   f"of {opts['min']}", "details": name, "extra_info": {"input_name": name}})
                if "max" in opts and value > opts["max"]:
                    errors.append({"type": "value_bigger_than_max", "message": f"Value {value} bigger than max "
                                   f"of {opts['max']}", "details": name, "extra_info": {"input_name": name}})
        return errors

    def _validate(self, prompt: dict, targets):
        """(outputs to run, node_errors) as ComfyUI's validate_prompt, or (None, the 400 answer)."""
        for nid, node in prompt.items():
            if node["class_type"] not in self.object_info:
                return None, {"error": {"type": "invalid_prompt", "message": f"Cannot execute because node "
                                        f"{node['class_type']} does not exist.", "details": f"Node ID '#{nid}'",
                                        "extra_info": {}}, "node_errors": {}}
        use_targets = targets is not None and not self.ignores_targets
        outputs = [nid for nid, n in prompt.items() if self.object_info[n["class_type"]].get("output_node")
                   and (not use_targets or nid in targets)]
        if not outputs:
            return None, {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                                    "extra_info": {}}, "node_errors": {}}
        good, node_errors = [], {}
        for out in outputs:
            bad = {nid: errs for nid in upstream(prompt, out) if (errs := self._input_errors(prompt[nid]))}
            for nid, errs in bad.items():
                node_errors.setdefault(nid, {"errors": errs, "dependent_outputs": [],
                                             "class_type": prompt[nid]["class_type"]})["dependent_outputs"].append(out)
            if not bad:
                good.append(out)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for ne in node_errors.values() for e in ne["errors"])
            return None, {"error": {"type": "prompt_outputs_failed_validation",
                                    "message": "Prompt outputs failed validation", "details": details,
                                    "extra_info": {}}, "node_errors": node_errors}
        return good, node_errors

    async def _prompt(self, request):
        data = await request.json()
        if self.reject is not None:
            return web.json_response(self.reject, status=400)
        prompt, targets = data["prompt"], data.get("partial_execution_targets")
        good, answer = self._validate(prompt, targets)
        if good is None:
            return web.json_response(answer, status=400)
        pid = str(uuid.uuid4())
        self.prompts.append(prompt)
        self.targets.append(targets)
        if self.die_after is not None and len(self.prompts) > self.die_after:
            # queued, never run: the client learns it when the server is gone
            asyncio.get_running_loop().call_later(0.01, lambda: asyncio.ensure_future(self._crash()))
        else:
            self.jobs.put_nowait((pid, prompt, good, data.get("client_id")))
        return web.json_response({"prompt_id": pid, "number": len(self.prompts), "node_errors": answer})

    async def _websocket(self, request):
        if not self.ws:
            return web.json_response({"error": "no websocket here"}, status=404)
        self.ws_connects += 1
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        client_id = request.query.get("clientId", "")
        out = asyncio.Queue()
        self._sockets[client_id] = (request, out)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                        "sid": client_id}})
        await ws.ping(b"hi")  # a client must answer pings and skip binary preview frames
        await ws.send_bytes(b"\x00\x00\x00\x01preview")
        sender = asyncio.ensure_future(self._send_messages(request, ws, out))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PONG:
                    self.pongs.append(msg.data)
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
        finally:
            sender.cancel()
            self._sockets.pop(client_id, None)
        return ws

    async def _send_messages(self, request, ws, out):
        sent = 0
        while True:
            msg = await out.get()
            if self.ws_drop_after is not None and sent >= self.ws_drop_after:
                request.transport.abort()  # a broken connection: no close frame
                return
            await ws.send_str(msg)
            sent += 1

    def send(self, client_id, kind, data):
        sock = self._sockets.get(client_id)
        if sock is not None:
            sock[1].put_nowait(json.dumps({"type": kind, "data": data}))

    # -- "execution" ------------------------------------------------------------------------------
    async def _worker(self):
        while True:
            pid, prompt, outputs, client_id = await self.jobs.get()
            if pid not in self._cancelled and not self.dead:
                await self._execute(pid, prompt, outputs, client_id)

    async def _execute(self, prompt_id, prompt, outputs, client_id):
        msgs = []

        def send(kind, data):
            data = {**data, "prompt_id": prompt_id}
            msgs.append([kind, data])
            self.send(client_id, kind, data)

        def stopped() -> bool:
            if prompt_id in self._cancelled:
                send("execution_interrupted", {"node_id": None, "node_type": None, "executed": []})
                return True
            return self.dead
        send("execution_start", {})
        loop = asyncio.get_running_loop()
        end = loop.time() + self.run_delay
        while loop.time() < end:
            if stopped():
                return self._write_history(client_id, prompt_id, prompt, {}, msgs, "error")
            if self.chatter:
                send("progress", {"value": 0, "max": 1, "node": None})
            await asyncio.sleep(min(self.chatter or 0.02, max(0.0, end - loop.time())))
        needed = set().union(*(upstream(prompt, o) for o in outputs))
        result = {}
        for nid in sorted(needed, key=lambda k: int(k) if k.isdigit() else 0):
            if stopped():
                return self._write_history(client_id, prompt_id, prompt, result, msgs, "error")
            node = prompt[nid]
            send("executing", {"node": nid, "display_node": nid})
            if node["class_type"] == self.fail_class:
                send("execution_error", {"node_id": nid, "node_type": node["class_type"],
                                         "exception_type": "ValueError",
                                         "exception_message": "placeholder 'f l' not found in the prompt",
                                         "traceback": ["..."], "executed": []})
                break
            if node["class_type"] == "KSampler":
                steps = node["inputs"].get("steps", 3)
                for k in range(1, (steps if isinstance(steps, int) else 3) + 1):
                    send("progress", {"value": k, "max": steps, "node": nid})
            if node["class_type"] in ("SaveImage", "PreviewImage"):
                if node["class_type"] == "SaveImage":
                    seed = next((n["inputs"].get("seed", 0) for n in prompt.values() if n["class_type"] == "KSampler"),
                                0)
                    name, kind = f"ComfyUI_{len(self.images):05d}_.{self.save_format or 'png'}", "output"
                    self.images[name] = self._encode(self.image(prompt, seed))
                else:
                    name, kind = f"ComfyUI_temp_{len(self.images):05d}_.png", "temp"
                    self.images[name] = tiny_png(200, PREVIEW_SIZE)
                result[nid] = {"images": [{"filename": name, "subfolder": "", "type": kind}]}
                send("executed", {"node": nid, "display_node": nid, "output": result[nid]})
            await asyncio.sleep(0)
        else:
            send("execution_success", {})
        await asyncio.sleep(self.history_delay)  # ComfyUI writes history just after execution_success
        ok = msgs[-1][0] == "execution_success"
        self._write_history(client_id, prompt_id, prompt, result, msgs, "success" if ok else "error")

    def _write_history(self, client_id, prompt_id, prompt, outputs, msgs, status):
        self.history[prompt_id] = {"prompt": [0, prompt_id, prompt, {}, []], "outputs": outputs, "status": {
            "status_str": status, "completed": status == "success",
            "messages": msgs if self.history_messages else []}}
        self.send(client_id, "executing", {"node": None, "prompt_id": prompt_id})

    def _encode(self, png: bytes) -> bytes:
        if not self.save_format:
            return png
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).save(buf, format=self.save_format)
        return buf.getvalue()


def run_within(seconds: float, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread: its result or exception, or an AssertionError when it is
    still running after `seconds` (a hang fails the test instead of stopping the suite)."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller
            box["error"] = e
    t = threading.Thread(target=target, daemon=True, name=f"run_within {getattr(fn, '__name__', fn)}")
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise AssertionError(f"{getattr(fn, '__name__', fn)} still running after {seconds} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box.get("result")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if os.environ.get("FAKE_COMFY_ARGV"):
        Path(os.environ["FAKE_COMFY_ARGV"]).write_text(json.dumps(argv))
    print("fake ComfyUI starting", flush=True)
    info = fake_object_info()
    if os.environ.get("FAKE_COMFY_IMPORT_ERROR"):  # the pack "fails to import", as ComfyUI logs it
        print("Traceback (most recent call last):\nModuleNotFoundError: No module named 'onnxruntime'\n\n"
              "Cannot import /x/custom_nodes/face2diffusion module for custom nodes: No module named 'onnxruntime'",
              flush=True)
        info = {k: v for k, v in info.items() if k not in FAKE_F2D_NODES}
    with FakeComfy(object_info=info, port=int(argv[argv.index("--port") + 1])):
        threading.Event().wait()
