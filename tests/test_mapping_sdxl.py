"""F2D-SDXL mapping files and faces: the reader knows the family from the shapes and the metadata,
the official SD1 mapping.pt and old face files load as before."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from f2d_core import F2DError, load_encoder
from f2d_core.errors import CheckpointError
from f2d_core.identity.face_file import FaceIdentity
from f2d_core.identity.pipeline import encode_images
from f2d_core.models.families import SD1, SDXL
from f2d_core.models.mapping import MappingNetwork
from f2d_core.weights.checkpoint import load_mapping, read_state_dict

from sdxl_mapping import sdxl_mapping_state_dict, write_sdxl_mapping


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    return write_sdxl_mapping(tmp_path_factory.mktemp("sdxl") / "f2d_sdxl_mapping.safetensors", seed=5)


@pytest.fixture(scope="module")
def sdxl_encoder(official_weights, sdxl_file):
    return load_encoder(official_weights["msid"], sdxl_file)


def test_an_sdxl_mapping_gives_2048_value_words_equal_to_the_network_it_holds(sdxl_encoder):
    assert sdxl_encoder.family is SDXL and sdxl_encoder.mapping_metadata["f2d_trigger"] == "f l"
    net = MappingNetwork(token_dim=2048).eval()
    net.load_state_dict(sdxl_mapping_state_dict(seed=5))
    features = torch.randn(2, 1536, generator=torch.Generator().manual_seed(0))
    s1, s2 = sdxl_encoder.face_tokens(features)
    assert s1.shape == s2.shape == (2, 2048)
    with torch.no_grad():
        want1, want2 = net(features)
    assert torch.equal(s1, want1) and torch.equal(s2, want2)


def test_the_official_mapping_pt_still_loads_as_sd1(official_weights, recipe, parity):
    m = load_mapping(official_weights["mapping"])
    assert m.family is SD1 and m.metadata == {} and m.trigger is None
    enc = load_encoder(official_weights["msid"], official_weights["mapping"])
    E = parity[0]
    s1, s2 = enc.face_tokens(E["msid.features"])
    assert enc.family is SD1 and s1.shape[-1] == 768
    torch.testing.assert_close(s1, E["map.tokens_uncond_first"], atol=1e-4, rtol=0)


def test_an_sd1_safetensors_without_family_metadata_is_sd1(official_weights, tmp_path):
    p = tmp_path / "mapping.safetensors"
    save_file(read_state_dict(official_weights["mapping"]), str(p), metadata={"f2d_kind": "mapping"})
    assert load_mapping(p).family is SD1


@pytest.mark.parametrize("metadata, message", [
    ({"f2d_family": "sd1"}, r"its metadata says it is a SD1\.x mapping \(f2d_family='sd1'\), but its weights are "
                            r"SDXL's \(2048-value words, i2t_first\.fc_out\.weight \(2048, 1536\)\)\. .* export it "
                            r"again"),
    ({"f2d_family": "sd3"}, r"f2d_family='sd3', which this version of the pack does not know \(sd1, sdxl\)\. "
                            r"Update the pack"),
    ({"f2d_widths": "768,1024"}, r"f2d_widths='768,1024', but SDXL's are '768,1280'"),
])
def test_metadata_that_disagrees_with_the_weights_is_refused(tmp_path, metadata, message):
    p = write_sdxl_mapping(tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load_mapping(p)


def test_sd1_shaped_weights_labelled_sdxl_are_refused(official_weights, tmp_path):
    p = write_sdxl_mapping(tmp_path / "mislabelled.safetensors", state_dict=read_state_dict(official_weights["mapping"]))
    with pytest.raises(CheckpointError, match=r"says it is a SDXL mapping \(f2d_family='sdxl'\), but its weights are "
                                              r"SD1\.x's \(768-value words"):
        load_mapping(p)


def test_a_word_width_no_family_has_is_named(tmp_path):
    sd = sdxl_mapping_state_dict()
    sd = {k: (v[:1024] if k.endswith("fc_out.weight") else v[:1024] if k.endswith("fc_out.bias") else v)
          for k, v in sd.items()}
    p = tmp_path / "odd.safetensors"
    save_file(sd, str(p))
    with pytest.raises(CheckpointError, match=r"words have 1024 values .* no base model this pack knows has that "
                                              r"width \(SD1\.x 768, SDXL 2048\)"):
        load_mapping(p)


def test_an_sdxl_face_saves_its_tokens_per_text_encoder_and_loads_back(sdxl_encoder, tmp_path):
    crops = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    face = encode_images(sdxl_encoder, crops)  # already aligned crops: no detector
    assert face.family is SDXL and face.s1.shape == (2048,)
    path = face.save(str(tmp_path / "anna.f2d.safetensors"))
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        assert f.metadata()["family"] == "sdxl"
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {k: v for k, v in shapes.items() if k.startswith("s")} == {
        "s1.l": (768,), "s1.g": (1280,), "s2.l": (768,), "s2.g": (1280,)}
    loaded = FaceIdentity.load(path)
    assert loaded.family is SDXL and torch.equal(loaded.s1, face.s1) and torch.equal(loaded.s2, face.s2)


def test_a_face_file_of_the_first_format_loads_as_sd1(tmp_path):
    path = tmp_path / "old.f2d.safetensors"
    save_file({"features": torch.zeros(1536), "s1": torch.ones(768), "s2": torch.zeros(768)}, str(path),
              metadata={"format": "face2diffusion.identity", "version": "1", "meta": json.dumps({"num_faces": 1})})
    face = FaceIdentity.load(str(path))
    assert face.family is SD1 and torch.equal(face.s1, torch.ones(768))


def test_a_face_file_mixing_families_is_refused(tmp_path):
    path = tmp_path / "mixed.f2d.safetensors"
    save_file({"features": torch.zeros(1536), "s1": torch.ones(768), "s1.g": torch.zeros(1280)}, str(path),
              metadata={"format": "face2diffusion.identity", "version": "1", "family": "sdxl"})
    with pytest.raises(F2DError, match=r"holds \['s1'\] but a SDXL face stores \['s1\.g', 's1\.l', 's2\.g', "
                                       r"'s2\.l'\]"):
        FaceIdentity.load(str(path))
    save_file({"features": torch.zeros(1536), "s1.l": torch.ones(768)}, str(path),
              metadata={"format": "face2diffusion.identity", "version": "1", "family": "sdxl"})
    with pytest.raises(F2DError, match=r"has \['s1\.l'\] but not \['s1\.g'\]; the file is incomplete"):
        FaceIdentity.load(str(path))
