"""Test-built insightface-format models for identity scoring, with outputs we control.

- `colour_recognizer()`: stands in for w600k_r50.onnx ([N, 3, 112, 112] -> [N, dim], input
  "input.1", output "683"). Its embedding is a fixed random projection of the mean colours of a
  grid x grid split of the normalised crop, centred per sample: `colour_embedding()` computes it
  with numpy. So an image matches itself exactly and another photo less.
- `fixed_face_detector()`: an SCRFD-format detector (det_10g's 9 outputs, fixed 640x640 input)
  that reports one face at the same place in every image: a box over the middle `box_frac` of a
  square picture, keypoints where the ArcFace template puts them. Real photos (../shared/faces)
  and generated noise then always have "a face", and its crop is the picture's centre.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import synthetic_onnx as om

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
DET_SIZE = 640


def _c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _finish(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def projection(grid: int = 4, dim: int = 512, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (3 * grid * grid, dim)).astype(np.float32)


def colour_recognizer(grid: int = 4, dim: int = 512, seed: int = 0, normalises_inside: bool = False,
                      size: int = 112) -> onnx.ModelProto:
    nodes, inits, x = [], [_c("w", projection(grid, dim, seed)), _c("flat", [-1, 3 * grid * grid], np.int64)], "input.1"
    if normalises_inside:  # the mxnet-export sign: insightface then feeds raw 0..255 pixels
        inits += [_c("mean", 127.5), _c("inv_std", 1 / 127.5)]
        nodes += [helper.make_node("Sub", [x, "mean"], ["centred_px"], name="Sub_0"),
                  helper.make_node("Mul", ["centred_px", "inv_std"], ["normed"], name="Mul_1")]
        x = "normed"
    k = size // grid
    nodes += [helper.make_node("AveragePool", [x], ["pooled"], name="pool", kernel_shape=[k, k], strides=[k, k]),
              helper.make_node("Reshape", ["pooled", "flat"], ["cells"], name="flatten"),
              helper.make_node("ReduceMean", ["cells"], ["cell_mean"], name="cell_mean", axes=[1], keepdims=1),
              helper.make_node("Sub", ["cells", "cell_mean"], ["centred"], name="centre"),
              helper.make_node("MatMul", ["centred", "w"], ["683"], name="project")]
    graph = helper.make_graph(
        nodes, "recognition_colour",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", dim])], inits)
    return _finish(graph)


def colour_embedding(crops_rgb_uint8, grid: int = 4, dim: int = 512, seed: int = 0) -> np.ndarray:
    """What colour_recognizer() outputs (unnormalised) for aligned crops, computed with numpy."""
    x = (np.asarray(crops_rgb_uint8, np.float32) - 127.5) / 127.5  # (N, H, W, 3)
    n, h = x.shape[0], x.shape[1]
    k = h // grid
    cells = x.transpose(0, 3, 1, 2).reshape(n, 3, grid, k, grid, k).mean(axis=(3, 5)).reshape(n, -1)
    cells -= cells.mean(axis=1, keepdims=True)
    return cells @ projection(grid, dim, seed)


def fixed_face_keypoints(box_frac: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(box x1 y1 x2 y2, keypoints (5, 2)) in detector pixels of the one face fixed_face_detector reports."""
    lo, hi = DET_SIZE * (1 - box_frac) / 2, DET_SIZE * (1 + box_frac) / 2
    return np.array([lo, lo, hi, hi], np.float32), (lo + ARCFACE_112 * (hi - lo) / 112).astype(np.float32)


def fixed_face_detector(box_frac: float = 0.6, score: float = 0.99) -> onnx.ModelProto:
    box, kps = fixed_face_keypoints(box_frac)
    stride, cell = 32, DET_SIZE // 64  # the anchor at (320, 320): cell (10, 10) of stride 32
    anchor = np.array([cell * stride, cell * stride], np.float32)
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["m"], name="m", keepdims=1),
             helper.make_node("Mul", ["m", "zero"], ["z4"], name="z4"),
             helper.make_node("Reshape", ["z4", "shape11"], ["z"], name="z")]
    inits = [_c("zero", 0.0), _c("shape11", [1, 1], np.int64)]
    outputs = []
    for kind, width in (("score", 1), ("box", 4), ("kps", 10)):
        for s in (8, 16, 32):
            rows = (DET_SIZE // s) ** 2 * 2
            if kind == "score":
                value = np.zeros((rows, 1), np.float32)
                if s == stride:
                    value[(cell * (DET_SIZE // s) + cell) * 2, 0] = score
            elif kind == "box":
                d = np.concatenate([anchor - box[:2], box[2:] - anchor]) / s
                value = np.tile(d, (rows, 1)).astype(np.float32)
            else:
                value = np.tile(((kps - anchor) / s).reshape(-1), (rows, 1)).astype(np.float32)
            name = om.DET10G_OUTPUT_NAMES[len(outputs)]
            inits.append(_c(f"{name}_const", value))
            nodes.append(helper.make_node("Add", [f"{name}_const", "z"], [name], name=f"add_{name}"))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [rows, width]))
    graph = helper.make_graph(
        nodes, "scrfd_fixed_face",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])], outputs, inits)
    return _finish(graph)


def save(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def make_pack(folder, fixed_face: bool = True, recognizer_name: str = "w600k_r50.onnx", **recognizer_kw):
    """An insightface-like pack folder: det_10g.onnx (fixed-face, or the painted-square SCRFD of
    synthetic_onnx) + a colour recognizer. Returns the folder."""
    from pathlib import Path
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save(fixed_face_detector() if fixed_face else om.scrfd_model(), folder / "det_10g.onnx")
    save(colour_recognizer(**recognizer_kw), folder / recognizer_name)
    return folder


def iresnet_recognizer(seed: int = 0, width: int = 8, dim: int = 512, planes=None,
                       blocks=(1, 1, 1, 1)) -> onnx.ModelProto:
    """w600k_r50 / glintr100's layout and op set (insightface's iresnet, a PyTorch export with the
    batch norms after convolutions folded in, nodes Conv_0 ... Gemm_N): input "input.1"
    [N, 3, 112, 112], Conv + PRelu, blocks BatchNormalization -> Conv -> PRelu -> Conv (stride 2)
    with a Conv shortcut and Add, then BatchNormalization -> Flatten -> Gemm -> BatchNormalization
    (the 1-d feature norm), output "683" [N, dim]. Random weights. planes / blocks per stage:
    tiny by default; (64, 128, 256, 512) / (3, 4, 14, 3) is iresnet50, w600k_r50's size."""
    net, w = om._Net(seed), width
    x = net.prelu(net.conv("input.1", 3, w, 3, 1, name="Conv_0"), w)
    cin = w
    for cout, n in zip(planes or (w, 2 * w, 2 * w, 4 * w), blocks):  # 56, 28, 14, 7
        for k in range(n):
            stride = 2 if k == 0 else 1
            y = net.conv(net.bn(x, cin), cin, cout, 3, 1)
            y = net.conv(net.prelu(y, cout), cout, cout, 3, stride, gain=1.0 if k == 0 else 0.5)
            short = net.conv(x, cin, cout, 1, 2, pads=[0, 0, 0, 0], gain=1.0) if k == 0 else x
            x = net.op("Add", [y, short])
            cin = cout
    x = net.op("Flatten", [net.bn(x, cin)], axis=1)
    fc = net.rng.normal(0, np.sqrt(1 / (cin * 49)), (dim, cin * 49))
    x = net.op("Gemm", [x, net.const(fc, "fc"), net.const(np.zeros(dim), "fc_b")], "Gemm_128", transB=1)
    r = net.rng
    params = [r.uniform(0.5, 1.5, dim), r.normal(0, 0.1, dim), r.normal(0, 0.1, dim), r.uniform(0.5, 1.5, dim)]
    net.nodes.append(helper.make_node("BatchNormalization", [x] + [net.const(p, "features") for p in params],
                                      ["683"], name="BatchNormalization_129", epsilon=1e-5))
    graph = helper.make_graph(net.nodes, "iresnet_layout",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])], net.inits)
    return _finish(graph)
