"""insightface's ONNX files run by torch (models/onnx_graph.py), with onnxruntime as the oracle.

onnxruntime is a test dependency only (requirements-test.txt), as OpenCV is for the numpy warp:
the same files, the same inputs, both runtimes. The files are tests/synthetic_onnx.py's and
tests/recognizer_onnx.py's networks with the real files' layout and op set (random weights),
the inputs real photos (../shared/faces and scikit-image's astronaut). Tolerances are set from
measurements (float32 sums in another order): raw outputs within 1e-6 of their largest value
(measured 7e-7), scores within 1e-5 (measured 6e-7), boxes, 5 and 68 points within 0.01 pixel
(measured 6e-5 px for boxes and keypoints, 3.3e-3 px for the 68 points, on 88 faces in 6
photos), embeddings cosine >= 0.9999 (measured 1 - 1.2e-7).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime
import pytest
import torch

import recognizer_onnx as ro
import synthetic_onnx as om
from conftest import FACES, REPO
from f2d_core.errors import CheckpointError
from f2d_core.faces.detect import FaceDetector
from f2d_core.faces.images import read_image
from f2d_core.faces.onnx import load_graph
from f2d_core.faces.recognize import ArcFaceRecognizer
from f2d_core.models.onnx_graph import OnnxGraph, parse_model


class OrtGraph:
    """The oracle: onnxruntime behind the interface the engine's networks have (test-only)."""

    def __init__(self, path, device="cpu"):
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = self.session.get_inputs(), self.session.get_outputs()

    def run(self, *arrays, channels_last=False):  # the layout is onnxruntime's own choice
        return self.session.run(None, {i.name: a for i, a in zip(self.inputs, arrays)})


def photos():
    """Real photos: the project's five, scikit-image's astronaut."""
    from skimage import data
    found = [read_image(p) for p in sorted(FACES.glob("*.jpg"))]
    return found + [data.astronaut()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    return {"det": om.save(om.scrfd_net(), d / "det_10g.onnx"),
            "det_scales": om.save(om.scrfd_net(resize="scales"), d / "scrfd_10g_bnkps.onnx"),
            "lmk": om.save(om.landmark_net(), d / "1k3d68.onnx"),
            "rec": om.save(ro.iresnet_recognizer(), d / "w600k_r50.onnx")}


@pytest.mark.parametrize("kind,shape", [("det", (1, 3, 640, 640)), ("det_scales", (1, 3, 480, 640)),
                                        ("lmk", (2, 3, 192, 192)), ("rec", (3, 3, 112, 112))])
def test_torch_gives_onnxruntime_outputs_on_photo_pixels(files, kind, shape):
    """Every output of every layout network, fed crops of real photos scaled as the engine feeds them."""
    rng = np.random.default_rng(0)
    pics = photos()
    x = np.stack([np.stack([pics[(i + c) % len(pics)][:shape[2], :shape[3], c] for c in range(3)])
                  for i in range(shape[0])]).astype(np.float32)
    x = x if kind == "lmk" else (x - 127.5) / 128.0  # 1k3d68 normalises inside (bn_data)
    x += rng.normal(0, 1e-3, x.shape).astype(np.float32)
    ours, theirs = load_graph(files[kind], "cpu").run(x), OrtGraph(files[kind]).run(x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.abs(a - b).max() <= 1e-6 * max(1.0, np.abs(b).max())


def test_detections_boxes_keypoints_and_68_points_match_onnxruntime_on_real_photos(files):
    kw = dict(device="cpu", det_thresh=0.55)
    ours = FaceDetector(files["det"], files["lmk"], **kw)
    oracle = FaceDetector(files["det"], files["lmk"], load_graph=OrtGraph, **kw)
    seen = 0
    for image in photos():
        a, b = ours.detect(image), oracle.detect(image)
        assert len(a) == len(b)
        seen += len(a)
        for fa, fb in zip(a, b):
            assert abs(fa.score - fb.score) < 1e-5
            assert np.abs(fa.box - fb.box).max() < 0.01
            assert np.abs(fa.landmarks5 - fb.landmarks5).max() < 0.01
            assert np.abs(fa.landmarks68 - fb.landmarks68).max() < 0.01
    assert seen >= 3  # the comparison covered real detections


def test_embeddings_match_onnxruntime_on_real_photos(files):
    ours = ArcFaceRecognizer(files["rec"], device="cpu")
    oracle = ArcFaceRecognizer(files["rec"], device="cpu", load_graph=OrtGraph)
    kps = np.array([[190, 200], [320, 200], [255, 270], [200, 340], [310, 340]], np.float32)
    crops = [ours.align(image, kps) for image in photos()]
    a, b = ours.embeddings(crops), oracle.embeddings(crops)
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() >= 0.9999
    # and the embeddings tell the photos apart, so the comparison is not between constants
    assert (a @ a.T)[~np.eye(len(a), dtype=bool)].max() < 0.999


def test_the_network_is_a_module_whose_weights_move_with_it(files):
    """What ComfyUI's ModelPatcher needs: every float weight is a buffer, so .to() moves them all."""
    model = parse_model(open(files["rec"], "rb").read())
    net = OnnxGraph(model, fold_batch_norms=False)
    floats = sum(a.size for a in model.initializers.values() if a.dtype.kind == "f")
    assert sum(b.numel() for b in net.buffers()) == floats
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 112, 112)).astype(np.float32)
    want = net.run(x)[0]
    assert net.double().dtype == torch.float64
    assert np.abs(net.run(x)[0] - want).max() < 1e-4 * np.abs(want).max()


def test_batch_norms_folded_into_convolutions_give_the_same_outputs(files):
    model = parse_model(open(files["lmk"], "rb").read())
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 192, 192)).astype(np.float32)
    plain = OnnxGraph(model, fold_batch_norms=False)
    folded = OnnxGraph(parse_model(open(files["lmk"], "rb").read()))
    assert len(folded._steps) < len(plain._steps)
    want = plain.run(x)[0]
    assert np.abs(folded.run(x)[0] - want).max() <= 1e-5 * np.abs(want).max()


# --- foreign or broken files -----------------------------------------------------------------

def test_an_op_the_reader_does_not_run_is_named_with_the_file(tmp_path):
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["y"], name="mix", equation="ij,jk->ik")],
                              "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    path = om.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "det_10g.onnx")
    with pytest.raises(CheckpointError) as err:
        load_graph(path, "cpu")
    msg = str(err.value)
    assert "det_10g.onnx" in msg and "'Einsum'" in msg and "'mix'" in msg and "buffalo_l" in msg


def test_a_truncated_file_says_so_names_it_and_says_to_download_again(tmp_path, files):
    data = open(files["rec"], "rb").read()
    path = tmp_path / "w600k_r50.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_graph(path, "cpu")
    msg = str(err.value)
    assert "w600k_r50.onnx" in msg and "truncated" in msg and "download" in msg


# --- without onnxruntime ---------------------------------------------------------------------

def test_detection_alignment_encoding_injection_and_similarity_run_with_onnxruntime_absent(tmp_path, official_weights):
    """A fresh interpreter in which `import onnxruntime` fails (a meta-path blocker: the test's
    stand-in for a ComfyUI without it) runs the whole path on real photos."""
    pack = tmp_path / "buffalo_l"
    ro.make_pack(pack, fixed_face=True)
    om.save(om.landmark_net(), pack / "1k3d68.onnx")
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "onnxruntime":
                    raise ImportError("onnxruntime is not installed here")
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(REPO)!r})
        import torch
        from f2d_core import load_detector, load_encoder
        from f2d_core.faces.images import read_image
        from f2d_core.faces.similarity import load_identity_scorer
        from f2d_core.identity.pipeline import encode_images
        from f2d_core.text import inject
        photos = [read_image(p) for p in {[str(p) for p in sorted(FACES.glob("*.jpg"))][:2]!r}]
        detector = load_detector({str(pack)!r}, device="cpu")
        encoder = load_encoder({str(official_weights["msid"])!r}, {str(official_weights["mapping"])!r}, device="cpu")
        identity = encode_images(encoder, photos, detector)
        s1, s2 = identity.s1, identity.s2
        pos = torch.zeros(77, 768)
        chunk = [(49406, 1.0), (320, 1.0), (325, 1.0), (331, 1.0)] + [(49407, 1.0)] * 73
        out = inject.inject_face({{"l": [chunk]}}, [325, 331], s1, s2, pos)
        scorer = load_identity_scorer({str(pack)!r}, device="cpu")
        sims = scorer.score(scorer.reference(photos[:1]), photos).similarities
        assert "onnxruntime" not in sys.modules
        print("faces", identity.num_faces, "sims", [round(s, 3) for s in sims], "injected", len(out["l"][0]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "faces 2" in done.stdout and "sims [1.0," in done.stdout and "injected 77" in done.stdout


# --- single ops, in the forms the exports use -------------------------------------------------

def _one_op(op, inputs, attrs=None, consts=None, opset=13, n_out=1):
    """A graph of one node: inputs {name: array} fed at run time, consts {name: array} stored."""
    from onnx import TensorProto, helper, numpy_helper
    feeds = dict(inputs)
    names = list(inputs) + list(consts or {})
    order = attrs.pop("_order", names) if attrs else names  # "" marks an optional input left out
    node = helper.make_node(op, order, [f"y{i}" for i in range(n_out)], name=f"{op}_0", **(attrs or {}))
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
                                              for k, v in feeds.items()],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(n_out)],
                              [numpy_helper.from_array(v, k) for k, v in (consts or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString(), feeds


X = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 10)).astype(np.float32)
I64 = lambda *v: np.array(v, np.int64)  # noqa: E731
OPS = {
    "Slice negative step": ("Slice", {"x": X}, None, {"s": I64(-2, 7), "e": I64(-100, 1), "a": I64(2, 3), "st": I64(-1, -2)}, 13),
    "Slice past the end": ("Slice", {"x": X}, None, {"s": I64(1, -3), "e": I64(99, -1), "a": I64(1, 3)}, 13),
    "Slice opset 9 attributes": ("Slice", {"x": X}, {"starts": [0, 2], "ends": [1, 5], "axes": [0, 3]}, None, 9),
    "Flatten negative axis": ("Flatten", {"x": X}, {"axis": -1}, None, 13),
    "Resize nearest 2x sizes": ("Resize", {"x": X}, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                "nearest_mode": "floor", "_order": ["x", "", "", "sz"]}, {"sz": I64(2, 3, 16, 20)}, 13),
    "Resize nearest round_prefer_floor half_pixel 3x": ("Resize", {"x": X}, {"mode": "nearest", "_order": ["x", "", "sc"]},
                                                       {"sc": np.array([1, 1, 3, 3], np.float32)}, 13),
    "Resize bilinear half_pixel": ("Resize", {"x": X}, {"mode": "linear", "_order": ["x", "", "sc"]},
                                   {"sc": np.array([1, 1, 1.5, 2], np.float32)}, 13),
    "Upsample opset 9": ("Upsample", {"x": X}, {"mode": "nearest"}, {"sc": np.array([1, 1, 2, 2], np.float32)}, 9),
    "Pad reflect": ("Pad", {"x": X}, {"mode": "reflect"}, {"p": I64(0, 0, 1, 2, 0, 0, 2, 1)}, 13),
    "Pad constant opset 2": ("Pad", {"x": X}, {"pads": [0, 0, 1, 0, 0, 0, 0, 3], "value": 0.5}, None, 2),
    "MaxPool asymmetric pads ceil": ("MaxPool", {"x": X}, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0],
                                                          "ceil_mode": 1}, None, 13),
    "AveragePool SAME_UPPER": ("AveragePool", {"x": X}, {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER",
                                                         "count_include_pad": 1}, None, 13),
    "Conv asymmetric pads, groups": ("Conv", {"x": X}, {"pads": [1, 0, 0, 2], "group": 3, "strides": [1, 2]},
                                     {"w": np.random.default_rng(1).normal(0, 1, (6, 1, 3, 3)).astype(np.float32)}, 13),
    "Softmax opset 11 flattens": ("Softmax", {"x": X}, {"axis": 2}, None, 11),
    "Softmax opset 13": ("Softmax", {"x": X}, {"axis": 1}, None, 13),
    "Split in three": ("Split", {"x": X}, {"axis": 3}, {"sp": I64(2, 3, 5)}, 13),
    "LeakyRelu": ("LeakyRelu", {"x": X}, {"alpha": 0.2}, None, 13),
    "PRelu shared slope": ("PRelu", {"x": X}, None, {"s": np.array([0.25], np.float32)}, 13),
    "PRelu slope per channel": ("PRelu", {"x": X}, None, {"s": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)}, 13),
    "PRelu slope over the last axis": ("PRelu", {"x": X[:, :, :, :3].copy()}, None, {"s": np.array([0.1, 0.2, 0.3], np.float32)}, 13),
    "Gemm transA alpha beta": ("Gemm", {"a": X[0, 0]}, {"transA": 1, "alpha": 0.5, "beta": 2.0},
                               {"b": X[1, 0, :, :8].T.copy(), "c": np.ones((1, 8), np.float32)}, 13),
    "ReduceMean opset 18 axes input": ("ReduceMean", {"x": X}, {"keepdims": 0}, {"ax": I64(1, -1)}, 18),
    "Clip opset 6": ("Clip", {"x": X}, {"min": -0.5, "max": 0.7}, None, 6),
}


@pytest.mark.parametrize("case", list(OPS))
def test_each_op_form_gives_what_onnxruntime_gives(case):
    op, inputs, attrs, consts, opset = OPS[case]
    n_out = 3 if op == "Split" else 1
    data, feeds = _one_op(op, inputs, dict(attrs) if attrs else None, consts, opset, n_out)
    ours = OnnxGraph(parse_model(data)).run(*feeds.values())
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    theirs = session.run(None, feeds)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
