"""Tiny synthetic ONNX models in insightface's formats, for the tests and the benchmark.

Built with onnx.helper, so this module needs the `onnx` package, which the node pack
itself never needs (only `python -m f2d_core bench` and the tests import this file).

SCRFD-format detector: the graph of det_10g.onnx seen from outside (input "input.1"
[1, 3, ?, ?], outputs 448/471/494 scores, 451/474/497 boxes, 454/477/500 keypoints for
strides 8/16/32, two anchors per location, rows ordered (y, x, anchor)); the 15-output
5-stride, one-anchor layout is available too. Its outputs are simple functions of
the input picture, average-pooled over each stride's cell:
- score = red / 255, gated by green: every stride owns a green level (STRIDE_GREEN), and a
  cell fires only at the stride whose green it carries. So a square painted exactly over one
  cell of stride s, with red R and green STRIDE_GREEN[s], is one face of score R / 255.
- the box (BOX_DIST, in stride units from the anchor at the cell's top-left corner) and the
  keypoints (KPS_OFFSET) are scaled by 1 + 2 * blue / 255.
- the second anchor of a location scores 0.9x with a 1.1x box, so NMS must remove it.
The 1k3d68-format landmark model maps 4x4 average-pooled colours linearly to 3309 values
whose last 68 (x, y, z) rows are a face-like layout plus a colour-dependent offset.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DET10G_OUTPUT_NAMES", "BOX_DIST", "KPS_OFFSET", "SECOND_ANCHOR_SCORE", "SECOND_ANCHOR_BOX",
           "STRIDE_GREEN", "strides_for", "stride_green", "scrfd_model", "landmark68_model",
           "recognition_model", "paint_face", "save"]

DET10G_OUTPUT_NAMES = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
BOX_DIST = np.array([0.5, 0.25, 1.5, 1.75], np.float32)  # left, top, right, bottom
KPS_OFFSET = np.array([[0.1, 0.4], [0.9, 0.4], [0.5, 0.7], [0.2, 1.1], [0.8, 1.1]], np.float32)
SECOND_ANCHOR_SCORE, SECOND_ANCHOR_BOX = 0.9, 1.1
OPSET = 13


def strides_for(levels: int) -> tuple:
    return (8, 16, 32) if levels == 3 else (8, 16, 32, 64, 128)


def stride_green(levels: int = 3) -> dict:
    """Green level (0..255) that makes a cell a face at each stride."""
    n = levels - 1
    return {s: int(round(255 * i / n)) for i, s in enumerate(strides_for(levels))}


STRIDE_GREEN = stride_green(3)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def scrfd_model(levels: int = 3, keypoints: bool = True, batched: bool = False) -> onnx.ModelProto:
    """levels=3: det_10g's 9 outputs (6 without keypoints); levels=5: 15 (10) outputs."""
    strides = strides_for(levels)
    anchors = 2 if levels == 3 else 1
    green = stride_green(levels)
    gate_gain = 2.0 * (levels - 1)  # gate is 0 at the neighbouring strides' green levels
    nodes, inits = [], [_const("to_unit_mul", 128.0 / 255.0), _const("to_unit_add", 127.5 / 255.0),
                        _const("one", 1.0), _const("zero", 0.0), _const("two", 2.0),
                        _const("gain", gate_gain)]
    outs = {"score": [], "box": [], "kps": []}

    def add(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    for s in strides:
        p = add("AveragePool", ["input.1"], f"pool{s}", kernel_shape=[s, s], strides=[s, s])
        u = add("Add", [add("Mul", [p, "to_unit_mul"], f"scaled{s}"), "to_unit_add"], f"unit{s}")
        r, g, b = f"r{s}", f"g{s}", f"b{s}"
        nodes.append(helper.make_node("Split", [u], [r, g, b], name=f"split{s}", axis=1))
        inits.append(_const(f"green{s}", green[s] / 255.0))
        dist = add("Abs", [add("Sub", [g, f"green{s}"], f"gdiff{s}")], f"gabs{s}")
        gate = add("Clip", [add("Sub", ["one", add("Mul", [dist, "gain"], f"gmul{s}")], f"graw{s}"),
                            "zero", "one"], f"gate{s}")
        score0 = add("Mul", [r, gate], f"score{s}_a0")
        factor = add("Add", ["one", add("Mul", [b, "two"], f"b2_{s}")], f"size{s}")
        per_anchor = {"score": [1.0, SECOND_ANCHOR_SCORE][:anchors],
                      "box": np.concatenate([BOX_DIST * k for k in [1.0, SECOND_ANCHOR_BOX][:anchors]]),
                      "kps": np.concatenate([KPS_OFFSET.reshape(-1) * k
                                             for k in [1.0, SECOND_ANCHOR_BOX][:anchors]])}
        for kind, width in (("score", 1), ("box", 4), ("kps", 10)):
            inits.append(_const(f"{kind}_k{s}", np.asarray(per_anchor[kind]).reshape(1, -1, 1, 1)))
            src = score0 if kind == "score" else factor
            head = add("Mul", [src, f"{kind}_k{s}"], f"{kind}{s}_head")  # [1, anchors*width, h, w]
            hwc = add("Transpose", [head], f"{kind}{s}_hwc", perm=[0, 2, 3, 1])
            shape = [1, -1, width] if batched else [-1, width]
            inits.append(numpy_helper.from_array(np.array(shape, np.int64), f"{kind}{s}_shape"))
            outs[kind].append((add("Reshape", [hwc, f"{kind}{s}_shape"], f"{kind}{s}_rows"), width))
    kinds = ["score", "box", "kps"] if keypoints else ["score", "box"]
    ordered = [o for k in kinds for o in outs[k]]
    names = DET10G_OUTPUT_NAMES if (levels == 3 and keypoints) else [f"out{i}" for i in range(len(ordered))]
    outputs = []
    for (src, width), name in zip(ordered, names):
        nodes.append(helper.make_node("Identity", [src], [name], name=f"id_{name}"))
        shape = [1, f"n_{name}", width] if batched else [f"n_{name}", width]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "scrfd_synthetic",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])], outputs, inits)
    return _finish(graph)


def landmark68_model(normalises_inside: bool = False, seed: int = 0) -> onnx.ModelProto:
    """1k3d68 format: input "data" [N, 3, 192, 192], output "fc1" [N, 3309]. With
    normalises_inside the graph starts with nodes named Sub/Mul, the mxnet-export sign that
    makes insightface feed raw 0..255 pixels (mean 0, std 1) instead of (x - 127.5) / 128."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "data"
    if normalises_inside:
        inits += [_const("mean", 127.5), _const("inv_std", 1.0 / 128.0)]
        nodes += [helper.make_node("Sub", [x, "mean"], ["centred"], name="Sub_0"),
                  helper.make_node("Mul", ["centred", "inv_std"], ["normed"], name="Mul_1")]
        x = "normed"
    # face-like layout in crop units [-1, 1]: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67
    t = np.linspace(-1, 1, 17)
    layout = np.concatenate([
        np.stack([0.6 * t, 0.1 + 0.5 * (1 - t ** 2) ** 0.5], 1),
        np.stack([np.linspace(-0.5, -0.1, 5), np.full(5, -0.35)], 1),
        np.stack([np.linspace(0.1, 0.5, 5), np.full(5, -0.35)], 1),
        np.stack([np.zeros(4), np.linspace(-0.2, 0.05, 4)], 1),
        np.stack([np.linspace(-0.1, 0.1, 5), np.full(5, 0.1)], 1),
        np.stack([-0.3 + 0.1 * np.cos(np.linspace(0, 2 * np.pi, 7)[:6]),
                  -0.2 + 0.04 * np.sin(np.linspace(0, 2 * np.pi, 7)[:6])], 1),
        np.stack([0.3 + 0.1 * np.cos(np.linspace(0, 2 * np.pi, 7)[:6]),
                  -0.2 + 0.04 * np.sin(np.linspace(0, 2 * np.pi, 7)[:6])], 1),
        np.stack([0.25 * np.cos(np.linspace(0, 2 * np.pi, 21)[:20]),
                  0.3 + 0.08 * np.sin(np.linspace(0, 2 * np.pi, 21)[:20])], 1),
    ])
    bias = rng.normal(0, 0.5, (1103, 3))
    bias[-68:, :2] = layout
    weight = rng.normal(0, 0.05, (48, 3309))  # 3 colours x 4 x 4 pooled cells
    inits += [_const("w", weight), _const("bias", bias.reshape(-1)),
              numpy_helper.from_array(np.array([-1, 48], np.int64), "flat")]
    nodes += [helper.make_node("AveragePool", [x], ["pooled"], name="pool", kernel_shape=[48, 48], strides=[48, 48]),
              helper.make_node("Reshape", ["pooled", "flat"], ["flat_pooled"], name="flatten"),
              helper.make_node("MatMul", ["flat_pooled", "w"], ["mm"], name="fc"),
              helper.make_node("Add", ["mm", "bias"], ["fc1"], name="fc_bias")]
    graph = helper.make_graph(
        nodes, "landmark_1k3d68_synthetic",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 3309])], inits)
    return _finish(graph)


def recognition_model() -> onnx.ModelProto:
    """Stand-in for w600k_r50.onnx: [N, 3, 112, 112] -> [N, 512]; one output, so not a detector."""
    inits = [_const("w", np.zeros((3, 512))), numpy_helper.from_array(np.array([-1, 3], np.int64), "flat")]
    nodes = [helper.make_node("GlobalAveragePool", ["input.1"], ["p"]),
             helper.make_node("Reshape", ["p", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["683"])]
    graph = helper.make_graph(
        nodes, "recognition_synthetic",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])], inits)
    return _finish(graph)


def _finish(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime a ComfyUI user may have
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def paint_face(image, stride, cx, cy, red=255, blue=0, scale=1.0):
    """Paint one face for `scrfd_model()` into `image` (uint8 RGB, in place): a square over
    cell (cx, cy) of `stride` in detector pixels, `scale` detector pixels per source pixel
    (640 / longer side for a det_size-640 detector and a square image)."""
    s = stride
    x0, x1 = round(cx * s / scale), round((cx + 1) * s / scale)
    y0, y1 = round(cy * s / scale), round((cy + 1) * s / scale)
    image[y0:y1, x0:x1] = (red, STRIDE_GREEN[s], blue)
    return image


# --- networks with the real files' architecture and op set ---------------------------------------
# The models above check our decoding with outputs known by hand. These check the torch
# interpreter (models/onnx_graph.py) on what the real files contain, with random weights. The
# op sets follow the architectures (insightface's SCRFD configs and iresnet code) and public
# listings of the files' node names; the files themselves cannot be fetched here, and an op this
# list misses is reported by name with the file (tests/test_onnx_torch.py):
# - det_10g / scrfd_10g_bnkps (SCRFD-10GF, a PyTorch export, nodes Conv_N ...): a ResNet-D stem
#   (Conv, Relu, MaxPool), blocks whose shortcut is AveragePool (ceil_mode, no padded cells) + Conv,
#   Add; a PAFPN whose nearest upsampling to the lateral's size is Shape -> Slice -> Concat -> Cast
#   -> Resize (sizes), or a constant-scale Resize / Upsample; heads shared over the strides with
#   Conv + BatchNormalization + Relu, Sigmoid scores, Mul by a learned scale, Transpose + Reshape.
# - 1k3d68 (an mxnet export, nodes bn_data, conv0, ..., fc1): BatchNormalization on the raw input
#   (why insightface feeds it 0..255), Conv, BatchNormalization, Relu / PRelu, MaxPool, Add,
#   Flatten, Gemm.
# (recognizer_onnx.iresnet_recognizer is w600k_r50 / glintr100's.)

class _Net:
    """Accumulates nodes and random initializers (He-scaled, so activations keep their size)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value, stem="c", dtype=np.float32):
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), n))
        return n

    def op(self, op, inputs, name=None, outputs=1, **attrs):
        name = name or self.name(op)
        outs = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x, cin, cout, k=3, stride=1, bias=True, name=None, gain=2.0, bias_value=None, **attrs):
        w = self.rng.normal(0, np.sqrt(gain / (cin * k * k)), (cout, cin, k, k))
        inputs = [x, self.const(w, "w")]
        if bias:
            b = self.rng.normal(0, 0.1, cout) if bias_value is None else np.full(cout, bias_value)
            inputs.append(self.const(b, "b"))
        pads = attrs.pop("pads", [k // 2] * 4)
        return self.op("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride], pads=pads, **attrs)

    def bn(self, x, c, name=None, mean=None, var=None, scale=None, shift=None):
        r = self.rng
        params = [r.uniform(0.5, 1.5, c) if scale is None else scale, r.normal(0, 0.1, c) if shift is None else shift,
                  r.normal(0, 0.1, c) if mean is None else mean, r.uniform(0.5, 1.5, c) if var is None else var]
        return self.op("BatchNormalization", [x] + [self.const(p, "bn") for p in params], name, epsilon=1e-5)

    def prelu(self, x, c, name=None):
        return self.op("PRelu", [x, self.const(self.rng.uniform(0.1, 0.3, (c, 1, 1)), "slope")], name)


def _upsample_to(net, x, ref, resize):
    """Nearest 2x upsampling of x to ref's size, as torch exports F.interpolate."""
    if resize == "sizes":  # F.interpolate(x, size=ref.shape[2:]) in a dynamic-size export
        nc = net.op("Slice", [net.op("Shape", [x]), net.const([0], "i", np.int64), net.const([2], "i", np.int64)])
        hw = net.op("Slice", [net.op("Shape", [ref]), net.const([2], "i", np.int64), net.const([4], "i", np.int64)])
        sizes = net.op("Cast", [net.op("Concat", [nc, hw], axis=0)], to=TensorProto.INT64)
        return net.op("Resize", [x, "", "", sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                      nearest_mode="floor")
    if resize == "scales":  # F.interpolate(x, scale_factor=2)
        return net.op("Resize", [x, net.const([], "roi"), net.const([1, 1, 2, 2], "scales")], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    raise ValueError(resize)


def _res_stage(net, x, cin, cout, blocks, stride, avg_down):
    """ResNet basic blocks; the first changes stride and width through a shortcut
    (AveragePool + 1x1 Conv with avg_down, as SCRFD's ResNet-D, else a strided 1x1 Conv)."""
    for i in range(blocks):
        s = stride if i == 0 else 1
        main = net.conv(net.op("Relu", [net.conv(x, cin, cout, 3, s)]), cout, cout, 3, 1, gain=1.0)
        if i == 0 and (s != 1 or cin != cout):
            short = x
            if avg_down and s != 1:
                short = net.op("AveragePool", [x], kernel_shape=[s, s], strides=[s, s], ceil_mode=1,
                               count_include_pad=0)
                s = 1
            short = net.conv(short, cin, cout, 1, s, pads=[0, 0, 0, 0], gain=1.0)
        else:
            short = x
        x = net.op("Relu", [net.op("Add", [main, short])])
        cin = cout
    return x


def scrfd_net(seed: int = 0, width: int = 8, resize: str = "sizes", planes=None, blocks=(0, 1, 1, 1),
              neck: int | None = None, head: int | None = None, stacked: int = 1,
              score_gain: float = 0.4) -> onnx.ModelProto:
    """det_10g's layout (input "input.1" [1, 3, ?, ?], its 9 output names and shapes) with the op set
    above; random weights, score biases set so that some places of a photo score over 0.5.
    planes / blocks: the backbone's four stages (strides 4, 8, 16, 32; stage 1 keeps stride 4 and
    is skipped with 0 blocks), neck / head / stacked: the PAFPN and head widths and head depth
    (defaults: tiny; benchmarks/onnx_side_by_side.py sizes it like SCRFD-10GF)."""
    net, w = _Net(seed), width
    planes = planes or (w, 2 * w, 4 * w, 4 * w)
    x = net.op("Relu", [net.conv("input.1", 3, w, 3, 2, name="Conv_0")])
    x = net.op("Relu", [net.conv(x, w, w, 3, 1)])
    x = net.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # stride 4
    cin = w
    if blocks[0]:
        x = _res_stage(net, x, cin, planes[0], blocks[0], 1, True)
        cin = planes[0]
    feats = []
    for cout, n in zip(planes[1:], blocks[1:]):  # strides 8, 16, 32
        x = _res_stage(net, x, cin, cout, n, 2, True)
        feats.append((x, cout))
        cin = cout
    w = neck or w
    lat = [net.conv(f, c, w, 1, 1, pads=[0, 0, 0, 0]) for f, c in feats]
    p32 = lat[2]
    p16 = net.op("Add", [lat[1], _upsample_to(net, p32, lat[1], resize)])
    p8 = net.op("Add", [lat[0], _upsample_to(net, p16, lat[0], resize)])
    n16 = net.op("Add", [p16, net.conv(p8, w, w, 3, 2)])
    n32 = net.op("Add", [p32, net.conv(n16, w, w, 3, 2)])
    # one head, its weights shared by the three strides as SCRFD's are
    hw = head or w
    shapes = {"stack": (hw, w)} | {f"stack{i}": (hw, hw) for i in range(1, stacked)}
    head = {k: (net.rng.normal(0, np.sqrt(2 / (9 * cin)), (o, cin, 3, 3)), 0.0) for k, (o, cin) in shapes.items()}
    head |= {k: (net.rng.normal(0, g * np.sqrt(2 / (9 * hw)), (o, hw, 3, 3)), b) for k, o, b, g in
             (("cls", 2, -4.5, score_gain), ("reg", 8, 1.5, 0.05), ("kps", 20, 0.5, 0.05))}
    bn = [[net.rng.uniform(0.5, 1.5, hw), net.rng.normal(0, 0.1, hw), net.rng.normal(0, 0.1, hw),
           net.rng.uniform(0.5, 1.5, hw)] for _ in range(stacked)]
    outs = {"score": [], "box": [], "kps": []}
    for level, stride in zip((p8, n16, n32), (8, 16, 32)):
        def conv(x, key):
            wt, b = head[key]
            return net.op("Conv", [x, net.const(wt, key), net.const(np.full(wt.shape[0], b), key + "_b")],
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        y = level
        for i, key in enumerate(["stack"] + [f"stack{i}" for i in range(1, stacked)]):
            y = net.op("Relu", [net.bn(conv(y, key), hw, mean=bn[i][2], var=bn[i][3], scale=bn[i][0], shift=bn[i][1])])
        for kind, key, width_ in (("score", "cls", 1), ("box", "reg", 4), ("kps", "kps", 10)):
            h = conv(y, key)
            if kind == "box":
                h = net.op("Mul", [h, net.const(np.float32(1.0 + 0.1 * stride / 8), "scale")])
            h = net.op("Reshape", [net.op("Transpose", [h], perm=[0, 2, 3, 1]), net.const([-1, width_], "shape", np.int64)])
            if kind == "score":
                h = net.op("Sigmoid", [h])
            outs[kind].append((h, width_))
    ordered = [o for k in ("score", "box", "kps") for o in outs[k]]
    outputs = []
    for (src, width_), name in zip(ordered, DET10G_OUTPUT_NAMES):
        net.nodes.append(helper.make_node("Identity", [src], [name], name=f"Identity_{name}"))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n_{name}", width_]))
    graph = helper.make_graph(net.nodes, "scrfd_10g_layout",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
                              outputs, net.inits)
    return _finish(graph)


def landmark_net(seed: int = 0, width: int = 8, planes=None, blocks=(1, 1, 1)) -> onnx.ModelProto:
    """1k3d68's layout (input "data" [N, 3, 192, 192], output "fc1" [N, 3309], first node bn_data)
    with the op set above; fc1's bias is the face-like layout of landmark68_model, so the 68 points
    land on a face shape near the box and move with the picture."""
    net, w = _Net(seed), width
    x = net.bn("data", 3, "bn_data", mean=np.full(3, 127.5), var=np.full(3, 128.0 ** 2 - 1e-5),
               scale=np.ones(3), shift=np.zeros(3))  # (x - 127.5) / 128 inside the graph
    x = net.op("Relu", [net.bn(net.conv(x, 3, w, 3, 2, bias=False, name="conv0"), w, "bn0")], "relu0")
    x = net.op("MaxPool", [x], "pool0", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 48
    cin = w
    for i, (cout, n) in enumerate(zip(planes or (w, 2 * w, 2 * w), blocks)):  # 24, 12, 6
        for k in range(n):  # pre-activation blocks, the first one strided with a Conv shortcut
            stride = 2 if k == 0 else 1
            y = net.prelu(net.bn(x, cin), cin)
            y = net.conv(y, cin, cout, 3, stride, bias=False, name=f"conv{i + 1}" if k == 0 else None)
            y = net.conv(net.op("Relu", [net.bn(y, cout)]), cout, cout, 3, 1, bias=False, gain=1.0)
            short = net.conv(x, cin, cout, 1, 2, bias=False, pads=[0, 0, 0, 0], gain=1.0) if k == 0 else x
            x = net.op("Add", [y, short])
            cin = cout
    x = net.op("Flatten", [net.op("Relu", [net.bn(x, cin)])], axis=1)
    bias = np.asarray(landmark68_model().graph.initializer[1].float_data or
                      numpy_helper.to_array(landmark68_model().graph.initializer[1]), np.float32)
    weight = net.rng.normal(0, 0.002, (3309, cin * 36))
    net.op("Gemm", [x, net.const(weight, "fc1_weight"), net.const(bias, "fc1_bias")], "fc1", transB=1)
    graph = helper.make_graph(net.nodes, "landmark_1k3d68_layout",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 3309])], net.inits)
    return _finish(graph)
