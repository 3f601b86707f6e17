"""A small stdlib client for a ComfyUI server: object_info, uploads, prompts, progress, results.

Progress and completion come over the /ws websocket; if it cannot be opened or breaks, the
client polls /history/<prompt_id> instead. While listening it also checks /history whenever the
socket is quiet, so a message lost before the socket opened cannot hang the run.
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ..errors import F2DError
from .websocket import WebSocket, WebSocketError


class ComfyError(F2DError):
    """The ComfyUI server is unreachable or answered with an error."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400: the workflow failed ComfyUI's validation."""

    def __init__(self, answer: dict):
        self.answer = answer
        err, node_errors = answer.get("error") or {}, answer.get("node_errors") or {}
        lines = [f"ComfyUI rejected the workflow: {_short(err.get('message', 'invalid prompt'))}"]
        for nid, ne in node_errors.items():
            for e in ne.get("errors", []):
                lines.append(f"  node {nid} ({ne.get('class_type', '?')}): {e.get('message', '')}: "
                             f"{_short(e.get('details', ''))}")
        if not node_errors and err.get("details"):
            lines.append(f"  {_short(err['details'])}")
        super().__init__("\n".join(lines))


class ExecutionFailed(ComfyError):
    """A node raised while ComfyUI ran the prompt (an execution_error message)."""

    def __init__(self, data: dict):
        self.node_id, self.node_type = data.get("node_id"), data.get("node_type")
        self.exception_type = str(data.get("exception_type", "")).rsplit(".", 1)[-1]
        self.exception_message = str(data.get("exception_message", "")).strip()
        super().__init__(f"ComfyUI failed in node {self.node_id} ({self.node_type}): "
                         f"{self.exception_type}: {self.exception_message}")


def _short(text, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + " ..."


def _multipart(fields: dict, file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                 + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class ComfyClient:
    def __init__(self, url: str, timeout: float = 60.0):
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ComfyError(f"{url!r} is not a ComfyUI server address; expected e.g. http://127.0.0.1:8188")
        self.url = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}"
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self.ws: WebSocket | None = None
        self._object_info = None

    # -- HTTP -------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ComfyError(f"cannot reach ComfyUI at {self.url} ({reason}). Is it running, "
                             "and is this its address?") from None
        except http.client.HTTPException as e:  # IncompleteRead, BadStatusLine, ...: a broken answer
            raise ComfyError(f"{self.url}{path} broke off its answer to {method} ({type(e).__name__}: {e}). "
                             "Is this ComfyUI's address, and is it still running?") from None

    def _json(self, path: str, body: bytes):
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ComfyError(f"{self.url}{path} answered with something that is not JSON: is this ComfyUI's "
                             f"address? (the answer began {_short(body.decode(errors='replace'), 80)!r})") from None

    def get_json(self, path: str, timeout: float | None = None):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ComfyError(f"ComfyUI at {self.url} answered {status} to GET {path}: "
                             f"{_short(body.decode(errors='replace'))}")
        return self._json(path, body)

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
        body, ctype = _multipart(fields, "image", filename, data)
        status, answer = self.request("POST", "/upload/image", body, ctype)
        if status != 200:
            raise ComfyError(f"ComfyUI refused the upload of {filename} ({status}): "
                             f"{_short(answer.decode(errors='replace'))}")
        info = self._json("/upload/image", answer)
        if not isinstance(info, dict) or not info.get("name"):
            raise ComfyError(f"{self.url}/upload/image answered {_short(info, 80)!r} to the upload of {filename}, "
                             "not ComfyUI's {\"name\": ...}: is this ComfyUI's address?")
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue_prompt(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        status, answer = self.request("POST", "/prompt", body, "application/json")
        try:
            data = json.loads(answer)
        except json.JSONDecodeError:
            data = {"error": {"message": answer.decode(errors="replace")}}
        if status == 400:
            raise PromptRejected(data)
        if status != 200 or "prompt_id" not in data:
            raise ComfyError(f"ComfyUI answered {status} to POST /prompt: {_short(data)}")
        return data["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, body = self.request("GET", f"/view?{q}")
        if status != 200:
            raise ComfyError(f"ComfyUI answered {status} for image {filename} ({type}/{subfolder})")
        return body

    def interrupt(self) -> None:
        """Ask the server to stop the running prompt (best effort)."""
        try:
            self.request("POST", "/interrupt", b"{}", "application/json", timeout=5)
        except ComfyError:
            pass

    # -- progress and completion --------------------------------------------------------------
    def open_ws(self) -> bool:
        """Connect the progress websocket (call before queueing); False if it is unavailable."""
        u = urllib.parse.urlsplit(self.url)
        scheme = "wss" if u.scheme == "https" else "ws"
        try:
            self.ws = WebSocket.connect(f"{scheme}://{u.netloc}{u.path}/ws?clientId={self.client_id}", timeout=10)
            return True
        except WebSocketError:
            self.ws = None
            return False

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def wait(self, prompt_id: str, on_event=None, poll: float = 0.25, timeout: float | None = None) -> dict:
        """Block until the prompt finished; returns its /history entry. `on_event(type, data)` gets the
        websocket messages of this prompt. Raises ExecutionFailed for an execution_error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.ws is not None:
                try:
                    if self._listen(prompt_id, on_event, quiet=poll * 4, deadline=deadline):
                        break  # finished: the history entry is written right after
                except WebSocketError:
                    self.ws.close(wait=False)  # a broken socket is closed, not dropped open
                    self.ws = None  # fall back to polling from here on
            entry = self.history(prompt_id)
            if entry and self._finished(entry):
                return entry
            if deadline is not None and time.monotonic() > deadline:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            if self.ws is None:
                time.sleep(poll)
        for _ in range(600):  # execution_success comes a moment before the history entry
            entry = self.history(prompt_id)
            if entry and self._finished(entry):
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
            try:
                msg = self.ws.recv(timeout=left)
            except TimeoutError:
                return False
            if msg is None:
                raise WebSocketError("websocket closed")
            if not isinstance(msg, str):
                continue  # binary preview images
            try:
                m = json.loads(msg)
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


def output_images(entry: dict, prefer: str = "output") -> list[dict]:
    """The images of a history entry ({filename, subfolder, type}), saved ones (type output) first
    choice; previews only when nothing was saved."""
    images = [img for out in (entry.get("outputs") or {}).values() for img in out.get("images") or []]
    saved = [i for i in images if i.get("type") == prefer]
    return saved or images

