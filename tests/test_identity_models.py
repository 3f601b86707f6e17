"""The paper's face recognisers (E.3) as modules in the published checkpoints' key layouts, loaded
from files saved in those layouts with random weights (the real weights cannot be downloaded
here), and the crops each one is given.

The expected keys and shapes below were read off the published code: facenet-pytorch's
models/inception_resnet_v1.py (a VGGFace2 file has 714 keys + logits.weight/bias), AdaFace's
net.py (IR-101: 917 keys, under `model.` in its checkpoints, with `head.kernel`) and
clcarwin/sphereface_pytorch's net_sphere.py (sphere20a: 62 keys + fc6.weight)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from f2d_core.errors import CheckpointError
from f2d_core.evaluate import face_nets
from f2d_core.evaluate.identity_models import NetIdentity, SPECS, load_face_net
from f2d_core.faces.align import ARCFACE_TEMPLATE
from f2d_core.faces.detect import Face

FACENET_KEYS = {"conv2d_1a.conv.weight": (32, 3, 3, 3), "repeat_1.4.branch2.2.conv.weight": (32, 32, 3, 3),
                "mixed_6a.branch1.2.bn.running_var": (256,), "mixed_7a.branch2.2.conv.weight": (256, 256, 3, 3),
                "repeat_2.9.branch1.1.conv.weight": (128, 128, 1, 7), "block8.conv2d.weight": (1792, 384, 1, 1),
                "last_linear.weight": (512, 1792), "last_bn.num_batches_tracked": ()}
ADAFACE_KEYS = {"input_layer.0.weight": (64, 3, 3, 3), "body.0.res_layer.3.weight": (64,),
                "body.3.shortcut_layer.0.weight": (128, 64, 1, 1), "body.48.res_layer.5.running_var": (512,),
                "output_layer.3.weight": (512, 25088), "output_layer.4.running_mean": (512,)}
SPHERE_KEYS = {"conv1_1.weight": (64, 3, 3, 3), "relu3_9.weight": (256,), "conv4_3.bias": (512,),
               "fc5.weight": (512, 21504)}


def random_state_dict(module, seed=0) -> dict:
    """The module's keys with random values (BN variances positive), as a trained file would hold."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if not v.dtype.is_floating_point:
            out[k] = v.clone()
        elif "running_var" in k:
            out[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out


def _layout(module, expected: dict, count: int):
    sd = module.state_dict()
    assert len(sd) == count
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k


def test_facenet_module_has_facenet_pytorchs_key_layout():
    _layout(face_nets.InceptionResnetV1(), FACENET_KEYS, 714)
    assert not any(k.startswith(("logits", "avgpool", "dropout")) for k in face_nets.InceptionResnetV1().state_dict())


def test_adaface_module_has_the_official_ir101_and_ir50_key_layouts():
    _layout(face_nets.IRBackbone(101), ADAFACE_KEYS, 917)
    assert len(face_nets.IRBackbone(50).state_dict()) == 467
    assert "body.0.shortcut_layer.0.weight" not in face_nets.IRBackbone(101).state_dict()  # first block subsamples


def test_sphereface_module_has_sphere20a_key_layout():
    _layout(face_nets.Sphere20a(), SPHERE_KEYS, 62)


def test_a_facenet_file_in_the_vggface2_layout_loads_strictly_with_its_weights(tmp_path):
    sd = random_state_dict(face_nets.InceptionResnetV1())
    sd["logits.weight"], sd["logits.bias"] = torch.zeros(8631, 512), torch.zeros(8631)  # the VGGFace2 classifier
    torch.save(sd, tmp_path / "20180402-114759-vggface2.pt")
    net = load_face_net(tmp_path / "20180402-114759-vggface2.pt", "facenet")
    for k in FACENET_KEYS:
        assert torch.equal(net.state_dict()[k], sd[k])
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 512) and float(out.norm()) == pytest.approx(1.0, abs=1e-5)


def test_a_facenet_file_with_a_wrong_key_is_refused_with_the_keys_named(tmp_path):
    sd = random_state_dict(face_nets.InceptionResnetV1())
    sd["last_linear.kernel"] = sd.pop("last_linear.weight")
    torch.save(sd, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"--facenet .*renamed.pt: looks like FaceNet .* does not match the "
                                              r"published key layout \(missing 1 keys: last_linear.weight; "
                                              r"unexpected 1 keys: last_linear.kernel\)"):
        load_face_net(tmp_path / "renamed.pt", "facenet")


def test_a_checkpoint_of_another_recogniser_is_named_and_sent_to_its_flag(tmp_path):
    torch.save(random_state_dict(face_nets.Sphere20a()), tmp_path / "sphere20a_20171020.pth")
    with pytest.raises(CheckpointError, match=r"--facenet .*: expected FaceNet .* but this is a SphereFace \(sphere20a\) "
                                              r"checkpoint; give it with --sphereface"):
        load_face_net(tmp_path / "sphere20a_20171020.pth", "facenet")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"--adaface .*: expected AdaFace .* but unrecognised contents"):
        load_face_net(tmp_path / "other.pt", "adaface")


def test_an_adaface_lightning_checkpoint_loads_its_model_keys_and_ignores_the_head(tmp_path):
    sd = random_state_dict(face_nets.IRBackbone(101))
    ckpt = {"epoch": 26, "state_dict": {**{"model." + k: v for k, v in sd.items()}, "head.kernel": torch.zeros(512, 7)}}
    torch.save(ckpt, tmp_path / "adaface_ir101_webface12m.ckpt")
    net = load_face_net(tmp_path / "adaface_ir101_webface12m.ckpt", "adaface")
    assert net.depth == 101 and torch.equal(net.state_dict()["body.48.res_layer.5.running_var"],
                                            sd["body.48.res_layer.5.running_var"])
    torch.save({"state_dict": {"model." + k: v for k, v in random_state_dict(face_nets.IRBackbone(50)).items()}},
               tmp_path / "adaface_ir50_ms1mv2.ckpt")
    assert load_face_net(tmp_path / "adaface_ir50_ms1mv2.ckpt", "adaface").depth == 50


def test_an_adaface_checkpoint_with_training_objects_is_refused_with_how_to_extract_the_weights(tmp_path):
    torch.save({"state_dict": {"model.input_layer.0.weight": torch.zeros(64, 3, 3, 3)},
                "hyper_parameters": argparse.Namespace(arch="ir_101")}, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointError, match=r"refused to load as AdaFace .*weights_only=True.*Extract the weights "
                                              r"once.*save_file.*then pass OUT.safetensors"):
        load_face_net(tmp_path / "lightning.ckpt", "adaface")


def test_sphereface_loads_from_the_legacy_torch_format_of_2017_with_its_angle_head(tmp_path):
    sd = random_state_dict(face_nets.Sphere20a())
    sd["fc6.weight"] = torch.zeros(512, 10574)  # AngleLinear of the CASIA-WebFace classes
    torch.save(sd, tmp_path / "sphere20a_20171020.pth", _use_new_zipfile_serialization=False)
    net = load_face_net(tmp_path / "sphere20a_20171020.pth", "sphereface")
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 112, 96)).shape == (2, 512)


class _OneFace:
    """A detector that reports one face with given 5 points (the crops are what is tested)."""
    name = "test points"

    def __init__(self, points):
        self.points = np.asarray(points, np.float32)

    def detect(self, rgb, name="image"):
        return [Face(np.array([0, 0, rgb.shape[1], rgb.shape[0]], np.float32), 0.9, self.points)]


def _dot_image(points, at: int):
    """A grey picture with one white 3x3 dot on the 5 points' `at`-th point."""
    img = np.full((400, 400, 3), 60, np.uint8)
    x, y = np.round(points[at]).astype(int)
    img[y - 1:y + 2, x - 1:x + 2] = 255
    return img


@pytest.mark.parametrize("column, size, where", [
    ("adaface", (112, 112), ARCFACE_TEMPLATE[0]),
    ("facenet", (160, 160), ARCFACE_TEMPLATE[0] * 160 / 112),
    ("sphereface", (112, 96), np.array([30.2946, 51.6963])),  # sphereface_pytorch's lfw_eval reference point
])
def test_each_recogniser_gets_its_published_crop(column, size, where):
    points = ARCFACE_TEMPLATE * 2.5 + [60, 40]  # a face 2.5x the template, somewhere in the picture
    crop = SPECS[column].crop(_dot_image(points, 0), points)
    assert crop.shape[:2] == size
    y, x = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
    assert np.hypot(x - where[0], y - where[1]) <= 1.0  # the left eye lands where that network expects it


@pytest.mark.parametrize("column, bgr, std", [("adaface", True, 127.5), ("sphereface", True, 128.0),
                                              ("facenet", False, 128.0)])
def test_each_recogniser_reads_its_published_colour_order_and_scale(column, bgr, std):
    backend = NetIdentity(column, torch.nn.Identity(), _OneFace(ARCFACE_TEMPLATE))
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    px = backend.pixels(red)[0]
    first, last = (0, 2) if bgr else (2, 0)  # which channel holds the red
    assert float(px[last, 0, 0]) == pytest.approx(127.5 / std) and float(px[first, 0, 0]) == pytest.approx(-127.5 / std)
