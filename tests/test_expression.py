"""Expression from a reference photo: the Deep3DFaceRecon regressor, its crop, its checkpoint.

The public layout below is written down from sicxu/Deep3DFaceRecon_pytorch @ 9167c71:
models/networks.py ReconNetWrapper(net_recon="resnet50", use_last_fc=False) is `backbone` (their
copy of torchvision's resnet50 without `fc`) and `final_layers`, a ModuleList of seven
conv1x1(2048, n, bias=True) heads; models/base_model.py save_networks writes
{"net_recon": net.state_dict(), "opt_00": ..., "sched_00": ...} as epoch_20.pth.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import synthetic_onnx as om
from f2d_core import CheckpointError, F2DError, NoFaceError
from f2d_core.weights.checkpoint import convert, expected_shapes, load_checkpoint
from f2d_core.faces.detect import Face, FaceDetector
from f2d_core.identity.expression import (LM3D_TEMPLATE, align_for_recon, expression_from_strength,
                                          load_expression_model, recon_points)
from f2d_core.identity.pipeline import encode_images
from f2d_core.models.deep3d import split_coefficients

HEADS = [80, 64, 80, 3, 27, 2, 1]  # id, exp, tex, angle, gamma, (tx, ty), tz
STAGES = [(64, 3), (128, 4), (256, 6), (512, 3)]  # resnet50: (planes, blocks), expansion 4


def public_layout():
    """[(key, shape)] of epoch_20.pth["net_recon"] in state_dict order."""
    L = []

    def bn(p, c):
        L.extend([(p + ".weight", (c,)), (p + ".bias", (c,)), (p + ".running_mean", (c,)),
                  (p + ".running_var", (c,)), (p + ".num_batches_tracked", ())])

    L.append(("backbone.conv1.weight", (64, 3, 7, 7)))
    bn("backbone.bn1", 64)
    cin = 64
    for li, (planes, blocks) in enumerate(STAGES, 1):
        for b in range(blocks):
            p = f"backbone.layer{li}.{b}."
            L.append((p + "conv1.weight", (planes, cin, 1, 1)))
            bn(p + "bn1", planes)
            L.append((p + "conv2.weight", (planes, planes, 3, 3)))
            bn(p + "bn2", planes)
            L.append((p + "conv3.weight", (planes * 4, planes, 1, 1)))
            bn(p + "bn3", planes * 4)
            if b == 0:
                L.append((p + "downsample.0.weight", (planes * 4, cin, 1, 1)))
                bn(p + "downsample.1", planes * 4)
            cin = planes * 4
    for i, n in enumerate(HEADS):
        L += [(f"final_layers.{i}.weight", (n, 2048, 1, 1)), (f"final_layers.{i}.bias", (n,))]
    return L


def recipe_fill(key, shape, seed):
    """shared/parity/recipe.py's rules: one generator per key, float64 draws stored as float32."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.int64)
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    if key.endswith("running_mean"):
        v = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    elif key.endswith("running_var"):
        v = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
    elif key.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)
    elif key.endswith(".bias"):
        v = 0.02 * torch.randn(shape, generator=g, dtype=torch.float64)
    else:
        v = torch.randn(shape, generator=g, dtype=torch.float64) / math.sqrt(math.prod(shape[1:]))
    return v.float()


@pytest.fixture(scope="module")
def weights():
    return {k: recipe_fill(k, s, 7) for k, s in public_layout()}


@pytest.fixture(scope="module")
def epoch20(weights, tmp_path_factory):
    """The official file's format: net_recon next to real Adam and StepLR states."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=1e-4)
    p.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10, 0.2)
    path = tmp_path_factory.mktemp("deep3d") / "epoch_20.pth"
    torch.save({"net_recon": weights, "opt_00": opt.state_dict(), "sched_00": sched.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def regressor(epoch20):
    return load_expression_model(epoch20)


# --- the network and its checkpoint ------------------------------------------------------------

def test_keys_and_shapes_equal_the_public_checkpoint():
    want = public_layout()
    assert len(want) == 332
    assert list(expected_shapes("deep3d").items()) == want
    params = sum(math.prod(s) for k, s in want if not k.endswith(("running_mean", "running_var", "batches_tracked")))
    assert params == 24_034_625  # torchvision resnet50 without fc (23,508,032) + heads 257 x 2049


def reference_forward(sd, x):
    """A straightforward functional ResNet-50 and the seven heads, from the state dict alone."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3), "backbone.bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for li, (_, blocks) in enumerate(STAGES, 1):
        for b in range(blocks):
            p = f"backbone.layer{li}.{b}."
            stride = 2 if (b == 0 and li > 1) else 1
            y = F.relu(bn(F.conv2d(x, sd[p + "conv1.weight"]), p + "bn1"))
            y = F.relu(bn(F.conv2d(y, sd[p + "conv2.weight"], stride=stride, padding=1), p + "bn2"))
            y = bn(F.conv2d(y, sd[p + "conv3.weight"]), p + "bn3")
            short = bn(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), p + "downsample.1") if b == 0 else x
            x = F.relu(y + short)
    feat = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return torch.cat([feat @ sd[f"final_layers.{i}.weight"].flatten(1).T + sd[f"final_layers.{i}.bias"]
                      for i in range(len(HEADS))], dim=1)


def test_forward_matches_a_functional_resnet50_within_1e_4(regressor, weights):
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = reference_forward(weights, x)
        got = regressor.net(x)
    assert got.shape == (2, 257) and want.abs().max() > 0.1  # every layer matters at this scale
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    parts = split_coefficients(got)
    assert [v.shape[1] for v in parts.values()] == [80, 64, 80, 3, 27, 3]
    assert torch.equal(parts["exp"], got[:, 80:144])


def test_epoch_20_loads_with_its_optimizer_state_and_with_a_module_prefix(epoch20, weights, tmp_path):
    net = load_expression_model(epoch20).net
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    prefixed = tmp_path / "ddp.pth"
    torch.save({"net_recon": {"module." + k: v for k, v in weights.items()}}, prefixed)
    assert list(load_checkpoint(prefixed, "deep3d")) == list(weights)
    bare = tmp_path / "bare.pth"
    torch.save(weights, bare)
    assert list(load_checkpoint(bare, "deep3d")) == list(weights)


def test_convert_keeps_only_the_network_and_loads_the_same(epoch20, weights, tmp_path):
    out = tmp_path / "epoch_20.safetensors"
    assert convert(str(epoch20), str(out)) == "deep3d"
    from safetensors.torch import load_file
    stored = load_file(str(out))
    assert stored.keys() == weights.keys() and all(torch.equal(stored[k], v) for k, v in weights.items())
    net = load_expression_model(out).net
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


def fake(kind):
    return {k: torch.zeros(s) for k, s in expected_shapes(kind).items()}


def test_the_msid_encoder_in_the_expression_slot_is_named(tmp_path):
    p = tmp_path / "msid.pt"
    torch.save(fake("msid"), p)
    with pytest.raises(CheckpointError) as e:
        load_expression_model(p)
    msg = str(e.value)
    assert "expected the Deep3DFaceRecon expression regressor (epoch_20.pth or epoch_20.safetensors)" in msg
    assert "but this is the MSID identity encoder checkpoint (msid.pt/msid.safetensors)" in msg


def test_epoch_20_in_the_msid_slot_is_named(epoch20):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(epoch20, "msid")
    msg = str(e.value)
    assert "expected the MSID identity encoder" in msg
    assert "this is the Deep3DFaceRecon expression regressor checkpoint (epoch_20.pth" in msg


def test_other_wrong_files_in_the_expression_slot(tmp_path, weights):
    p = tmp_path / "mapping.safetensors"
    save_file(fake("mapping"), str(p))
    with pytest.raises(CheckpointError, match="but this is the mapping network checkpoint"):
        load_expression_model(p)
    imagenet = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    imagenet |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    p = tmp_path / "resnet50-0676ba61.pth"
    torch.save(imagenet, p)
    with pytest.raises(CheckpointError, match="this looks like a bare ResNet"):
        load_expression_model(p)
    partial = dict(weights)
    del partial["final_layers.6.bias"]
    p = tmp_path / "epoch_19.pth"
    torch.save({"net_recon": partial}, p)
    with pytest.raises(CheckpointError, match=r"missing 1 keys: final_layers\.6\.bias.*official epoch_20\.pth"):
        load_expression_model(p)


# --- the crop --------------------------------------------------------------------------------

def their_align_img(img, lm):
    """util/preprocess.py align_img as test.py calls it, restated: y flipped up, the POS fit as one
    interleaved 10 x 8 least-squares system, the whole photo resized with PIL bicubic, then cropped."""
    im = Image.fromarray(img)
    W, H = im.size
    lm = lm.astype(np.float32).copy()
    lm[:, 1] = H - 1 - lm[:, 1]
    A = np.zeros((10, 8))
    A[0::2, 0:3], A[0::2, 3], A[1::2, 4:7], A[1::2, 7] = LM3D_TEMPLATE, 1, LM3D_TEMPLATE, 1
    k = np.linalg.lstsq(A, lm.reshape(10, 1), rcond=None)[0][:, 0]
    s = 102.0 / ((np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2)
    w, h = (np.array([W, H]) * s).astype(np.int32)
    left = np.int32(w / 2 - 112.0 + (k[3] - W / 2) * s)
    up = np.int32(h / 2 - 112.0 + (H / 2 - k[7]) * s)
    out = im.resize((int(w), int(h)), Image.BICUBIC).crop((left, up, left + 224.0, up + 224.0))
    lm_new = (np.stack([lm[:, 0] - k[3] + W / 2, lm[:, 1] - k[7] + H / 2], 1) * s - [w / 2 - 112, h / 2 - 112])
    return np.asarray(out), lm_new


def smooth_noise(h, w, seed):
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8))
    return np.array(small.resize((w, h), Image.BILINEAR))


def face_points(cx, cy, eye_distance, angle=0.0, seed=0):
    base = np.array([[-.5, -.35], [.5, -.35], [0, .1], [-.4, .55], [.4, .55]]) * eye_distance
    c, s = np.cos(angle), np.sin(angle)
    jitter = np.random.default_rng(seed).normal(0, 0.02 * eye_distance, (5, 2))
    return (base @ np.array([[c, s], [-s, c]]) + [cx, cy] + jitter).astype(np.float32)


@pytest.mark.parametrize("hw, centre, eyes, angle", [
    ((480, 640), (300, 220), 90, 0.1),     # shrink (scale < 1)
    ((300, 260), (130, 150), 30, -0.2),    # enlarge (scale > 1)
    ((400, 400), (30, 380), 70, 0.3),      # near a corner: the crop runs off the photo (black)
])
def test_crop_equals_their_align_img(hw, centre, eyes, angle):
    img = smooth_noise(*hw, seed=eyes)
    lm = face_points(*centre, eyes, angle)
    crop, M = align_for_recon(img, lm)
    want, lm_new = their_align_img(img, lm)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, want)
    # the matrix puts the points where their y-up crop landmarks say (up to their half-pixel terms)
    mapped = lm.astype(np.float64) @ M[:2, :2].T + M[:2, 2]
    np.testing.assert_allclose(mapped, np.stack([lm_new[:, 0], 223 - lm_new[:, 1]], 1), atol=1.5)
    if centre == (30, 380):
        assert (crop[-20:, :20] == 0).all()


def test_past_the_size_limit_only_the_window_is_resampled_within_2_levels(monkeypatch):
    """A small face in a large photo would need a huge rescaled copy; the window resampling used
    instead moves a few pixels by at most 2 levels and keeps the same matrix."""
    import f2d_core.identity.expression as ex
    img = smooth_noise(500, 700, seed=5)
    lm = face_points(350, 260, 25)
    exact, M = align_for_recon(img, lm)
    monkeypatch.setattr(ex, "FULL_RESIZE_LIMIT", 0)
    windowed, M2 = align_for_recon(img, lm)
    d = np.abs(windowed.astype(int) - exact.astype(int))
    assert d.max() <= 2 and (d > 0).mean() < 0.05 and np.array_equal(M, M2)


def test_68_points_use_deep3dfacerecons_own_reduction():
    l68 = np.random.default_rng(0).uniform(0, 200, (68, 2)).astype(np.float32)
    face = Face(np.zeros(4, np.float32), 1.0, np.zeros((5, 2), np.float32), l68)
    want = [(l68[36] + l68[39]) / 2, (l68[42] + l68[45]) / 2, l68[30], l68[48], l68[54]]
    np.testing.assert_allclose(recon_points(face), want, rtol=0, atol=1e-5)
    face.landmarks68 = None
    assert np.array_equal(recon_points(face), face.landmarks5)


def test_bad_landmarks_are_refused():
    with pytest.raises(F2DError, match="expected 5 finite"):
        align_for_recon(np.zeros((64, 64, 3), np.uint8), np.zeros((4, 2)))
    with pytest.raises(F2DError, match="degenerate"):
        align_for_recon(np.zeros((64, 64, 3), np.uint8), np.full((5, 2), 10.0))


# --- photos -> expression ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return FaceDetector(om.save(om.scrfd_model(), tmp_path_factory.mktemp("det") / "det_10g.onnx"), device="cpu")


def photo(cx, cy, blue=60):
    """A photo the synthetic detector sees one face in (one painted stride-32 cell), on a dark texture
    (red below half, so no cell of it scores a face)."""
    img = smooth_noise(640, 640, seed=cx * 31 + cy) // 4
    img[cy * 32:(cy + 1) * 32, cx * 32:(cx + 1) * 32] = (255, om.STRIDE_GREEN[32], blue)
    return img


def test_expression_is_the_exp_slice_of_the_crops_coefficients(regressor, detector):
    imgs = [photo(8, 8), photo(11, 6, blue=120)]
    exp = regressor.expression(imgs, detector)
    crops = np.stack([align_for_recon(im, detector.detect(im)[0].landmarks5)[0] for im in imgs])
    with torch.no_grad():
        want = regressor.net(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)[:, 80:144]
    assert exp.shape == (2, 64) and exp.dtype == torch.float32
    torch.testing.assert_close(exp, want, atol=1e-5, rtol=0)
    assert not torch.allclose(exp[0], exp[1])
    batch = torch.from_numpy(np.stack(imgs)).float() / 255  # a ComfyUI IMAGE batch
    torch.testing.assert_close(regressor.expression(batch, detector), exp, atol=1e-5, rtol=0)


def faceless(h=300, w=300, seed=3):
    """No face for the synthetic detector (the dark texture alone), and not blank."""
    return smooth_noise(h, w, seed) // 4


def test_no_face_in_the_expression_reference_names_the_image(regressor, detector):
    with pytest.raises(NoFaceError, match="Expression reference: No face found in smile.jpg"):
        regressor.expression([photo(8, 8), faceless()], detector, names=["me.jpg", "smile.jpg"])
    crops, info, skipped = regressor.crops([faceless(), photo(8, 8)], detector,
                                           names=["empty.png", "smile.jpg"], on_no_face="skip")
    assert len(crops) == 1 and info[0]["image"] == "smile.jpg" and skipped[0]["image"] == "empty.png"
    with pytest.raises(NoFaceError, match="no face was found in any of the 1 images"):
        regressor.expression([faceless(64, 64)], detector, on_no_face="skip")


def test_a_reference_batch_whose_later_photo_has_no_face_names_the_batch_and_its_fix(regressor, detector):
    batch = torch.from_numpy(np.stack([photo(8, 8), faceless(640, 640)])).float() / 255.0  # one IMAGE batch
    with pytest.raises(NoFaceError, match=r"^Expression reference: No face found in expression image 2 of 2\..* "
                                          r"expression image 2 of 2 came after the first image of one batch: core "
                                          r"Batch Images resizes and centre-crops every later image to the first "
                                          r"one's size.* Batch only photos of the same size as the first \(or crop "
                                          r"them alike first\), or give one reference photo\.$"):
        regressor.expression(batch, detector)
    with pytest.raises(NoFaceError, match=r"No face found in smile\.jpg\. Use a clearer photo[^.]*\.$"):
        regressor.expression([photo(8, 8), faceless()], detector, names=["me.jpg", "smile.jpg"])  # separate photos


def test_without_a_detector_images_must_be_deep3d_crops(regressor):
    crop = smooth_noise(224, 224, seed=1)
    torch.testing.assert_close(regressor.expression([crop]), regressor.predict(crop)[:, 80:144])
    with pytest.raises(F2DError, match="must be 224x224 Deep3DFaceRecon crops, but this one is 640x480"):
        regressor.expression([smooth_noise(480, 640, seed=2)])


# --- the same photos refused as Encode Face refuses them (identity.picking) --------------------

def unusable_photos(tmp_path):
    """{name: photo}: blank, saturated (a 16-bit grayscale PNG as ComfyUI's Load Image reads it) and
    a 16x16 face (one stride-8 cell of the synthetic detector) in a 640 photo."""
    levels = np.linspace(0, 65535, 256 * 256).astype(np.uint16).reshape(256, 256)
    Image.fromarray(levels).save(tmp_path / "gray16.png")
    tiny = om.paint_face(faceless(640, 640, seed=4), 8, 20, 20)
    return {"grey.png": np.full((300, 300, 3), 128, np.uint8),
            "gray16.png": np.array(Image.open(tmp_path / "gray16.png").convert("RGB")), "small.jpg": tiny}


@pytest.mark.parametrize("name, says", [
    ("grey.png", r"^grey\.png is blank: the whole image is one flat colour"),
    ("gray16.png", r"^gray16\.png is saturated: 99\.6% of its pixels are pure white"),
    ("small.jpg", r"^small\.jpg: the face is only 16x16 pixels .*too small to encode.* set min_face_px to 0 to allow "
                  r"any size\.$"),
])
def test_the_expression_reference_refuses_what_encode_refuses_with_the_same_message(
        regressor, detector, encoder, tmp_path, name, says):
    image = unusable_photos(tmp_path)[name]
    with pytest.raises(NoFaceError, match=says) as encoding:
        encode_images(encoder, [photo(8, 8), image], detector, names=["me.jpg", name])
    with pytest.raises(NoFaceError) as expression:
        regressor.expression([photo(8, 8), image], detector, names=["me.jpg", name])
    assert str(expression.value) == f"Expression reference: {encoding.value}"
    crops, info, skipped = regressor.crops([image, photo(8, 8)], detector, names=[name, "me.jpg"], on_no_face="skip")
    assert len(crops) == 1 and info[0]["image"] == "me.jpg"
    assert skipped == [{"image": name, "index": 0, "reason": str(encoding.value)}]


def test_min_face_px_0_lets_the_expression_reference_use_a_small_face(regressor, detector, tmp_path):
    tiny = unusable_photos(tmp_path)["small.jpg"]
    assert regressor.expression([tiny], detector, min_face_px=0).shape == (1, 64)
    with pytest.raises(F2DError, match="min_face_px must be 0 .any size. or more, got -1"):
        regressor.expression([tiny], detector, min_face_px=-1)


def test_a_blank_deep3d_crop_is_refused_without_a_detector_too(regressor):
    with pytest.raises(NoFaceError, match=r"^Expression reference: expression image 1 of 1 is blank"):
        regressor.expression([np.zeros((224, 224, 3), np.uint8)])


# --- strength ----------------------------------------------------------------------------------

def test_strength_interpolates_from_null_exp_to_the_reference_and_beyond():
    null = torch.randn(64, generator=torch.Generator().manual_seed(0))
    ref = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)) * 3
    assert torch.equal(expression_from_strength(null, ref, 0.0), null.expand(3, -1))  # bit-exact
    assert torch.equal(expression_from_strength(null, ref, 1.0), ref)
    torch.testing.assert_close(expression_from_strength(null, ref, 2.0), 2 * ref - null)
    torch.testing.assert_close(expression_from_strength(null, ref[0], 0.5), (null + ref[0]) / 2)
    with pytest.raises(F2DError, match="finite"):
        expression_from_strength(null, ref, float("nan"))
    with pytest.raises(F2DError, match="has 63 values"):
        expression_from_strength(null, ref[:, :63], 1.0)
