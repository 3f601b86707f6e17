"""Start a ComfyUI checkout headless on loopback, for as long as a `with` block runs.

    with start_server("~/ComfyUI", python="~/ComfyUI/venv/bin/python") as server:
        server.client.queue_prompt(...)

The server's output goes to a log file; when it does not come up, the error shows the end of
that log (a missing module, a port in use, a node pack crashing on import, ...).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .comfy import ComfyClient, ComfyError, no_gpu_hint


class ServerStartError(ComfyError):
    """ComfyUI exited or did not answer while starting."""


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: str
    client: ComfyClient
    started_in: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guess_python(comfyui_path: str) -> str:
    """ComfyUI's own interpreter when it sits in a usual place (venv, .venv, the portable build's
    python_embeded), else the one running this."""
    root = os.path.abspath(os.path.expanduser(comfyui_path))
    for rel in ("venv/bin/python", ".venv/bin/python", "venv/Scripts/python.exe", ".venv/Scripts/python.exe",
                "../python_embeded/python.exe"):
        p = os.path.normpath(os.path.join(root, rel))
        if os.path.isfile(p):
            return p
    return sys.executable


def log_tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def _hint(tail: str) -> str:
    if "ModuleNotFoundError" in tail or "No module named" in tail:
        return ("\nA module is missing: is --python the Python of your ComfyUI install (its venv, or "
                "python_embeded on Windows)?")
    if "address already in use" in tail.lower() or "Errno 98" in tail:
        return "\nThe port is taken: pick another one, or leave it out to use a free one."
    return no_gpu_hint(tail)


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def start_server(comfyui_path, python: str = sys.executable, port: int | None = None, extra_args=(),
                 env: dict | None = None, *, log_path: str | None = None, timeout: float = 300.0):
    """Run `python main.py --listen 127.0.0.1 --port P [extra_args]` in the checkout and yield a
    Server once GET /object_info answers; the server is stopped (terminate, then kill) on exit.
    Pass "--cpu" in extra_args to force the CPU."""
    root = os.path.abspath(os.path.expanduser(os.fspath(comfyui_path)))
    if not os.path.isfile(os.path.join(root, "main.py")):
        raise ServerStartError(f"{root} has no main.py: give the ComfyUI folder itself (the one with "
                               "main.py, custom_nodes/ and models/).")
    port = port or free_port()
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="comfyui-", suffix=".log")
        os.close(fd)
    cmd = [python, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           *extra_args]
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=full_env)
        except OSError as e:
            raise ServerStartError(f"cannot run {python}: {e}. Pass the Python of your ComfyUI "
                                   "install with --python.") from None
    url = f"http://127.0.0.1:{port}"
    client = ComfyClient(url)

    def alive():
        if process.poll() is not None:
            tail = log_tail(log_path)
            raise ServerStartError(f"ComfyUI exited while starting (exit code {process.returncode}). "
                                   f"Last lines of {log_path}:\n{tail}{_hint(tail)}")
    try:
        t0 = time.monotonic()
        try:
            client.wait_ready(timeout, alive=alive)
        except ServerStartError:
            raise
        except ComfyError:
            tail = log_tail(log_path)
            raise ServerStartError(f"ComfyUI did not answer on {url} within {timeout:.0f} s. Last lines of "
                                   f"{log_path}:\n{tail}{_hint(tail)}") from None
        yield Server(url, process, log_path, client, time.monotonic() - t0)
    finally:
        client.close()
        stop(process)
