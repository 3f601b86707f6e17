"""ONNX graphs run by torch: a protobuf wire-format reader and an interpreter for the op set of
insightface's face models (SCRFD det_10g / scrfd_10g_bnkps, 1k3d68, ArcFace w600k_r50 / glintr100).

Hand-written because the well-kept converter, onnx2torch (1.5.15: numpy, onnx, torch, torchvision),
would install `onnx`, which pulls `protobuf`, a package other ComfyUI packs pin to other major
versions, and torchvision, which pip may pair with another torch than ComfyUI's; these graphs need
about 50 plain ops, and this file reads the five protobuf messages they use straight from the bytes.

`parse_model(buffer)` -> `OnnxModel` (nodes, initializers as numpy arrays, inputs, outputs);
`OnnxGraph(model)` is an nn.Module: float initializers are buffers, so `.to(device)`, `.half()`
and ComfyUI's ModelPatcher move it like any network. Nothing here opens files (faces/onnx.py does).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- protobuf wire format -------------------------------------------------------------------------


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated protobuf (the file ends inside a field)")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 70:
            raise ValueError("malformed protobuf varint")


def fields(buf, start: int = 0, end: int | None = None):
    """Yield (field number, wire type, value) of one message in buf[start:end]; for wire type 2
    (length-delimited) the value is the (start, end) span, so big tensors are never copied here."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = pos, pos + 8
        elif wire == 5:
            value, pos = pos, pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = (pos, pos + size), pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (not an ONNX file?)")
        if pos > end or num == 0:
            raise ValueError("truncated or malformed protobuf")
        yield num, wire, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8")


def _ints(buf, wire, value) -> list:
    """A repeated int64 field entry: packed (wire 2) or one varint."""
    if wire == 0:
        return [_int64(value)]
    out, pos = [], value[0]
    while pos < value[1]:
        v, pos = _varint(buf, pos)
        out.append(_int64(v))
    return out


def _floats(buf, wire, value) -> list:
    if wire == 5:
        return [struct.unpack_from("<f", buf, value)[0]]
    return list(np.frombuffer(buf[value[0]:value[1]], "<f4"))


# TensorProto.DataType -> numpy
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
           10: np.float16, 11: np.float64}


def _copy_raw(buf, start, end, dtype) -> np.ndarray:
    """raw_data bytes -> a new native-order array (ONNX stores little-endian)."""
    return np.frombuffer(buf[start:end], np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _tensor(buf, start, end, read_raw=_copy_raw) -> tuple[str, np.ndarray]:
    """TensorProto: dims = 1, data_type = 2, float_data = 4, int32_data = 5, int64_data = 7,
    name = 8, raw_data = 9, double_data = 10, data_location = 14 (1: external file)."""
    dims, dtype, name, raw, listed = [], 1, "", None, []
    for num, wire, value in fields(buf, start, end):
        if num == 1:
            dims += _ints(buf, wire, value)
        elif num == 2:
            dtype = value
        elif num == 8:
            name = _text(buf, value)
        elif num == 9:
            raw = value
        elif num == 4:
            listed += _floats(buf, wire, value)
        elif num in (5, 7):
            listed += _ints(buf, wire, value)
        elif num == 10:
            listed += (list(np.frombuffer(buf[value[0]:value[1]], "<f8")) if wire == 2
                       else [struct.unpack_from("<d", buf, value)[0]])
        elif num == 14 and value == 1:
            raise ValueError(f"tensor {name or '?'} keeps its data in an external file, which is not supported")
    if dtype not in _DTYPES:
        raise ValueError(f"tensor {name or '?'} has ONNX data type {dtype}, which these face models never use")
    np_dtype = np.dtype(_DTYPES[dtype])
    if raw is not None:
        if (raw[1] - raw[0]) % np_dtype.itemsize:
            raise ValueError(f"tensor {name or '?'} has {raw[1] - raw[0]} bytes of data, not whole {np_dtype} values")
        array = read_raw(buf, raw[0], raw[1], np_dtype)
    elif dtype == 10:  # float16 listed as int32 bit patterns
        array = np.asarray(listed, np.uint16).view(np.float16)
    else:
        array = np.asarray(listed, np_dtype)
    count = int(np.prod(dims)) if dims else 1
    if array.size != count:
        raise ValueError(f"tensor {name or '?'} holds {array.size} values for shape {dims} (truncated file?)")
    return name, array.reshape(dims)


def _attribute(buf, start, end):
    """AttributeProto: name = 1, f = 2, i = 3, s = 4, t = 5, g = 6, floats = 7, ints = 8, strings = 9."""
    name, value, floats, ints, strings = "", None, [], [], []
    for num, wire, v in fields(buf, start, end):
        if num == 1:
            name = _text(buf, v)
        elif num == 2:
            value = struct.unpack_from("<f", buf, v)[0]
        elif num == 3:
            value = _int64(v)
        elif num == 4:
            value = bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
        elif num == 5:
            value = _tensor(buf, *v)[1]
        elif num == 6:
            value = _Subgraph()
        elif num == 7:
            floats += _floats(buf, wire, v)
        elif num == 8:
            ints += _ints(buf, wire, v)
        elif num == 9:
            strings.append(bytes(buf[v[0]:v[1]]).decode("utf-8", "replace"))
    if value is None:
        value = floats or ints or strings
    return name, value


class _Subgraph:
    """An attribute holding a graph (If / Loop bodies): these face models have none."""


@dataclass
class Node:
    op: str
    name: str
    inputs: list
    outputs: list
    attrs: dict
    domain: str = ""


@dataclass
class ValueInfo:
    name: str
    shape: list  # per axis: an int, a str (a named, dynamic axis) or None; [] when the file gives none


@dataclass
class OnnxModel:
    opset: int
    nodes: list
    initializers: dict            # name -> numpy array
    inputs: list                  # ValueInfo of the graph inputs that are not initializers
    outputs: list                 # ValueInfo


def _node(buf, start, end) -> Node:
    """NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5, domain = 7."""
    ins, outs, name, op, attrs, domain = [], [], "", "", {}, ""
    for num, _, v in fields(buf, start, end):
        if num == 1:
            ins.append(_text(buf, v))
        elif num == 2:
            outs.append(_text(buf, v))
        elif num == 3:
            name = _text(buf, v)
        elif num == 4:
            op = _text(buf, v)
        elif num == 5:
            key, value = _attribute(buf, *v)
            attrs[key] = value
        elif num == 7:
            domain = _text(buf, v)
    return Node(op, name, ins, outs, attrs, domain)


def _value_info(buf, start, end) -> ValueInfo:
    """ValueInfoProto: name = 1, type = 2 -> TypeProto.tensor_type = 1 -> shape = 2 -> dim = 1
    -> dim_value = 1 | dim_param = 2."""
    name, shape = "", []
    for num, _, v in fields(buf, start, end):
        if num == 1:
            name = _text(buf, v)
        elif num == 2:
            for tnum, _, tv in fields(buf, *v):
                if tnum != 1:
                    continue
                for snum, _, sv in fields(buf, *tv):
                    if snum != 2:
                        continue
                    shape = []
                    for dnum, _, dv in fields(buf, *sv):
                        if dnum != 1:
                            continue
                        dim = None
                        for knum, _, kv in fields(buf, *dv):
                            dim = kv if knum == 1 else (_text(buf, kv) if knum == 2 else dim)
                        shape.append(dim)
    return ValueInfo(name, shape)


def graph_span(buf) -> tuple[int, int] | None:
    """(start, end) of ModelProto.graph (field 7), None when there is none."""
    span = None
    for num, wire, v in fields(buf):
        if num == 7 and wire == 2:
            span = v
    return span


def parse_model(buf, read_raw=_copy_raw) -> OnnxModel:
    """Read a ModelProto (graph = 7, opset_import = 8) from a
    bytes-like buffer (bytes, mmap). read_raw(buf, start, end, dtype) -> array gives each weight's
    data (a file reader can read it straight into its array). ValueError when it is not a complete
    ONNX model."""
    opset, graph = 0, None
    for num, wire, v in fields(buf):
        if num == 7 and wire == 2:
            graph = v
        elif num == 8 and wire == 2:  # OperatorSetIdProto: domain = 1, version = 2
            domain, version = "", 0
            for onum, _, ov in fields(buf, *v):
                domain = _text(buf, ov) if onum == 1 else domain
                version = ov if onum == 2 else version
            if domain in ("", "ai.onnx"):
                opset = version
    if graph is None:
        raise ValueError("no ONNX graph in it")
    nodes, inits, inputs, outputs = [], {}, [], []
    for num, wire, v in fields(buf, *graph):  # GraphProto: node = 1, initializer = 5, input = 11, output = 12
        if wire != 2:
            continue
        if num == 1:
            nodes.append(_node(buf, *v))
        elif num == 5:
            name, array = _tensor(buf, *v, read_raw=read_raw)
            inits[name] = array
        elif num == 11:
            inputs.append(_value_info(buf, *v))
        elif num == 12:
            outputs.append(_value_info(buf, *v))
    if not outputs or not nodes:
        raise ValueError("the ONNX graph has no nodes or no outputs")
    inputs = [i for i in inputs if i.name not in inits]
    return OnnxModel(opset or 13, nodes, inits, inputs, outputs)


# --- the ops --------------------------------------------------------------------------------------


class UnsupportedOp(ValueError):
    """An op (or an op's setting) this interpreter does not run: .what names the op and node."""

    def __init__(self, node: Node, why: str = ""):
        self.op, self.node_name, self.why = node.op, node.name, why
        self.what = f"op {node.op!r} (node {node.name!r})"
        super().__init__(self.what + (f": {why}" if why else " is not supported"))


def _ints_of(t) -> list:
    """Shape-like operands (Reshape's shape, Slice's starts...) as Python ints."""
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(t).reshape(-1)]


def _pads(node, spatial):
    """ONNX pads (x1_begin, x2_begin, ..., x1_end, x2_end) and auto_pad, as F.pad's order (last axis first)."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID", ""):
        return auto  # SAME_UPPER / SAME_LOWER, resolved per input size
    pads = list(node.attrs.get("pads", [0] * (2 * spatial)))
    begin, end = pads[:spatial], pads[spatial:]
    return [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]


def _same_pads(size, kernel, stride, dilation, lower):
    out = []
    for n, k, s, d in zip(reversed(size), reversed(kernel), reversed(stride), reversed(dilation)):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        out += [big, small] if lower else [small, big]
    return out


def _resolved_pads(pads, x, kernel, stride, dilation):
    if isinstance(pads, str):
        return _same_pads(list(x.shape[2:]), kernel, stride, dilation, pads == "SAME_LOWER")
    return pads


def _symmetric(pads):
    """(torch padding per axis, first-axis-first) when begin == end on every axis, else None."""
    begin, end = pads[0::2], pads[1::2]
    return tuple(reversed(begin)) if begin == end else None


def _conv(node, x, w, b=None):
    spatial = w.dim() - 2
    stride = node.attrs.get("strides", [1] * spatial)
    dilation = node.attrs.get("dilations", [1] * spatial)
    pads = _resolved_pads(_pads(node, spatial), x, list(w.shape[2:]), stride, dilation)
    padding = _symmetric(pads)
    if padding is None:
        x, padding = F.pad(x, pads), 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, b, stride, padding, dilation, node.attrs.get("group", 1))


def _pool(node, x, kind):
    spatial = x.dim() - 2
    kernel = node.attrs["kernel_shape"]
    stride = node.attrs.get("strides", [1] * spatial)
    dilation = node.attrs.get("dilations", [1] * spatial)
    ceil = bool(node.attrs.get("ceil_mode", 0))
    pads = _resolved_pads(_pads(node, spatial), x, kernel, stride, dilation)
    padding = _symmetric(pads)
    if kind == "max":
        if padding is None:
            x, padding = F.pad(x, pads, value=float("-inf")), 0
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
        return pool(x, kernel, stride, padding, dilation, ceil_mode=ceil)
    include = bool(node.attrs.get("count_include_pad", 0))
    if padding is None or any(2 * p > k for p, k in zip(padding, kernel)):
        if not include:
            raise UnsupportedOp(node, "asymmetric padding without count_include_pad")
        x, padding = F.pad(x, pads), 0
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
    return pool(x, kernel, stride, padding, ceil_mode=ceil, count_include_pad=include)


def _batch_norm(node, x, scale, bias, mean, var, *_):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attrs.get("epsilon", 1e-5))


def _prelu(node, x, slope):
    per_channel = (x.dim() >= 2 and slope.dim() == x.dim() - 1 and slope.shape[0] == x.shape[1]
                   and all(d == 1 for d in slope.shape[1:]))  # (C, 1, 1): what the exports store
    if slope.numel() == 1 or per_channel:
        return F.prelu(x, slope.reshape(-1))  # one kernel
    return torch.where(x >= 0, x, x * slope)  # ONNX broadcasting otherwise ((C,) meets the last axis)


def _gemm(node, a, b, c=None):
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if (node.attrs.get("transB", 0) and not node.attrs.get("transA", 0) and alpha == beta == 1.0
            and (c is None or c.dim() == 1)):
        return F.linear(a, b, c)  # the usual fully connected layer, in one call
    if node.attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if node.attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _reshape(node, x, shape):
    shape = _ints_of(shape)
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(node, given, opset_moved, opset):
    """Axes from the attribute (old opsets) or the second input (opset >= opset_moved)."""
    if opset >= opset_moved and given is not None:
        return _ints_of(given)
    return node.attrs.get("axes")


def _unsqueeze(node, opset, x, axes=None):
    axes = _axes(node, axes, 13, opset)
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(node, opset, x, axes=None):
    axes = _axes(node, axes, 13, opset)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _slice(node, opset, x, starts=None, ends=None, axes=None, steps=None):
    if opset < 10:
        starts, ends, axes, steps = node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None
    else:
        starts, ends = _ints_of(starts), _ints_of(ends)
        axes = _ints_of(axes) if axes is not None else None
        steps = _ints_of(steps) if steps is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a, n = a % x.dim(), x.shape[a]
        if st > 0:  # Python's slice clamps as ONNX does (negative ends count from the end)
            x = x[(slice(None),) * a + (slice(s, e, st),)]
            continue
        # negative steps (torch slices have none): ONNX clamps starts to [0, n-1], ends to [-1, n-1]
        s = min(max(s + n if s < 0 else s, 0), n - 1)
        e = min(max(e + n if e < 0 else e, -1), n - 1)
        idx = list(range(n))[s:(None if e < 0 else e):st]
        x = x.index_select(a, torch.tensor(idx, dtype=torch.long, device=x.device))
    return x


def _gather(node, x, idx):
    axis = node.attrs.get("axis", 0) % x.dim()
    idx = idx.to(torch.long) if isinstance(idx, torch.Tensor) else torch.as_tensor(idx, dtype=torch.long)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).to(x.device)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


def _resize(node, opset, x, *rest):
    """Resize (opset >= 10: X, [roi], scales, [sizes]) and Upsample (X, scales, or a scales
    attribute). nearest (floor / round_prefer_floor, asymmetric) and (bi)linear with
    half_pixel / align_corners / asymmetric: what torch exports from F.interpolate."""
    mode = node.attrs.get("mode", "nearest")
    if node.op == "Upsample" or opset < 11:
        scales = rest[0] if rest else node.attrs.get("scales")
        sizes = None
        coord = "asymmetric"
    else:
        scales = rest[1] if len(rest) > 1 else None
        sizes = rest[2] if len(rest) > 2 else None
        coord = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if sizes is not None and _numel(sizes):
        out = _ints_of(sizes)[2:]
        factors = None
    else:
        s = [float(v) for v in (scales.reshape(-1).tolist() if isinstance(scales, torch.Tensor) else scales)]
        if s[:2] != [1.0, 1.0]:
            raise UnsupportedOp(node, "scaling the batch or channel axis")
        factors = s[2:]
        out = [int(np.floor(n * f)) for n, f in zip(x.shape[2:], factors)]
    if mode == "nearest":
        nearest = node.attrs.get("nearest_mode", "round_prefer_floor")
        if coord == "asymmetric" and nearest == "floor":
            return F.interpolate(x, size=out, mode="nearest")  # torch's nearest is ONNX's asymmetric floor
        upsampling = all(o % n == 0 for o, n in zip(out, x.shape[2:]))
        if (upsampling and coord in ("asymmetric", "half_pixel", "pytorch_half_pixel")
                and nearest in ("round_prefer_floor", "round_prefer_ceil")):
            return F.interpolate(x, size=out, mode="nearest")  # whole-number factors: these rules agree
        raise UnsupportedOp(node, f"nearest resize with {coord} / {nearest}")
    if mode == "linear":
        linear = ("linear", "bilinear", "trilinear")[x.dim() - 3]
        if coord == "align_corners":
            return F.interpolate(x, size=out, mode=linear, align_corners=True)
        if coord in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=out, mode=linear, align_corners=False)
        raise UnsupportedOp(node, f"linear resize with {coord}")
    raise UnsupportedOp(node, f"resize mode {mode!r}")


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else int(np.asarray(t).size)


def _split(node, opset, x, split=None):
    axis = node.attrs.get("axis", 0)
    if opset >= 13 and split is not None:
        sizes = _ints_of(split)
    elif "split" in node.attrs:
        sizes = node.attrs["split"]
    else:
        n = node.attrs.get("num_outputs", len(node.outputs))
        total = x.shape[axis]
        sizes = [-(-total // n)] * (n - 1)
        sizes.append(total - sum(sizes))
    return tuple(torch.split(x, sizes, dim=axis))


def _clip(node, opset, x, lo=None, hi=None):
    if opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    lo = None if lo is None or (isinstance(lo, torch.Tensor) and not lo.numel()) else lo
    hi = None if hi is None or (isinstance(hi, torch.Tensor) and not hi.numel()) else hi
    return torch.clamp(x, lo, hi)


def _reduce(fn):
    def op(node, opset, x, axes=None):
        axes = _axes(node, axes, 18, opset)
        keep = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=[a % x.dim() for a in axes], keepdim=keep)
    return op


def _softmax(node, opset, x):
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
    if opset >= 13:
        return torch.softmax(x, axis)
    shape = x.shape  # opset < 13: softmax over the flattened trailing axes
    return torch.softmax(x.reshape(int(np.prod(shape[:axis])), -1), 1).reshape(shape)


def _flatten(node, x):
    axis = node.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _concat(node, *xs):
    xs = [x for x in xs if x.numel() or x.dim() > 1]
    devices = {x.device for x in xs}
    if len(devices) > 1:  # a shape vector (CPU) joined with a computed one
        xs = [x.to(xs[0].device) for x in xs]
    return torch.cat(xs, node.attrs.get("axis", 0))


def _cast(node, x):
    to = _DTYPES.get(node.attrs["to"])
    if to is None:
        raise UnsupportedOp(node, f"cast to ONNX type {node.attrs['to']}")
    dtype = {np.float32: torch.float32, np.float16: torch.float16, np.float64: torch.float32,
             np.int64: torch.int64, np.int32: torch.int64, np.int8: torch.int8, np.uint8: torch.uint8,
             np.int16: torch.int64, np.bool_: torch.bool}[to]
    if x.is_floating_point() and dtype.is_floating_point:
        return x  # float casts keep the module's dtype (fp16 / fp32 as the module was moved)
    return x.to(dtype)


def _constant_of_shape(node, shape):
    value = node.attrs.get("value")
    fill = torch.as_tensor(np.asarray(value).reshape(-1)[0] if value is not None else np.float32(0))
    return torch.full(_ints_of(shape), fill.item(), dtype=fill.dtype)


def _shape(node, x):
    dims = list(x.shape)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
    return torch.tensor(dims[start:end] if ("start" in node.attrs or "end" in node.attrs) else dims,
                        dtype=torch.int64)


def _binary(fn):
    def op(node, a, b):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device != b.device:
            # shape arithmetic happens on the CPU; a scalar meeting a device tensor goes along
            if a.dim() == 0 or a.numel() == 1:
                a = a.to(b.device)
            else:
                b = b.to(a.device)
        return fn(a, b)
    return op


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates
    return a / b


def _transpose(node, x):
    perm = node.attrs.get("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def _pad(node, opset, x, pads=None, value=None, axes=None):
    mode = node.attrs.get("mode", "constant")
    pads = node.attrs.get("pads") if opset < 11 else _ints_of(pads)
    if opset < 11:
        fill = node.attrs.get("value", 0.0)
    else:
        fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
    if axes is not None:
        raise UnsupportedOp(node, "pad axes")
    n = x.dim()
    begin, end = pads[:n], pads[n:]
    torch_pads = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return F.pad(x, torch_pads, value=fill)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


# op -> (function, whether it takes the opset after the node)
OPS = {
    "Conv": (_conv, False),
    "BatchNormalization": (_batch_norm, False),
    "Relu": (lambda n, x: F.relu(x), False),
    "LeakyRelu": (lambda n, x: F.leaky_relu(x, n.attrs.get("alpha", 0.01)), False),
    "PRelu": (_prelu, False),
    "Sigmoid": (lambda n, x: torch.sigmoid(x), False),
    "Tanh": (lambda n, x: torch.tanh(x), False),
    "Abs": (lambda n, x: x.abs(), False),
    "Neg": (lambda n, x: -x, False),
    "Sqrt": (lambda n, x: x.sqrt(), False),
    "Exp": (lambda n, x: x.exp(), False),
    "Floor": (lambda n, x: x.floor(), False),
    "Ceil": (lambda n, x: x.ceil(), False),
    "Add": (_binary(torch.add), False),
    "Sub": (_binary(torch.sub), False),
    "Mul": (_binary(torch.mul), False),
    "Div": (_binary(_div), False),
    "Pow": (_binary(torch.pow), False),
    "MatMul": (_binary(torch.matmul), False),
    "Gemm": (_gemm, False),
    "MaxPool": (lambda n, x: _pool(n, x, "max"), False),
    "AveragePool": (lambda n, x: _pool(n, x, "avg"), False),
    "GlobalAveragePool": (lambda n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True), False),
    "GlobalMaxPool": (lambda n, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True), False),
    "Softmax": (_softmax, True),
    "Flatten": (_flatten, False),
    "Reshape": (_reshape, False),
    "Transpose": (_transpose, False),
    "Concat": (_concat, False),
    "Split": (_split, True),
    "Slice": (_slice, True),
    "Gather": (_gather, False),
    "Shape": (_shape, False),
    "Unsqueeze": (_unsqueeze, True),
    "Squeeze": (_squeeze, True),
    "Cast": (_cast, False),
    "Clip": (_clip, True),
    "ReduceMean": (_reduce(torch.mean), True),
    "ReduceSum": (_reduce(torch.sum), True),
    "ReduceMax": (_reduce(torch.amax), True),
    "Resize": (_resize, True),
    "Upsample": (_resize, True),
    "Pad": (_pad, True),
    "ConstantOfShape": (_constant_of_shape, False),
    "Identity": (lambda n, x: x, False),
    "Dropout": (lambda n, x, *_: x, False),  # inference: Dropout is the identity
}




# --- the graph as an nn.Module --------------------------------------------------------------------


def _fold_batch_norms(model: OnnxModel) -> list:
    """Conv -> BatchNormalization pairs (the Conv output used by the BN alone, all constants)
    become one Conv with adjusted weights, as onnxruntime's graph optimiser does: fewer passes."""
    users = {}
    for n in model.nodes:
        for i in n.inputs:
            users[i] = users.get(i, 0) + 1
    graph_outputs = {o.name for o in model.outputs}
    inits, by_output, drop = model.initializers, {}, set()
    nodes = list(model.nodes)
    for n in nodes:
        for o in n.outputs:
            by_output[o] = n
    for k, bn in enumerate(nodes):
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1:
            continue
        conv = by_output.get(bn.inputs[0])
        if (conv is None or conv.op != "Conv" or users.get(conv.outputs[0]) != 1 or conv.outputs[0] in graph_outputs
                or not all(i in inits for i in conv.inputs[1:] + bn.inputs[1:5])):
            continue
        w = inits[conv.inputs[1]].astype(np.float64)
        b = inits[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
        scale, shift, mean, var = (inits[i].astype(np.float64) for i in bn.inputs[1:5])
        factor = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        new_w, new_b = f"{conv.name}_folded_w", f"{conv.name}_folded_b"
        inits[new_w] = (w * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        inits[new_b] = ((b - mean) * factor + shift).astype(np.float32)
        nodes[nodes.index(conv)] = Node("Conv", conv.name, [conv.inputs[0], new_w, new_b], list(bn.outputs),
                                        conv.attrs, conv.domain)
        drop.add(id(bn))
    return [n for n in nodes if id(n) not in drop]


class OnnxGraph(nn.Module):
    """An ONNX model run by torch. forward(*inputs) -> tuple of the graph outputs; `run(arrays)`
    takes and returns numpy, on whatever device the module's buffers are."""

    def __init__(self, model: OnnxModel, fold_batch_norms: bool = True):
        super().__init__()
        unknown = sorted(n.op for n in model.nodes if n.op not in OPS or n.domain not in ("", "ai.onnx"))
        if unknown:
            bad = next(n for n in model.nodes if n.op in unknown)
            others = sorted(set(unknown) - {bad.op})
            raise UnsupportedOp(bad, f"also {', '.join(others)}" if others else "")
        nodes = _fold_batch_norms(model) if fold_batch_norms else list(model.nodes)
        self.opset = model.opset
        self.inputs, self.outputs = model.inputs, model.outputs
        needed = {i for n in nodes for i in n.inputs}
        self._consts = {}  # integer / bool constants (shapes, axes, indices): stay on the CPU
        self._buffer_of = {}
        for name, array in model.initializers.items():
            if name in needed:
                self._keep(name, array)
        self._steps = []
        for n in nodes:
            if n.op == "Constant":
                value = n.attrs.get("value")
                if value is None:
                    for k in ("value_float", "value_int", "value_floats", "value_ints"):
                        if k in n.attrs:
                            value = np.asarray(n.attrs[k], np.float32 if "float" in k else np.int64)
                if value is None:
                    raise UnsupportedOp(n, "a Constant without a tensor value")
                self._keep(n.outputs[0], np.asarray(value))
                continue
            fn, takes_opset = OPS[n.op]
            self._steps.append((n, fn, takes_opset))
        # when each value is last used, so intermediate activations are freed as the graph runs
        last = {}
        for k, (n, _, _) in enumerate(self._steps):
            for i in n.inputs:
                last[i] = k
        keep = {o.name for o in self.outputs}
        self._free = [[i for i in set(n.inputs) if last.get(i) == k and i not in keep]
                      for k, (n, _, _) in enumerate(self._steps)]


    def _keep(self, name: str, array: np.ndarray) -> None:
        """A weight or constant of the graph: floats become buffers (moved with the module), integer
        and bool constants (shapes, axes, indices) stay CPU tensors. The readers give native byte order."""
        if array.dtype.kind == "f":
            key = f"t{len(self._buffer_of)}"
            self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(array, np.float32)))
            self._buffer_of[name] = key
        else:
            self._consts[name] = torch.from_numpy(np.array(array))
    def forward(self, *inputs):
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the graph takes {len(self.inputs)} input(s), got {len(inputs)}")
        env = dict(self._consts)
        for name, key in self._buffer_of.items():
            env[name] = getattr(self, key)
        for info, x in zip(self.inputs, inputs):
            env[info.name] = x
        for (node, fn, takes_opset), free in zip(self._steps, self._free):
            args = [env[i] if i else None for i in node.inputs]
            while args and args[-1] is None:
                args.pop()
            try:
                out = fn(node, self.opset, *args) if takes_opset else fn(node, *args)
            except UnsupportedOp:
                raise
            except (RuntimeError, IndexError, KeyError, TypeError, ValueError) as exc:
                raise RuntimeError(f"node {node.name!r} ({node.op}) failed: {exc}") from exc
            if isinstance(out, tuple):
                env.update(zip(node.outputs, out))
            else:
                env[node.outputs[0]] = out
            for i in free:
                env.pop(i, None)
        return tuple(env[o.name] for o in self.outputs)

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers())).device if self._buffer_of else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.buffers())).dtype if self._buffer_of else torch.float32

    @torch.inference_mode()
    def run(self, *arrays, channels_last: bool = False) -> list:
        """numpy in (float32 NCHW), numpy float32 out; runs where the module is, in its dtype.
        channels_last: hand the convolutions NHWC input (faster for large pictures, see detect.py)."""
        device, dtype = self.device, self.dtype
        xs = [torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype) for a in arrays]
        if channels_last:
            xs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]
        return [o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in self(*xs)]
