"""Shared fixtures: the parity kit in ../shared (skipped with a reason when absent),
official-format weights regenerated from its recipe, and an SD1.x CLIP text model."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("F2D_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
TOKENIZER_DIR = SHARED / "tokenizers" / "sd1_clip"
FACES = SHARED / "faces"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _need(path: Path, what: str):
    if not path.exists():
        pytest.skip(f"{what} not found at {path}: put the project's shared folder beside the repo "
                    "(or set F2D_SHARED) to run this test")


@pytest.fixture(scope="session")
def recipe():
    _need(PARITY / "recipe.py", "parity recipe")
    sys.path.insert(0, str(PARITY))
    import recipe as r
    return r


@pytest.fixture(scope="session")
def parity():
    """(expected tensors, expected json) of the public parity set."""
    _need(PARITY / "expected_public.safetensors", "parity expectations")
    from safetensors.torch import load_file
    return load_file(str(PARITY / "expected_public.safetensors")), json.loads(
        (PARITY / "expected_public.json").read_text())


@pytest.fixture(scope="session")
def official_weights(recipe, parity, tmp_path_factory):
    """msid.pt and mapping.pt in the official pickle format, from the recipe and the parity seed."""
    d = tmp_path_factory.mktemp("official")
    seed = parity[1]["seed"]
    return {"msid": recipe.save_official("msid", seed, str(d / "msid.pt")),
            "mapping": recipe.save_official("mapping", seed, str(d / "mapping.pt")), "dir": d}


@pytest.fixture(scope="session")
def encoder(official_weights):
    from f2d_core import load_encoder
    return load_encoder(official_weights["msid"], official_weights["mapping"])


@pytest.fixture(scope="session")
def tokenizer():
    _need(TOKENIZER_DIR / "vocab.json", "SD1 CLIP tokenizer files")
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def build_clip_text(state_dict, config: dict):
    """transformers CLIPTextModel from a recipe-format state dict, without a random init."""
    from f2d_core.text.clip import clip_text_model
    return clip_text_model(state_dict, config)


@pytest.fixture(scope="session")
def clip_text(recipe, parity):
    return build_clip_text(recipe.make_state_dict("clip_text", parity[1]["seed"]), recipe.CLIP_TEXT_CONFIG)
