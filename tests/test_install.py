"""Installing the pack leaves the user's onnxruntime build alone (issue 22).

ComfyUI-Manager runs `pip install -r requirements.txt`. Here a plain venv (no system site
packages) holds a stand-in `onnxruntime-gpu` (a wheel built in the test: the real one is 300 MB
and cannot be fetched offline), then pip really installs the pack's requirements.txt, and
pyproject.toml's dependencies, from a local folder offering what PyPI offers for those names:
stand-in wheels of numpy, safetensors and Pillow (dependency-free, as the real ones are) and a
stand-in CPU `onnxruntime`, which pip would pick up if the pack asked for it. The control case,
the old list with `onnxruntime>=1.16`, shows the harm the test is there to catch: the CPU build
is installed over the GPU one and the providers change.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from registry_pack import ONNXRUNTIME_NAME, REPO, pyproject_dependencies, requirement_names

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_PROVIDERS = ["AzureExecutionProvider", "CPUExecutionProvider"]


def wheel(folder: Path, name: str, version: str, files: dict) -> Path:
    """A minimal pure-Python wheel (METADATA, WHEEL, RECORD) holding `files` {path: text}."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: f2d-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    out = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def onnxruntime_module(providers, build):
    return {"onnxruntime/__init__.py": f"def get_available_providers():\n    return {providers!r}\n",
            "onnxruntime/capi/build.txt": build}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """What an index offers for the names involved (all stand-ins, see the module docstring)."""
    d = tmp_path_factory.mktemp("wheelhouse")
    for name, version, module in (("numpy", "2.3.4", "numpy"), ("safetensors", "0.6.2", "safetensors"),
                                  ("pillow", "11.3.0", "PIL")):
        wheel(d, name, version, {f"{module}/__init__.py": f"__version__ = {version!r}\n"})
    wheel(d, "onnxruntime", "1.32.0", onnxruntime_module(CPU_PROVIDERS, "cpu build 1.32.0\n"))
    gpu = tmp_path_factory.mktemp("user") / "gpu"
    gpu.mkdir()
    return d, wheel(gpu, "onnxruntime-gpu", "1.31.1", onnxruntime_module(GPU_PROVIDERS, "gpu build 1.31.1\n"))


def venv_with_gpu_build(tmp_path, gpu_wheel) -> tuple[list, Path]:
    """(pip command for a fresh plain venv, its python) after the user installed onnxruntime-gpu."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    # this interpreter's pip, aimed at the venv (--python): the venv needs no pip of its own
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "--no-input",
           "--no-cache-dir"]
    subprocess.run(pip + ["install", "-q", "--no-index", "--no-deps", str(gpu_wheel)], check=True)
    return pip, python


def onnxruntime_state(pip, python) -> dict:
    listed = json.loads(subprocess.run(pip + ["list", "--format", "json"], check=True, capture_output=True,
                                       text=True).stdout)
    probe = ("import json, onnxruntime, pathlib; print(json.dumps([onnxruntime.get_available_providers(), "
             "(pathlib.Path(onnxruntime.__file__).parent / 'capi' / 'build.txt').read_text()]))")
    providers, build = json.loads(subprocess.run([str(python), "-c", probe], check=True, capture_output=True,
                                                 text=True).stdout)
    return {"distributions": sorted(d["name"].lower() for d in listed if ONNXRUNTIME_NAME.match(d["name"].lower())),
            "installed": sorted(d["name"].lower() for d in listed), "providers": providers, "build": build}


def install(pip, requirements: Path, wheelhouse: Path):
    done = subprocess.run(pip + ["install", "--no-index", "--find-links", str(wheelhouse), "-r", str(requirements)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pip_install_of_requirements_txt_leaves_onnxruntime_gpu_the_only_build(tmp_path, wheelhouse):
    house, gpu = wheelhouse
    pip, python = venv_with_gpu_build(tmp_path, gpu)
    before = onnxruntime_state(pip, python)
    assert before["providers"] == GPU_PROVIDERS
    install(pip, REPO / "requirements.txt", house)
    after = onnxruntime_state(pip, python)
    assert {"numpy", "safetensors", "pillow"} <= set(after["installed"])  # pip did install the list
    assert after["distributions"] == ["onnxruntime-gpu"]
    assert (after["providers"], after["build"]) == (GPU_PROVIDERS, "gpu build 1.31.1\n")


def test_pip_install_of_the_pyproject_dependencies_leaves_onnxruntime_gpu_alone(tmp_path, wheelhouse):
    house, gpu = wheelhouse
    deps = pyproject_dependencies((REPO / "pyproject.toml").read_text())
    assert deps == requirement_names((REPO / "requirements.txt").read_text())  # the two lists agree
    import tomllib
    reqs = tmp_path / "pyproject-deps.txt"
    reqs.write_text("\n".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]))
    pip, python = venv_with_gpu_build(tmp_path, gpu)
    install(pip, reqs, house)
    after = onnxruntime_state(pip, python)
    assert after["distributions"] == ["onnxruntime-gpu"] and after["providers"] == GPU_PROVIDERS


def test_the_old_list_with_onnxruntime_would_have_replaced_the_gpu_build(tmp_path, wheelhouse):
    """The control: what this file guards against does happen in this setup."""
    house, gpu = wheelhouse
    old = tmp_path / "requirements-old.txt"
    old.write_text((REPO / "requirements.txt").read_text() + "onnxruntime>=1.16\n")
    pip, python = venv_with_gpu_build(tmp_path, gpu)
    install(pip, old, house)
    after = onnxruntime_state(pip, python)
    assert after["distributions"] == ["onnxruntime", "onnxruntime-gpu"]
    assert after["providers"] == CPU_PROVIDERS and after["build"] == "cpu build 1.32.0\n"


def test_no_shipped_requirement_list_names_any_onnxruntime_build():
    for name in ("requirements.txt", "requirements-dlib.txt"):
        assert not [n for n in requirement_names((REPO / name).read_text()) if ONNXRUNTIME_NAME.match(n)], name
    assert not [n for n in pyproject_dependencies((REPO / "pyproject.toml").read_text()) if ONNXRUNTIME_NAME.match(n)]
