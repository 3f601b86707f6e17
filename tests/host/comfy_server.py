"""A headless ComfyUI server for tests, driven over its HTTP API with the standard library.

Everything it reads or writes is in a temp dir: models and node packs are registered through
an extra_model_paths yaml (the mechanism users have), output/input/temp/user folders and the
database are passed on the command line, and only the packs given are loaded (the checkout's
own custom_nodes are disabled)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

MODEL_FOLDERS = ("checkpoints", "face2diffusion", "insightface", "text_encoders")


class ComfyHostError(RuntimeError):
    """The server did not start, or a node pack did not load."""


class PromptError(RuntimeError):
    """ComfyUI refused a prompt (kind "validation", HTTP 400) or a node raised while running it
    (kind "execution"). `details` is ComfyUI's error object; str() carries its message."""

    def __init__(self, kind: str, message: str, details: dict):
        super().__init__(message)
        self.kind, self.details = kind, details


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _yaml_str(s) -> str:
    return json.dumps(str(s))  # a JSON string is a valid YAML scalar, whatever the path holds


class ComfyServer:
    """`python main.py --cpu` of the checkout at `comfy_path`, with:
    - `models_dir` registered for MODEL_FOLDERS (ahead of the checkout's own models),
    - `custom_nodes` {dir name: pack dir} linked into one custom_nodes dir and whitelisted,
    - output/input/temp/user folders under `home`."""

    def __init__(self, comfy_path: Path, home: Path, models_dir: Path | None = None,
                 custom_nodes: dict | None = None, python: str = sys.executable, extra_args=()):
        self.comfy_path, self.home, self.python = Path(comfy_path), Path(home), python
        self.models_dir = Path(models_dir) if models_dir else None
        self.custom_nodes = {k: Path(v) for k, v in (custom_nodes or {}).items()}
        self.extra_args = list(extra_args)
        self.output_dir, self.input_dir = self.home / "output", self.home / "input"
        self.custom_nodes_dir = self.home / "custom_nodes"
        self.log_path = self.home / "server.log"
        self.port, self.proc = None, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------
    def _write_config(self) -> Path:
        self.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
        for name, target in self.custom_nodes.items():
            link = self.custom_nodes_dir / name
            if not link.exists():
                link.symlink_to(target.resolve(), target_is_directory=True)
        lines = ["f2d_tests:", "  is_default: true", f"  custom_nodes: {_yaml_str(self.custom_nodes_dir)}"]
        if self.models_dir:
            lines.insert(1, f"  base_path: {_yaml_str(self.models_dir)}")
            lines += [f"  {folder}: {_yaml_str(folder)}" for folder in MODEL_FOLDERS]
        path = self.home / "extra_model_paths.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 180):
        for d in ("output", "input", "temp", "user"):
            (self.home / d).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--extra-model-paths-config", str(self._write_config()),
               "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
               "--temp-directory", str(self.home / "temp"), "--user-directory", str(self.home / "user"),
               "--database-url", f"sqlite:///{self.home / 'user' / 'comfyui.db'}",
               "--disable-all-custom-nodes"]  # the checkout's own packs stay out of the tests
        if self.custom_nodes:
            cmd += ["--whitelist-custom-nodes", *self.custom_nodes]
        cmd += self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyHostError(f"ComfyUI exited with code {self.proc.returncode} while starting.\n"
                                     f"{self.log_tail()}")
            try:
                self._object_info = self.get("/object_info", timeout=30)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyHostError(f"ComfyUI did not answer /object_info within {timeout:.0f} s.\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    # --- HTTP -----------------------------------------------------------------------------
    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60):
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def get(self, path: str, timeout: float = 60):
        return json.loads(self._request(path, timeout=timeout))

    def post(self, path: str, body: dict, timeout: float = 60):
        return json.loads(self._request(path, json.dumps(body).encode(),
                                        {"Content-Type": "application/json"}, timeout) or b"null")

    def object_info(self, refresh: bool = False) -> dict:
        if refresh:
            self._object_info = self.get("/object_info")
        return self._object_info

    def require_nodes(self, node_ids):
        """Raise ComfyHostError with the import error from the server log unless every id is
        registered. ComfyUI only logs a pack that fails to import and starts anyway."""
        missing = [n for n in node_ids if n not in self.object_info()]
        if missing:
            raise ComfyHostError(f"{', '.join(missing)} not in /object_info: a node pack did not load.\n"
                                 f"{self.pack_errors() or self.log_tail()}")

    def pack_errors(self) -> str:
        return "\n".join(e for e in map(self.pack_error, self.custom_nodes) if e)

    def pack_error(self, name: str) -> str:
        """What the server log says about pack `name` not loading, with a traceback ("" if
        nothing). ComfyUI logs one for an import error, but only the message for an error
        raised in comfy_entrypoint: then the import is repeated in a fresh process."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        path = str(self.custom_nodes_dir / name)
        marks = ("Cannot import", "Error while calling comfy_entrypoint", "Skip ")
        out = []
        for i, line in enumerate(lines):
            if path not in line or not any(m in line for m in marks):
                continue
            start = i
            if "Cannot import" in line:  # preceded by its traceback
                start = next((j for j in range(i - 1, max(-1, i - 300), -1)
                              if lines[j].startswith("Traceback (most recent call last)")), i)
            out += lines[start:i + 1]
            if start == i:
                out.append(f"The import of {name} repeated outside the server:\n"
                           f"{self.import_traceback(self.custom_nodes[name])}")
        return "\n".join(out)

    def import_traceback(self, pack_dir: Path) -> str:
        """Traceback of importing `pack_dir` and calling its comfy_entrypoint in a fresh
        process with ComfyUI on sys.path ("(imports fine)" if it does)."""
        tests_dir = Path(__file__).resolve().parents[1]
        code = (f"import sys; sys.path.insert(0, {str(tests_dir)!r})\n"
                f"from {__package__}.comfy_inprocess import import_comfy, load_pack, pack_nodes\n"
                f"import_comfy({str(self.comfy_path)!r})\n"
                f"pack_nodes(load_pack({str(pack_dir)!r}, 'f2d_import_check'))\n")
        run = subprocess.run([self.python, "-c", code], cwd=self.comfy_path, capture_output=True, text=True,
                             timeout=300)
        if run.returncode == 0:
            return "(imports fine)"
        err = run.stderr.splitlines()  # ComfyUI's import warnings come first
        start = min((i for i, line in enumerate(err) if line.startswith("Traceback")), default=0)
        return "\n".join(err[start:])

    def queue(self, prompt: dict, timeout: float = 300) -> dict:
        """Run an API-format prompt; returns its outputs ({node id: {"images": [...], ...}}).
        Raises PromptError when ComfyUI refuses or a node fails, TimeoutError after `timeout`."""
        return self.run(prompt, timeout)["outputs"]

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Like queue(), but returns the whole /history entry (outputs, status, messages)."""
        try:
            pid = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
        except urllib.error.HTTPError as e:
            details = json.loads(e.read() or b"{}")
            err = details.get("error", {})
            node_errors = "; ".join(f"node {nid} ({ne.get('class_type')}): " +
                                    ", ".join(f"{x.get('message')}: {x.get('details')}" for x in ne.get("errors", []))
                                    for nid, ne in details.get("node_errors", {}).items())
            raise PromptError("validation", f"{err.get('message', e)} {err.get('details', '')} {node_errors}".strip(),
                              details) from None
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{pid}").get(pid)
            if entry and entry.get("status", {}).get("completed") is not None:
                break
            if self.proc.poll() is not None:
                raise ComfyHostError(f"ComfyUI died while running a prompt.\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.post("/interrupt", {})
                raise TimeoutError(f"prompt {pid} not finished after {timeout:.0f} s.\n{self.log_tail()}")
            time.sleep(0.1)
        for event, data in entry["status"].get("messages", []):
            if event == "execution_error":
                raise PromptError("execution", f"{data['node_type']} (node {data['node_id']}) raised "
                                  f"{data['exception_type']}: {data['exception_message']}", data)
        if entry["status"].get("status_str") != "success":
            raise PromptError("execution", f"prompt ended with status {entry['status']}", entry["status"])
        return entry

    def upload(self, image_path, name: str | None = None) -> str:
        """Upload an image into the input folder; returns the name LoadImage takes."""
        image_path = Path(image_path)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"{name or image_path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + image_path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        reply = json.loads(self._request("/upload/image", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]

    def output_files(self, outputs: dict, key: str = "images") -> list:
        """Paths of the files a prompt's outputs list under `key` (SaveImage: "images")."""
        base = {"output": self.output_dir, "input": self.input_dir, "temp": self.home / "temp" / "temp"}
        return [base[f.get("type", "output")] / f.get("subfolder", "") / f["filename"]
                for node_out in outputs.values() for f in node_out.get(key, [])]
