"""A FAKE ComfyUI server for the runner's tests: real HTTP and a real websocket on loopback, canned
behaviour. It is a test double, not ComfyUI: it serves a fixed /object_info, stores uploads,
"executes" a prompt by walking its nodes in id order and sending the messages ComfyUI sends
(execution_start, executing, progress for KSampler steps, executed for SaveImage,
execution_success or execution_error, executing None), and writes /history after
execution_success like ComfyUI does. /view serves a tiny PNG whose colour encodes the seed.

Its websocket side also checks the client: every client frame must be masked, and it sends a
ping, a binary frame and a fragmented text message that a correct client must handle.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import queue
import select
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).with_name("data")

# Server-side websocket framing, written separately from f2d_core.client.websocket so that the client is
# checked against an independent implementation (and this file imports nothing from f2d_core).
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    if n < 126:
        size = bytes([n])
    else:
        size = bytes([126]) + struct.pack(">H", n) if n < 65536 else bytes([127]) + struct.pack(">Q", n)
    return bytes([(0x80 if fin else 0) | opcode]) + size + payload


def client_frame(buf: bytes):
    """(opcode, payload, was masked, frame length) of the first complete client frame, else None."""
    if len(buf) < 2:
        return None
    n, pos, masked = buf[1] & 0x7F, 2, bool(buf[1] & 0x80)
    if n >= 126:
        width = 2 if n == 126 else 8
        if len(buf) < 2 + width:
            return None
        n, pos = int.from_bytes(buf[2:2 + width], "big"), 2 + width
    key = buf[pos:pos + 4] if masked else b"\0\0\0\0"
    pos += 4 if masked else 0
    if len(buf) < pos + n:
        return None
    return buf[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos:pos + n])), masked, pos + n


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


def tiny_png(seed: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (seed % 256, 7, 7)).save(buf, format="PNG")
    return buf.getvalue()


class FakeComfy:
    """with FakeComfy() as fake: ... fake.url ...; knobs: ws (False: /ws answers 404),
    ws_drop_after (close the socket after that many messages), fail_class (that node raises),
    reject (a 400 answer body for /prompt), history_messages (False: /history keeps no status
    messages, so errors are only seen on the websocket), image (a function (prompt, seed) -> PNG
    bytes for SaveImage; default tiny_png(seed)), save_format (SaveImage writes that format, e.g.
    "webp", with its extension), die_after (accept that many prompts, then "crash" when the next
    one arrives: it is queued but never run, the socket and the port close), run_delay (seconds
    each prompt "runs"), chatter (while it runs, a progress message every that many seconds),
    bad_answers ({path: "html"}: a web page instead of JSON; {path: "cut"}: the answer breaks off).
    `python fake_comfy.py --port P [...]` serves until killed and writes its arguments to
    $FAKE_COMFY_ARGV, so it can stand in for ComfyUI's main.py."""

    def __init__(self, object_info=None, ws=True, ws_drop_after=None, fail_class=None, reject=None,
                 history_delay=0.05, port=0, history_messages=True, image=None, die_after=None, run_delay=0.0,
                 save_format=None, chatter=None, bad_answers=None):
        self.object_info = object_info or fake_object_info()
        self.ws, self.ws_drop_after, self.fail_class, self.reject = ws, ws_drop_after, fail_class, reject
        self.history_delay, self.history_messages = history_delay, history_messages
        self.image = image or (lambda prompt, seed: tiny_png(seed))
        self.die_after, self.run_delay, self.chatter = die_after, run_delay, chatter
        self.save_format, self.bad_answers = save_format, bad_answers or {}
        self.dead = False
        self.prompts, self.uploads, self.history, self.images = [], {}, {}, {}
        self.ws_clients, self.pongs, self.unmasked_frames, self.ws_connects = {}, 0, 0, 0
        self.pong_payloads, self.interrupts = [], 0
        self.jobs = queue.Queue()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        threading.Thread(target=self._worker, daemon=True).start()
        return self

    def __exit__(self, *exc):
        was_dead, self.dead = self.dead, True  # every handler thread (websockets too) ends
        self.jobs.put(None)
        if not was_dead:
            self.httpd.shutdown()
        self.httpd.server_close()

    def die(self):
        """Crash: stop running prompts, drop websockets, stop listening (from a handler thread)."""
        self.dead = True
        self.jobs.put(None)
        threading.Thread(target=lambda: (self.httpd.shutdown(), self.httpd.server_close()), daemon=True).start()

    def send(self, client_id, kind, data):
        q = self.ws_clients.get(client_id)
        if q is not None:
            q.put(json.dumps({"type": kind, "data": data}))

    def _worker(self):
        while (job := self.jobs.get()) is not None:
            self._execute(*job)

    def _execute(self, prompt_id, prompt, client_id):
        msgs = []

        def send(kind, data):
            data = {**data, "prompt_id": prompt_id}
            msgs.append([kind, data])
            self.send(client_id, kind, data)
        send("execution_start", {})
        end = time.monotonic() + self.run_delay
        while time.monotonic() < end:
            if self.dead:
                return
            if self.chatter:
                send("progress", {"value": 0, "max": 1, "node": None})
            time.sleep(min(self.chatter or 0.02, max(0.0, end - time.monotonic())))
        outputs = {}
        for nid in sorted(prompt, key=lambda k: int(k) if k.isdigit() else 0):
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
            if node["class_type"] == "SaveImage":
                seed = next((n["inputs"].get("seed", 0) for n in prompt.values() if n["class_type"] == "KSampler"), 0)
                name = f"ComfyUI_{len(self.images):05d}_.{self.save_format or 'png'}"
                self.images[name] = self._encode(self.image(prompt, seed))
                outputs[nid] = {"images": [{"filename": name, "subfolder": "", "type": "output"}]}
                send("executed", {"node": nid, "display_node": nid, "output": outputs[nid]})
        else:
            send("execution_success", {})
        ok = msgs[-1][0] == "execution_success"
        time.sleep(self.history_delay)  # ComfyUI writes history just after execution_success
        self.history[prompt_id] = {"prompt": [0, prompt_id, prompt, {}, []], "outputs": outputs, "status": {
            "status_str": "success" if ok else "error", "completed": ok,
            "messages": msgs if self.history_messages else []}}
        self.send(client_id, "executing", {"node": None, "prompt_id": prompt_id})


    def _encode(self, png: bytes) -> bytes:
        if not self.save_format:
            return png
        from PIL import Image
        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).save(buf, format=self.save_format)
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeComfy

    def log_message(self, *args):
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _bad_answer(self, path) -> bool:
        how = self.fake.bad_answers.get(path)
        if how is None:
            return False
        body = b"<!doctype html><html><body>Welcome to nginx!</body></html>" if how == "html" else b'{"KSampler": '
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if how == "html" else "application/json")
        self.send_header("Content-Length", str(len(body) if how == "html" else 1000))  # "cut": 1000 promised
        self.end_headers()
        self.wfile.write(body)
        return True

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if self._bad_answer(u.path):
            return
        if u.path == "/object_info":
            return self._json(self.fake.object_info)
        if u.path == "/ws":
            return self._websocket(q.get("clientId", ""))
        if u.path.startswith("/history/"):
            pid = u.path.split("/", 2)[2]
            return self._json({pid: self.fake.history[pid]} if pid in self.fake.history else {})
        if u.path == "/view" and q.get("filename") in self.fake.images:
            body = self.fake.images[q["filename"]]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        self._json({"error": "not found"}, 404)

    def do_POST(self):
        if self.path in self.fake.bad_answers:
            self._body()
            return self._bad_answer(self.path)
        if self.path == "/upload/image":
            msg = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + self._body())
            parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            image = parts["image"]
            self.fake.uploads[image.get_filename()] = image.get_payload(decode=True)
            return self._json({"name": image.get_filename(), "subfolder": "", "type": "input"})
        if self.path == "/interrupt":
            self.fake.interrupts += 1
            return self._json({})
        if self.path == "/prompt":
            data = json.loads(self._body())
            if self.fake.reject is not None:
                return self._json(self.fake.reject, 400)
            unknown = [n["class_type"] for n in data["prompt"].values() if n["class_type"] not in self.fake.object_info]
            if unknown:
                return self._json({"error": {"type": "invalid_prompt", "message": f"Cannot execute because node "
                                             f"{unknown[0]} does not exist.", "details": ""}, "node_errors": {}}, 400)
            pid = str(uuid.uuid4())
            if self.fake.die_after is not None and len(self.fake.prompts) >= self.fake.die_after:
                self.fake.prompts.append(data["prompt"])
                self._json({"prompt_id": pid, "number": len(self.fake.prompts), "node_errors": {}})
                return self.fake.die()  # queued, never run: the client learns it when the server is gone
            self.fake.prompts.append(data["prompt"])
            self.fake.jobs.put((pid, data["prompt"], data.get("client_id")))
            return self._json({"prompt_id": pid, "number": len(self.fake.prompts), "node_errors": {}})
        self._json({"error": "not found"}, 404)

    def _websocket(self, client_id):
        if not self.fake.ws:
            return self._json({"error": "no websocket here"}, 404)
        self.fake.ws_connects += 1
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(self.headers["Sec-WebSocket-Key"]))
        self.end_headers()
        self.wfile.flush()
        out = self.fake.ws_clients[client_id] = queue.Queue()
        sock, buf, sent = self.connection, b"", 0
        status = json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                         "sid": client_id}})
        half = len(status) // 2  # a fragmented text message, a ping and a binary preview frame first
        sock.sendall(server_frame(TEXT, status[:half].encode(), fin=False) + server_frame(0, status[half:].encode())
                     + server_frame(PING, b"hi") + server_frame(BINARY, b"\x00\x00\x00\x01preview"))
        while not self.fake.dead:
            try:
                msg = out.get(timeout=0.02)
                if self.fake.ws_drop_after is not None and sent >= self.fake.ws_drop_after:
                    self.fake.ws_clients.pop(client_id, None)
                    return  # a broken connection: no close frame
                sock.sendall(server_frame(TEXT, msg.encode()))
                sent += 1
            except queue.Empty:
                pass
            if select.select([sock], [], [], 0)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while (frame := client_frame(buf)) is not None:
                    opcode, payload, masked, size = frame
                    buf = buf[size:]
                    self.fake.unmasked_frames += not masked
                    if opcode == PONG:
                        self.fake.pongs += 1
                        self.fake.pong_payloads.append(payload)
                    elif opcode == CLOSE:
                        sock.sendall(server_frame(CLOSE, payload[:2]))
                        self.fake.ws_clients.pop(client_id, None)
                        return



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
