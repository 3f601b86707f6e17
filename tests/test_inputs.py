"""Numbers entering the engine are finite and of a sane size, or the user is told which input is not.

Without these checks a vector of 64 x 1e38 or a forged identity file full of NaN gives NaN
identity tokens, NaN conditioning and a black image, with no error anywhere (issue 10)."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from f2d_core import F2DError, load_encoder
from f2d_core.identity.bounds import EXPRESSION_LIMIT, FEATURE_LIMIT, TOKEN_LIMIT
from f2d_core.identity.expression import expression_from_strength
from f2d_core.identity.face_file import FORMAT, FaceIdentity

from conftest import FACES


def test_an_expression_vector_of_1e38_is_refused_with_its_name():
    with pytest.raises(F2DError, match=r"^expression vector: holds a value of 1e\+38, far outside the range of real "
                                       r"data \(\|x\| <= 100\)\. Expression coefficients .* lie within about \+-10"):
        expression_from_strength(torch.zeros(64), torch.full((64,), 1e38), 1.0, "expression vector")


def test_an_expression_pushed_past_the_bound_by_strength_says_to_lower_it():
    with pytest.raises(F2DError, match=r"^the expression vector at strength 2: holds a value of 120.*Lower the strength"):
        expression_from_strength(torch.zeros(64), torch.full((64,), 60.0), 2.0, "expression vector")


def test_nan_from_a_reference_photo_names_the_expression_model():
    ref = torch.zeros(64)
    ref[3] = float("nan")
    with pytest.raises(F2DError, match=r"expression of the reference image\(s\): 1 of 64 values are NaN or infinite\. "
                                       r".*download epoch_20\.pth again"):
        expression_from_strength(torch.zeros(64), ref, 1.0, "expression of the reference image(s)")


def test_the_encoder_refuses_a_huge_expression_instead_of_returning_nan_tokens(encoder, parity):
    features = parity[0]["msid.features"]
    with pytest.raises(F2DError, match=r"^expression: holds a value of 1e\+38, .* Give 64 expression coefficients"):
        encoder.face_tokens(features, torch.full((1, 64), 1e38))


def test_the_encoder_refuses_features_with_nan(encoder, parity):
    features = parity[0]["msid.features"].clone()
    features[0, 10] = float("inf")
    with pytest.raises(F2DError, match=r"^identity features: 1 of 1536 values are NaN or infinite\. .*encode the "
                                       r"photos again"):
        encoder.face_tokens(features)


def test_tokens_a_damaged_mapping_file_makes_infinite_are_blamed_on_it(official_weights, parity):
    damaged = load_encoder(official_weights["msid"], official_weights["mapping"])
    with torch.no_grad():
        damaged.mapping.i2t_first.fc_out.weight[:5] = float("nan")  # as if the file held NaN in 5 rows
    with pytest.raises(F2DError, match=r"^identity token S1\* from the mapping network: 5 of 768 values are NaN or "
                                       r"infinite\. Its inputs were in range, so mapping\.pt is damaged"):
        damaged.face_tokens(parity[0]["msid.features"])


@pytest.fixture(scope="module")
def real_features():
    """MSID features the authors computed with the real msid.pt for their five demo faces."""
    paths = [FACES / f"f2d_input_{i}_msid_features.npy" for i in range(5)]
    if not all(p.exists() for p in paths):
        pytest.skip(f"the official demo features are not in {FACES}")
    return np.stack([np.load(p) for p in paths])


def test_the_bounds_are_far_above_the_real_data(real_features):
    """The bounds must never refuse a real face: ~20x the largest values of real data."""
    real = real_features
    assert np.abs(real).max() < 5 and FEATURE_LIMIT >= 20 * np.abs(real).max()
    assert EXPRESSION_LIMIT >= 10 * 10  # Deep3DFaceRecon coefficients: |x| < ~10
    assert TOKEN_LIMIT >= 50 * 2  # the parity recipe's mapping gives tokens under 2


def test_real_features_and_the_parity_tokens_pass(encoder, parity, real_features):
    real = torch.from_numpy(real_features)
    s1, s2 = encoder.face_tokens(real)
    assert torch.isfinite(s1).all() and s1.abs().max() < 2 and s2.abs().max() < 2
    E = parity[0]
    encoder.face_tokens(E["msid.features"].repeat(2, 1), E["map.exp_vector"])  # the parity expression: accepted


def forged(tmp_path, **overrides):
    tensors = {"features": torch.zeros(1536), "s1": torch.zeros(768), "s2": torch.zeros(768)} | overrides
    p = tmp_path / "forged.f2d.safetensors"
    save_file(tensors, str(p), metadata={"format": FORMAT, "version": "1", "meta": "{}"})
    return p


def test_a_forged_identity_file_with_nan_features_is_refused(tmp_path):
    p = forged(tmp_path, features=torch.full((1536,), float("nan")))
    with pytest.raises(F2DError, match=r"forged\.f2d\.safetensors: 'features': 1536 of 1536 values are NaN or "
                                       r"infinite\. The file is damaged or forged: save the face again"):
        FaceIdentity.load(p)


def test_a_forged_identity_file_with_huge_tokens_is_refused(tmp_path):
    p = forged(tmp_path, s2=torch.full((768,), 1e30))
    with pytest.raises(F2DError, match=r"'s2': holds a value of 1e\+30, far outside .* save the face again"):
        FaceIdentity.load(p)


def test_a_forged_identity_file_with_float_crops_is_refused(tmp_path):
    p = forged(tmp_path, aligned=torch.full((1, 112, 112, 3), float("nan")))
    with pytest.raises(F2DError, match=r"'aligned' holds torch\.float32 values, expected uint8 pixels"):
        FaceIdentity.load(p)
    p = forged(tmp_path, features_per_face=torch.zeros(2, 768))
    with pytest.raises(F2DError, match=r"'features_per_face' has shape \(2, 768\), expected \('N', 1536\)"):
        FaceIdentity.load(p)
