"""A client for a ComfyUI server, the way ComfyUI's own script_examples/websockets_api_example.py
talks to it: `requests` for HTTP (object_info, uploads, prompts, history, images), the
`websocket-client` library for the /ws progress feed.

If the websocket cannot be opened or breaks, the client polls /history/<prompt_id> instead.
While listening it also checks /history whenever the socket is quiet, so a message lost before
the socket opened cannot hang the run.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from urllib.parse import quote, urlsplit

import requests
import websocket

from ..errors import F2DError


class ComfyError(F2DError):
    """The ComfyUI server is unreachable or answered with an error."""


class PromptRejected(ComfyError):
    """ComfyUI's validation refused the workflow, or part of it: POST /prompt answered 400, or 200
    with node_errors (it queued only the outputs that passed, which is not the job asked for)."""

    def __init__(self, answer: dict, queued: bool = False):
        self.answer = answer
        err, node_errors = answer.get("error") or {}, answer.get("node_errors") or {}
        if queued:
            head = ("ComfyUI rejected part of the workflow (it would have run only the rest, so it was taken "
                    "off the queue and nothing was saved)")
        else:
            head = f"ComfyUI rejected the workflow: {_short(err.get('message', 'invalid prompt'))}"
        lines = [head]
        for nid, ne in node_errors.items():
            for e in ne.get("errors", []):
                lines.append(f"  node {nid} ({ne.get('class_type', '?')}): {e.get('message', '')}: "
                             f"{_short(e.get('details', ''))}")
        if not node_errors and err.get("details"):
            lines.append(f"  {_short(err['details'])}")
        super().__init__("\n".join(lines))


# What torch says when ComfyUI, started without --cpu, asks a torch with no usable GPU for one: a
# CPU-only build (ComfyUI 0.3.64 and 0.8.0 stop at start with it), or a CUDA build without a driver
NO_GPU_SIGNS = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver")
NO_GPU_HINT = ("ComfyUI's torch cannot use a GPU on this machine (a CPU-only torch, or no NVIDIA driver), and "
               "ComfyUI uses the GPU unless started with --cpu. Add --cpu to the command to run on the CPU "
               "(slower; for a GPU, install a CUDA build of torch in ComfyUI's python).")


def no_gpu_hint(text: str) -> str:
    """NO_GPU_HINT on a line of its own when `text` (a log, an error) shows torch finding no GPU."""
    return f"\n{NO_GPU_HINT}" if any(sign in text for sign in NO_GPU_SIGNS) else ""


class ExecutionFailed(ComfyError):
    """A node raised while ComfyUI ran the prompt (an execution_error message)."""

    def __init__(self, data: dict):
        self.node_id, self.node_type = data.get("node_id"), data.get("node_type")
        self.exception_type = str(data.get("exception_type", "")).rsplit(".", 1)[-1]
        self.exception_message = str(data.get("exception_message", "")).strip()
        super().__init__(f"ComfyUI failed in node {self.node_id} ({self.node_type}): "
                         f"{self.exception_type}: {self.exception_message}{no_gpu_hint(self.exception_message)}")


def _short(text, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + " ..."


# what matters in a requests error, inside its chain of wrappers
_REASONS = (r"\[Errno -?\d+\][^'\")]*", r"IncompleteRead\(\d+ bytes read, \d+ more expected\)",
            r"Remote end closed connection without response")


def _reason(e: Exception) -> str:
    """The words that say what happened ("[Errno 111] Connection refused"), not the wrapper chain."""
    for pattern in _REASONS:
        found = re.search(pattern, str(e))
        if found:
            return found.group(0).strip()
    return _short(e, 160)


class ComfyClient:
    def __init__(self, url: str, timeout: float = 60.0):
        u = urlsplit(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ComfyError(f"{url!r} is not a ComfyUI server address; expected e.g. http://127.0.0.1:8188")
        self.url = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}"
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self.session = requests.Session()
        self.ws: websocket.WebSocket | None = None
        self.running: str | None = None  # the prompt this client queued and has not seen finish
        self._object_info = None

    # -- HTTP -------------------------------------------------------------------------------
    def request(self, method: str, path: str, timeout: float | None = None, **kwargs) -> requests.Response:
        """One HTTP request (kwargs as for requests: json=, params=, files=, data=); a ComfyError
        when nothing answers or the answer breaks off."""
        try:
            return self.session.request(method, self.url + path, timeout=timeout or self.timeout, **kwargs)
        except requests.Timeout:
            raise ComfyError(f"ComfyUI at {self.url} did not answer {method} {path} within "
                             f"{timeout or self.timeout:.0f} s. Is it running, and is this its address?") from None
        except requests.ConnectionError as e:
            raise ComfyError(f"cannot reach ComfyUI at {self.url} ({_reason(e)}). Is it running, "
                             "and is this its address?") from None
        except requests.RequestException as e:  # IncompleteRead and the like: a broken answer
            raise ComfyError(f"{self.url}{path} broke off its answer to {method} ({_reason(e)}). "
                             "Is this ComfyUI's address, and is it still running?") from None

    def _json(self, path: str, body: bytes):
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ComfyError(f"{self.url}{path} answered with something that is not JSON: is this ComfyUI's "
                             f"address? (the answer began {_short(body.decode(errors='replace'), 80)!r})") from None

    def get_json(self, path: str, timeout: float | None = None):
        r = self.request("GET", path, timeout=timeout)
        if r.status_code != 200:
            raise ComfyError(f"ComfyUI at {self.url} answered {r.status_code} to GET {path}: {_short(r.text)}")
        return self._json(path, r.content)

    def wait_ready(self, timeout: float = 60.0, alive=None) -> dict:
        """Poll GET /object_info until it answers; `alive()` may raise to stop early (a dead process)."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            if alive is not None:
                alive()
            try:
                self._object_info = self.get_json("/object_info", timeout=30)
                return self._object_info
            except ComfyError as e:
                last = e
            if time.monotonic() > deadline:
                raise ComfyError(f"ComfyUI at {self.url} was not ready after {timeout:.0f} s: {last}")
            time.sleep(0.25)

    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def upload_image(self, data: bytes, filename: str, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload into ComfyUI's input folder; returns the value for LoadImage's `image`."""
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        r = self.request("POST", "/upload/image", data=fields,
                         files={"image": (filename, data, "application/octet-stream")})
        if r.status_code != 200:
            raise ComfyError(f"ComfyUI refused the upload of {filename} ({r.status_code}): {_short(r.text)}")
        info = self._json("/upload/image", r.content)
        if not isinstance(info, dict) or not info.get("name"):
            raise ComfyError(f"{self.url}/upload/image answered {_short(info, 80)!r} to the upload of {filename}, "
                             "not ComfyUI's {\"name\": ...}: is this ComfyUI's address?")
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue_prompt(self, prompt: dict, targets: list[str] | None = None) -> str:
        """Queue the prompt; with `targets` (output node ids) ComfyUI validates and runs only the
        branches those outputs need. Any node error, on 400 or on 200, is a PromptRejected."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if targets:
            body["partial_execution_targets"] = list(targets)
        r = self.request("POST", "/prompt", json=body)
        try:
            data = json.loads(r.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {"error": {"message": r.text}}
        if r.status_code == 400:
            raise PromptRejected(data)
        if r.status_code != 200 or not isinstance(data, dict) or "prompt_id" not in data:
            raise ComfyError(f"ComfyUI answered {r.status_code} to POST /prompt: {_short(data)}")
        if data.get("node_errors"):
            # ComfyUI queues the outputs that passed and drops the rest: that is not what was asked for
            self.cancel(data["prompt_id"])
            raise PromptRejected(data, queued=True)
        self.running = data["prompt_id"]
        return data["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{quote(prompt_id, safe='')}").get(prompt_id)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        r = self.request("GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        if r.status_code != 200:
            raise ComfyError(f"ComfyUI answered {r.status_code} for image {filename} ({type}/{subfolder})")
        return r.content

    def cancel(self, prompt_id: str | None = None) -> None:
        """Take the prompt (default: the one this client is waiting for) off the server's queue, or
        stop it if it is running (best effort). Safe to call from another thread."""
        prompt_id = prompt_id or self.running
        if prompt_id is None:
            return
        # plain requests, not the session: the thread waiting on the prompt may be using that
        for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                requests.post(self.url + path, json=body, timeout=5)
            except requests.RequestException:
                pass

    # -- progress and completion --------------------------------------------------------------
    def open_ws(self) -> bool:
        """Connect the progress websocket (call before queueing); False if it is unavailable."""
        u = urlsplit(self.url)
        scheme = "wss" if u.scheme == "https" else "ws"
        try:
            self.ws = websocket.create_connection(f"{scheme}://{u.netloc}{u.path}/ws?clientId={self.client_id}",
                                                  timeout=10)
            return True
        except (websocket.WebSocketException, OSError):
            self.ws = None
            return False

    def _drop_ws(self) -> None:
        if self.ws is not None:
            self.ws.shutdown()  # a broken socket is closed, not left open
            self.ws = None

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=2)
            finally:
                self.ws = None
        self.session.close()

    def wait(self, prompt_id: str, on_event=None, poll: float = 0.25, timeout: float | None = None) -> dict:
        """Block until the prompt finished; returns its /history entry. `on_event(type, data)` gets the
        websocket messages of this prompt. Raises ExecutionFailed for an execution_error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.ws is not None:
                try:
                    if self._listen(prompt_id, on_event, quiet=poll * 4, deadline=deadline):
                        break  # finished: the history entry is written right after
                except (websocket.WebSocketException, OSError):
                    self._drop_ws()  # fall back to polling from here on
            entry = self.history(prompt_id)
            if entry and self._finished(entry):
                self.running = None
                return entry
            if deadline is not None and time.monotonic() > deadline:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            if self.ws is None:
                time.sleep(poll)
        for _ in range(600):  # execution_success comes a moment before the history entry
            entry = self.history(prompt_id)
            if entry and self._finished(entry):
                self.running = None
                return entry
            time.sleep(0.05)
        raise ComfyError(f"ComfyUI reported prompt {prompt_id} done but /history has no entry for it")

    def _listen(self, prompt_id: str, on_event, quiet: float, deadline: float | None = None) -> bool:
        """Read messages until the prompt ends (True), the socket is quiet for `quiet` s or the
        time.monotonic() `deadline` passes (False), however many messages keep arriving."""
        while True:
            left = quiet if deadline is None else min(quiet, deadline - time.monotonic())
            if left <= 0:
                return False
            self.ws.settimeout(left)
            try:
                opcode, payload = self.ws.recv_data()
            except websocket.WebSocketTimeoutException:
                return False
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise websocket.WebSocketConnectionClosedException("the server closed the websocket")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue  # binary preview images
            try:
                m = json.loads(payload)
                kind, data = m["type"], m.get("data") or {}
            except (ValueError, KeyError, TypeError):
                continue
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "execution_error":
                raise ExecutionFailed(data)
            if kind == "execution_interrupted":
                raise ComfyError(f"the prompt was interrupted in node {data.get('node_id')} ({data.get('node_type')})")
            if on_event is not None and data.get("prompt_id") == prompt_id:
                on_event(kind, data)
            if kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                               and data.get("prompt_id") == prompt_id):
                return True

    @staticmethod
    def _finished(entry: dict) -> bool:
        status = entry.get("status") or {}
        for kind, data in status.get("messages") or []:
            if kind == "execution_error":
                raise ExecutionFailed(data)
            if kind == "execution_interrupted":
                raise ComfyError(f"the prompt was interrupted in node {data.get('node_id')} ({data.get('node_type')})")
        return bool(status.get("completed")) or status.get("status_str") in ("success", "error") or not status
