"""The loader's precision on a real ComfyUI: auto is fp32, half precision only when chosen."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def nodes(comfy_inprocess, f2d_models_dir):
    return comfy_inprocess.pack_nodes()


def load(nodes, precision):
    return nodes["LoadF2DEncoder"].execute("msid.pt", "mapping.pt", "buffalo_l", device="cpu",
                                           precision=precision).result[0]


def test_auto_precision_is_the_fp32_encoder_itself(nodes):
    auto = load(nodes, "auto")
    assert auto.encoder.dtype == torch.float32
    assert load(nodes, "fp32").encoder is auto.encoder  # one encoder, not a second load


def test_bf16_is_loaded_only_when_chosen_and_gives_float32_tokens(nodes):
    handle = load(nodes, "bf16")
    assert handle.encoder.dtype == torch.bfloat16
    with handle.loaded() as encoder:
        s1, s2 = encoder.face_tokens(encoder.identity_features(torch.zeros(1, 3, 112, 112)))
    assert s1.dtype == s2.dtype == torch.float32
    assert "bfloat16" in handle.describe()
