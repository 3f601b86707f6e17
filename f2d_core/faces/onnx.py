"""insightface's ONNX files, read as they are and run by torch (models/onnx_graph.py).

No onnxruntime and no `onnx` package: onnxruntime comes in a dozen builds that all write the same
`onnxruntime/` folder, so a pack that installs one breaks the others' GPU build (issue 22), and
`onnx` pulls protobuf, which other packs pin. Each file is read once per process and device
(cached by real path, size and mtime, so a replaced file is read again); nothing is written.
"""
from __future__ import annotations

import functools
import mmap
import os
import sys
from struct import error as struct_error
from typing import NamedTuple

import numpy as np
import torch

from ..errors import CheckpointError, F2DError
from ..models.onnx_graph import OnnxGraph, UnsupportedOp, fields, graph_span, parse_model

FIX = ("download the insightface model pack again (buffalo_l.zip or antelopev2.zip) and unzip it "
       "over this folder")


def torch_device(device) -> torch.device:
    """'auto' (CUDA, else Apple MPS, else the CPU), 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device."""
    if isinstance(device, torch.device):
        return device
    dev = str(device).lower()
    if dev == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        return torch.device(dev)
    except RuntimeError:
        raise F2DError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}.") from None


def _missing(path):
    if os.path.islink(path) and not os.path.exists(path):
        return CheckpointError(
            f"{path} is a broken symbolic link (it points to {os.readlink(path)!r}, which does not exist). "
            f"Point the link at the real file or copy the file in its place.")
    return CheckpointError(
        f"ONNX model file not found: {path}. Expected an insightface model file such as "
        f"det_10g.onnx; put the model pack folder under ComfyUI/models/insightface/models/ "
        f"and check the file name.")


def onnx_files(folder) -> tuple[list, list]:
    """(the .onnx files of a folder, sorted; its .onnx links that lead nowhere, as "name -> target")."""
    files, broken = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() != ".onnx":
            continue
        if p.is_file():
            files.append(p)
        elif p.is_symlink():  # dangling, or a loop: exists() is False for both
            try:
                target = os.readlink(p)
            except OSError:
                target = "?"
            broken.append(f"{p.name} -> {target}")
    return files, broken


def missing_files_message(files, broken) -> str:
    """What a pack folder holds, for "not found" messages: the files, and the broken links by name."""
    found = ", ".join(p.name for p in files) or ("no readable .onnx files" if broken else "no .onnx files")
    if broken:
        found += (f"; broken symbolic link(s): {', '.join(broken)} (the link's target does not exist or "
                  f"the links loop; point each link at the real file, or copy the file in its place)")
    return found


def _mapped(path):
    """The file's bytes, memory-mapped: a summary touches only the graph, never the weights."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def file_key(path) -> tuple:
    """(real path, size, mtime): what the caches are keyed by."""
    real = os.path.realpath(os.fspath(path))
    if not os.path.isfile(real):
        raise _missing(os.fspath(path))
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _graph(real: str, size: int, mtime_ns: int, device: str) -> OnnxGraph:
    name = os.path.basename(real)
    try:
        with open(real, "rb") as f:
            buf = _mapped(real)  # the structure is read from the map; each weight straight from the file

            def read_raw(_, start, end, dtype):
                array = np.empty((end - start) // dtype.itemsize, dtype)
                f.seek(start)
                if f.readinto(memoryview(array).cast("B")) != end - start:
                    raise ValueError("truncated tensor data")
                return array if sys.byteorder == "little" else array.byteswap()

            try:
                model = parse_model(buf, read_raw)
            finally:
                if isinstance(buf, mmap.mmap):
                    buf.close()
        graph = OnnxGraph(model)
    except UnsupportedOp as exc:
        raise CheckpointError(
            f"{name} ({real}) uses {exc.what}, which the pack's ONNX reader does not run"
            f"{' (' + exc.why + ')' if exc.why else ''}: it is not one of insightface's face models (SCRFD "
            f"det_10g / scrfd_10g_bnkps, 1k3d68, w600k_r50, glintr100). Use the .onnx files of buffalo_l "
            f"or antelopev2 as they come.") from exc
    except (ValueError, struct_error, UnicodeError) as exc:
        raise CheckpointError(
            f"{name} could not be read as an ONNX model ({real}): {exc}. The file is probably truncated "
            f"or not an ONNX model; {FIX}.") from exc
    graph.eval().requires_grad_(False)
    return graph.to(torch.device(device))


def load_graph(path, device="auto") -> OnnxGraph:
    """The ONNX file as a torch module on `device` (cached per file and device)."""
    real, size, mtime = file_key(path)
    return _graph(real, size, mtime, str(torch_device(device)))


class GraphSummary(NamedTuple):
    node_names: list  # names of the first nodes, in graph order
    num_outputs: int


def read_graph_summary(path, max_nodes: int = 8) -> GraphSummary:
    """First node names and output count of an ONNX file (ModelProto.graph = 7;
    GraphProto.node = 1, .output = 12; NodeProto.name = 3), reading none of its weights.
    ValueError if it is not ONNX."""
    names, outputs = [], 0
    buf = _mapped(path)
    try:
        span = graph_span(buf)
        if span is None:
            raise ValueError(f"{path} has no ONNX graph")
        for num, wire, value in fields(buf, *span):
            if num == 12 and wire == 2:
                outputs += 1
            elif num == 1 and wire == 2 and len(names) < max_nodes:
                name = ""
                for nnum, _, nvalue in fields(buf, *value):
                    if nnum == 3:
                        name = bytes(buf[nvalue[0]:nvalue[1]]).decode("utf-8", "replace")
                names.append(name)
    except (ValueError, struct_error, IndexError) as exc:
        raise ValueError(f"{path} is not a readable ONNX file: {exc}") from exc
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()
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
