"""Loading official checkpoints, and what users are told when a file is wrong."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from f2d_core import CheckpointError, load_encoder
from f2d_core.weights.checkpoint import convert, expected_shapes, load_checkpoint, read_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expected_layouts_match_the_official_key_counts():
    msid, mapping = expected_shapes("msid"), expected_shapes("mapping")
    assert len(msid) == 178 and len(mapping) == 13
    assert msid["pos_embed"] == (1, 197, 384) and msid["norms.layer_11.0.num_batches_tracked"] == ()
    assert mapping["i2t_first.layers.0.0.weight"] == (1536, 1600) and mapping["null_exp"] == (64,)


def test_official_files_load_strictly(official_weights, recipe, parity):
    sd = load_checkpoint(official_weights["msid"], "msid")
    ref = recipe.make_state_dict("msid", parity[1]["seed"])
    assert list(sd) == list(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_safetensors_conversion_round_trips_to_identical_tokens(official_weights, encoder, parity, tmp_path):
    E, _ = parity
    for kind in ("msid", "mapping"):
        assert convert(official_weights[kind], str(tmp_path / f"{kind}.safetensors")) == kind
    enc = load_encoder(tmp_path / "msid.safetensors", tmp_path / "mapping.safetensors")
    f = enc.identity_features(E["input.pixel_values"])
    assert torch.equal(f, encoder.identity_features(E["input.pixel_values"]))
    assert all(torch.equal(a, b) for a, b in zip(enc.face_tokens(f), encoder.face_tokens(f)))


def test_convert_command_line(official_weights, tmp_path):
    out = tmp_path / "mapping.safetensors"
    r = subprocess.run([sys.executable, "-m", "f2d_core", "convert", official_weights["mapping"], str(out)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(mapping)" in r.stdout and out.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_converted_checkpoint_gets_the_mode_the_umask_gives_any_new_file(official_weights, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        convert(official_weights["mapping"], str(tmp_path / "mapping.safetensors"))
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "mapping.safetensors").st_mode & 0o777) == oct(mode)


def test_data_parallel_prefix_and_state_dict_wrapper_are_accepted(official_weights, tmp_path):
    sd = read_state_dict(official_weights["mapping"])
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, wrapped)
    assert list(load_checkpoint(wrapped, "mapping")) == list(sd)


def test_swapped_files_are_named(official_weights):
    with pytest.raises(CheckpointError) as e:
        load_encoder(official_weights["mapping"], official_weights["msid"])
    msg = str(e.value)
    assert "mapping.pt" in msg and "expected the MSID identity encoder" in msg
    assert "this is the mapping network checkpoint" in msg


def test_missing_keys_are_listed(official_weights, tmp_path):
    sd = read_state_dict(official_weights["msid"])
    del sd["blocks.11.mlp.fc2.bias"], sd["norm.weight"]
    p = tmp_path / "msid_partial.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"msid_partial\.pt.*missing 2 keys: blocks\.11\.mlp\.fc2\.bias, norm\.weight"):
        load_checkpoint(p, "msid")


def test_wrong_shapes_and_unexpected_keys_are_listed(official_weights, tmp_path):
    sd = read_state_dict(official_weights["mapping"])
    sd["i2t_last.fc_out.weight"] = torch.zeros(1024, 1536)
    sd["head.weight"] = torch.zeros(3)
    p = tmp_path / "mapping_other.safetensors"
    save_file(sd, str(p))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p, "mapping")
    msg = str(e.value)
    assert "unexpected 1 keys: head.weight" in msg
    assert "i2t_last.fc_out.weight (1024, 1536) (expected (768, 1536))" in msg
    assert "use the official mapping.pt" in msg


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "msid.pt"
    with open(p, "wb") as f:
        pickle.dump({"cls_token": Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"msid\.pt: refused to load.*could run code.*would import posix\.system"):
        load_checkpoint(p, "msid")
    assert not marker.exists()


def test_a_torch_saved_file_with_code_is_refused_too(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    p = tmp_path / "mapping.pt"
    torch.save({"null_exp": Exploit()}, p)
    with pytest.raises(CheckpointError, match=r"refused to load.*posix\.system"):
        load_checkpoint(p, "mapping")


def test_truncated_pickle(official_weights, tmp_path):
    data = open(official_weights["mapping"], "rb").read()
    p = tmp_path / "mapping.pt"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"mapping\.pt: could not be read.*truncated or corrupt.*Download the file again"):
        load_checkpoint(p, "mapping")


def test_truncated_safetensors(official_weights, tmp_path):
    convert(official_weights["mapping"], str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    p = tmp_path / "mapping.safetensors"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"mapping\.safetensors: not a readable safetensors file.*truncated"):
        load_checkpoint(p, "mapping")


def test_html_page_saved_instead_of_the_weights(tmp_path):
    p = tmp_path / "msid.pt"
    p.write_text("<!DOCTYPE html><html>Google Drive - Virus scan warning</html>")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint at all.*HTML page"):
        load_checkpoint(p, "msid")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "msid.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"msid\.pt: the file is empty"):
        load_checkpoint(tmp_path / "msid.pt", "msid")
    with pytest.raises(CheckpointError, match=r"nothere\.pt: file not found"):
        load_checkpoint(tmp_path / "nothere.pt", "msid")


def test_a_stable_diffusion_checkpoint_in_the_wrong_slot(tmp_path):
    p = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(p))
    with pytest.raises(CheckpointError, match=r"expected the mapping network.*Stable Diffusion checkpoint"):
        load_checkpoint(p, "mapping")


def test_an_onnx_file_in_the_wrong_slot(tmp_path):
    p = tmp_path / "det_10g.onnx"
    p.write_bytes(b"\x08\x07onnx")
    with pytest.raises(CheckpointError, match=r"ONNX model.*models/insightface/models"):
        load_checkpoint(p, "msid")


def test_a_whole_pickled_module_is_refused_not_run(tmp_path):
    p = tmp_path / "msid.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(p, "msid")


def test_convert_refuses_unknown_files(tmp_path):
    p = tmp_path / "thing.pt"
    torch.save({"weight": torch.zeros(3)}, p)
    with pytest.raises(CheckpointError, match=r"unrecognised contents.*only Face2Diffusion checkpoints"):
        convert(str(p), str(tmp_path / "thing.safetensors"))
