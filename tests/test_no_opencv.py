"""The node pack runs without OpenCV (issue 15): no shipped file mentions cv2, no runtime
requirement installs it, and photo -> detection -> alignment -> encode -> injection (and the
similarity check) work in a Python where `import cv2` fails.

The run happens in a subprocess that sets sys.modules["cv2"] = None before anything is imported,
which makes every `import cv2` raise ImportError, as in a venv with no OpenCV wheel. Its models are
built here: the synthetic SCRFD-format detector and 68-point model (tests/synthetic_onnx.py), the
colour ArcFace stand-in (tests/recognizer_onnx.py) and randomly initialised MSID and mapping
networks saved as safetensors (real weights cannot be downloaded here; the values do not matter).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import recognizer_onnx as ro
import synthetic_onnx as om
from f2d_core.identity.encoder import load_encoder
from f2d_core.identity.pipeline import encode_images
from f2d_core.faces.detect import load_detector
from f2d_core.models.mapping import MappingNetwork
from f2d_core.models.msid import MSIDEncoder

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import sys
sys.modules["cv2"] = None  # from here on `import cv2` raises ImportError
import importlib, json, pkgutil
from pathlib import Path
repo, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(repo))
import numpy as np
import torch

import f2d_core
shipped = ["f2d_core.errors", "f2d_core.choices"]
for layer in ("faces", "models", "weights", "text", "identity"):
    package = importlib.import_module(f"f2d_core.{layer}")
    shipped += [m.name for m in pkgutil.walk_packages(package.__path__, f"f2d_core.{layer}.")]
for name in shipped:
    importlib.import_module(name)

from f2d_core.faces.detect import load_detector
from f2d_core.faces.similarity import load_identity_scorer
from f2d_core.identity.encoder import load_encoder
from f2d_core.identity.pipeline import encode_images
from f2d_core.text.inject import BOS, EOS, inject_face

photo = np.load(work / "photo.npy")
detector = load_detector(work / "buffalo_l", device="cpu")
encoder = load_encoder(work / "msid.safetensors", work / "mapping.safetensors")
identity = encode_images(encoder, [photo], detector)

F, L = 325, 331  # the trigger "f l"
chunk = [(t, 1.0) for t in [BOS, 320, F, L, 2533] + [EOS] * 72]
position = torch.randn(77, 768, generator=torch.Generator().manual_seed(0))
injected = inject_face({"l": [chunk]}, [F, L], identity.s1, identity.s2, position)["l"][0]

scorer = load_identity_scorer(work / "recognition_pack", device="cpu")
similarity = scorer.score(scorer.reference([photo]), [photo]).similarities[0]

try:
    import cv2  # noqa: F401
    cv2_importable = True
except ImportError:
    cv2_importable = False
np.save(work / "s1.npy", identity.s1.numpy())
np.save(work / "s2.npy", identity.s2.numpy())
np.save(work / "slot2.npy", (injected[2][0] + position[2]).numpy())
np.save(work / "slot3.npy", (injected[3][0] + position[3]).numpy())
print(json.dumps({"modules": len(shipped), "cv2_importable": cv2_importable,
                  "cv2_loaded": sys.modules.get("cv2") is not None,
                  "faces": identity.num_faces, "landmarks": identity.meta["faces"][0]["landmarks"],
                  "similarity": similarity}))
'''


def textured_photo(size=640):
    """A photo the synthetic detector sees one face in, with texture for the crops to differ."""
    rng = np.random.default_rng(15)
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    img[..., 1] //= 4  # keep green away from the stride-gating levels
    return om.paint_face(img, 32, 8, 8, blue=60, scale=640 / size)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("no_opencv")
    pack = d / "buffalo_l"
    pack.mkdir()
    om.save(om.scrfd_model(), pack / "det_10g.onnx")
    om.save(om.landmark68_model(), pack / "1k3d68.onnx")
    ro.make_pack(d / "recognition_pack")
    torch.manual_seed(15)
    save_file(MSIDEncoder().state_dict(), str(d / "msid.safetensors"))
    save_file(MappingNetwork().state_dict(), str(d / "mapping.safetensors"))
    np.save(d / "photo.npy", textured_photo(1024))
    return d


def test_photo_to_injected_tokens_runs_where_cv2_cannot_be_imported(work):
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(work)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cv2_importable"] is False and result["cv2_loaded"] is False
    assert result["modules"] >= 25  # every module of the shipped layers was imported
    assert result["faces"] == 1 and result["landmarks"] == "68-point"  # the 68-point crop ran too
    assert result["similarity"] == pytest.approx(1.0, abs=1e-5)
    # the identity words sit in the trigger's slots, and they are what this process computes
    ours = encode_images(load_encoder(work / "msid.safetensors", work / "mapping.safetensors"),
                         [np.load(work / "photo.npy")], load_detector(work / "buffalo_l", device="cpu"))
    np.testing.assert_allclose(np.load(work / "s1.npy"), ours.s1.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(work / "s2.npy"), ours.s2.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(work / "slot2.npy"), ours.s1.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(work / "slot3.npy"), ours.s2.numpy(), atol=1e-5)


def _ignored(comfyignore: Path) -> list[str]:
    """The repository paths `.comfyignore` keeps out of the archive (its anchored entries)."""
    return [line.strip().lstrip("/") for line in comfyignore.read_text().splitlines()
            if line.strip().startswith("/")]


def shipped_sources() -> list[Path]:
    """The Python files, requirements and metadata `comfy node pack` ships (nodes/, the engine
    layers, the entry point), found from .comfyignore like comfy-cli does."""
    ignored = _ignored(REPO / ".comfyignore")
    files = [REPO / "__init__.py", REPO / "requirements.txt", REPO / "pyproject.toml"]
    for folder in ("nodes", "f2d_core"):
        files += sorted((REPO / folder).rglob("*.py"))
    keep = []
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        if not any(rel == i or (i.endswith("/") and rel.startswith(i)) for i in ignored):
            keep.append(f)
    return keep


def test_no_shipped_file_mentions_cv2():
    files = shipped_sources()
    names = {f.relative_to(REPO).as_posix() for f in files}
    assert {"f2d_core/faces/detect.py", "f2d_core/faces/align.py", "nodes/__init__.py"} <= names
    assert not any(n.startswith(("f2d_core/train/", "f2d_core/bench.py")) for n in names)  # tools keep OpenCV
    hits = [f"{f.relative_to(REPO)}:{i}" for f in files
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if "cv2" in line]
    assert hits == []


def test_the_runtime_requirements_install_no_opencv():
    listed = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    listed += tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [r for r in listed if "opencv" in r.lower()] == []
    # the tools that do need it say so in their own requirements
    assert "opencv-python-headless" in (REPO / "requirements-train.txt").read_text()
    assert "opencv-python-headless" in (REPO / "requirements-test.txt").read_text()
