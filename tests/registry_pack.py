"""The registry archive as `comfy node pack` (comfy-cli) builds it, and the registry scanner's rules.

comfy-cli packs git-tracked files minus `.comfyignore`; to pack the working tree as it is (not
the last commit), its tracked and not-ignored files are copied into a fresh git repository first."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What ComfyUI-Manager's registry scanner flags a pack for: process spawning, raw network
# clients, eval/exec, __import__, pip at run time.
SCANNER_RULES = {
    "process spawning": re.compile(r"(?<![\w.])(subprocess|os\.system|os\.popen|os\.spawn\w*|pty\.spawn)\b"
                                   r"|\bmultiprocessing\b"),
    "network client": re.compile(r"\b(urllib|requests|httpx|http\.client|aiohttp\.ClientSession|websocket|"
                                 r"websockets)\b|^\s*(import|from)\s+socket\b"),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
    "__import__": re.compile(r"__import__"),
    # pip invoked from code; a message telling the user what to `pip install` runs nothing
    "pip at run time": re.compile(r"pip\.main\s*\(|\bensurepip\b|[\"']-m[\"']\s*,\s*[\"']pip[\"']"
                                  r"|[\"']pip[\"']\s*,\s*[\"']install[\"']|\bpip\._internal\b"),
}


def comfy_cli() -> str | None:
    exe = Path(sys.executable).with_name("comfy")
    return str(exe) if exe.exists() else shutil.which("comfy")


def pack(workdir: Path) -> Path:
    """node.zip of the working tree, built by comfy-cli in a clean repository under workdir."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True, capture_output=True).stdout
    clone = workdir / "clone"
    for rel in filter(None, tracked.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not shipped
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / rel)
    git = ["git", "-c", "user.name=pack", "-c", "user.email=pack@localhost", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q"], cwd=clone, check=True)
    subprocess.run(git + ["add", "-A"], cwd=clone, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "pack"], cwd=clone, check=True)
    # HOME in the temp dir: comfy-cli keeps its config there; --skip-prompt answers its questions
    env = {"HOME": str(workdir), "PATH": "/usr/bin:/bin:/usr/local/bin", "NO_COLOR": "1"}
    done = subprocess.run([comfy_cli(), "--skip-prompt", "node", "pack"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)
    archive = clone / "node.zip"
    if done.returncode != 0 or not archive.exists():
        raise RuntimeError(f"comfy node pack failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return archive


def flagged_lines(archive: Path) -> list[str]:
    """'path:line: text (rule)' for every line of a shipped Python file that a scanner rule matches."""
    hits = []
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if not name.endswith(".py"):
                continue
            for no, line in enumerate(z.read(name).decode("utf-8").splitlines(), 1):
                for rule, pattern in SCANNER_RULES.items():
                    if pattern.search(line):
                        hits.append(f"{name}:{no}: {line.strip()} ({rule})")
    return hits


def bandit() -> list[str] | None:
    """The command that runs bandit (a test dependency), or None when it is not installed."""
    return [sys.executable, "-m", "bandit"] if importlib.util.find_spec("bandit") else None


def bandit_findings(archive: Path, workdir: Path) -> list[str]:
    """'path:line: TEST_ID text (severity)' for every finding of bandit's default profile (no config,
    every test, every severity and confidence: the registry flags a version on any) in the unpacked archive."""
    unpacked = workdir / "unpacked"
    with zipfile.ZipFile(archive) as z:
        z.extractall(unpacked)
    done = subprocess.run(bandit() + ["-r", str(unpacked), "-f", "json", "-q"], capture_output=True, text=True,
                          timeout=300)
    report = json.loads(done.stdout)
    if report["errors"]:  # a file bandit could not parse is a file it did not check
        raise RuntimeError(f"bandit could not scan: {report['errors']}")
    return [f"{Path(r['filename']).relative_to(unpacked)}:{r['line_number']}: {r['test_id']} {r['issue_text']} "
            f"({r['issue_severity']})" for r in report["results"]]


# every onnxruntime build ships the same `onnxruntime` module (onnxruntime, -gpu, -directml, -rocm,
# -migraphx, -openvino, -silicon, -qnn, -webgpu, -windowsml, ...): a pack must list none (issue 22)
ONNXRUNTIME_NAME = re.compile(r"^onnxruntime([-_.].*)?$")


def requirement_names(text: str) -> list[str]:
    """Canonical distribution names of a requirements file's lines (comments and options skipped)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(canonicalize_name(Requirement(line).name))
    return names


def pyproject_dependencies(text: str) -> list[str]:
    import tomllib
    return requirement_names("\n".join(tomllib.loads(text)["project"].get("dependencies", [])))
