"""ONNX Runtime sessions, and the little we need to know about an ONNX file.

Only onnxruntime is a runtime dependency: the `onnx` package is not installed by
ComfyUI, so the two facts insightface reads with it (the first node names, which
decide a landmark model's input normalisation, and the output count, which tells
an SCRFD detector apart) are read here straight from the protobuf wire format.
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

from ..errors import CheckpointError, F2DError

log = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_cuda_libs_preloaded = False


def _providers(device: str) -> list:
    import onnxruntime

    dev = str(device).lower()
    if dev not in ("auto", "cpu", "cuda") and not dev.startswith("cuda:"):
        raise F2DError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if dev == "cpu":
        return [_CPU]
    if _CUDA not in onnxruntime.get_available_providers():
        if dev != "auto":
            log.warning("onnxruntime has no CUDA provider here (install onnxruntime-gpu); "
                        "face detection runs on the CPU.")
        return [_CPU]
    global _cuda_libs_preloaded
    preload = getattr(onnxruntime, "preload_dlls", None)  # ORT >= 1.21: find pip-installed CUDA/cuDNN
    if callable(preload) and not _cuda_libs_preloaded:
        _cuda_libs_preloaded = True
        try:
            preload()
        except Exception as exc:  # torch has usually loaded them already
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    device_id = int(dev.split(":", 1)[1]) if ":" in dev else 0
    return [(_CUDA, {"device_id": device_id}), _CPU]


def make_session(model_path, device: str = "auto"):
    """An InferenceSession on CUDA when onnxruntime offers it (device auto/cuda), else CPU."""
    import onnxruntime

    path = os.fspath(model_path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"ONNX model file not found: {path}. Expected an insightface model file such as "
            f"det_10g.onnx; put the model pack folder under ComfyUI/models/insightface/models/ "
            f"and check the file name.")
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3  # errors only, as insightface does
    # onnxruntime's CPU threads otherwise keep spinning after each run and take the cores from
    # what comes next (resizing the next photo, the MSID encoder): measured 1.4x slower
    # detection and 1.6x slower encoding right after it on 2 cores (benchmarks/RESULTS.md)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(path, sess_options=opts, providers=_providers(device))
    except F2DError:
        raise
    except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        raise CheckpointError(
            f"{name} could not be loaded as an ONNX model ({path}): {exc}. The file is probably "
            f"truncated or not an ONNX model; download the insightface model pack again "
            f"(the .onnx files inside buffalo_l or antelopev2).") from exc


class GraphSummary(NamedTuple):
    node_names: list  # names of the first nodes, in graph order
    num_outputs: int


def _varint(f) -> int:
    value = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError("truncated protobuf")
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7


def _fields(f, end: int):
    """Yield (field number, payload start, payload length) of length-delimited fields; skip the rest."""
    while f.tell() < end:
        key = _varint(f)
        wire = key & 7
        if wire == 0:
            _varint(f)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        elif wire == 2:
            size = _varint(f)
            start = f.tell()
            yield key >> 3, start, size
            f.seek(start + size)  # seek, so huge initializers are never read
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def read_graph_summary(path, max_nodes: int = 8) -> GraphSummary:
    """First node names and output count of an ONNX file (ModelProto.graph = 7;
    GraphProto.node = 1, .output = 12; NodeProto.name = 3). ValueError if it is not ONNX."""
    names, outputs = [], 0
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            f.seek(0)
            for num, start, size in _fields(f, end):
                if num != 7:
                    continue
                for gnum, gstart, gsize in _fields(f, start + size):
                    if gnum == 12:
                        outputs += 1
                    elif gnum == 1 and len(names) < max_nodes:
                        name = ""
                        for nnum, nstart, nsize in _fields(f, gstart + gsize):
                            if nnum == 3:
                                f.seek(nstart)
                                name = f.read(nsize).decode("utf-8", "replace")
                        names.append(name)
    except (EOFError, UnicodeError) as exc:
        raise ValueError(f"{path} is not a readable ONNX file: {exc}") from exc
    if outputs == 0:
        raise ValueError(f"{path} has no ONNX graph outputs")
    return GraphSummary(names, outputs)


def normalises_itself(path, bn_data: bool = False) -> bool:
    """insightface's rule for converted mxnet models: nodes named Sub and Mul among the first 8
    (or, for the landmark model, a leading bn_data) mean the graph scales its own input, which
    then gets raw 0..255 pixels instead of (x - mean) / std."""
    names = read_graph_summary(path).node_names[:8]
    lead = bn_data and "bn_data" in names[:3]
    has_sub = lead or any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = lead or any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul
