"""F2D_ENCODER: the engine's encoder and its face detector's networks under ComfyUI's memory management."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn

import comfy.model_management as mm
import comfy.model_patcher

from ..f2d_core.identity.encoder import F2DEncoder, load_encoder
from ..f2d_core.identity.expression import ExpressionRegressor, load_expression_model


class _Patchable(nn.Module):
    """ModelPatcher writes `model.device`; F2DEncoder derives its device from its weights, so it
    sits inside this plain container."""

    def __init__(self, encoder: F2DEncoder, device):
        super().__init__()
        self.encoder = encoder
        self.device = device


class EncoderHandle:
    """What flows through an F2D_ENCODER socket. The weights live on ComfyUI's offload device
    and are loaded onto its compute device before each use, so ComfyUI can evict them: nodes take
    the engine's F2DEncoder inside `with handle.loaded() as encoder:` and hand it to the engine."""

    def __init__(self, encoder: F2DEncoder, load_device, offload_device, detector=None, detector_name=None):
        self.encoder = encoder
        self.load_device, self.offload_device = load_device, offload_device
        self.patcher = comfy.model_patcher.ModelPatcher(_Patchable(encoder, offload_device),
                                                        load_device=load_device, offload_device=offload_device)
        self.detector = detector
        self.detector_name = detector_name
        self.detector_patchers = network_patchers(detector, load_device, offload_device)
        self.expression_model: ExpressionRegressor | None = None  # optional
        self._expression_patcher = None

    def with_parts(self, detector, detector_name, expression=None) -> "EncoderHandle":
        """A handle sharing this encoder, with its own detector and (regressor, patcher) pair."""
        other = object.__new__(EncoderHandle)
        model, patcher = expression if expression is not None else (None, None)
        other.__dict__.update(self.__dict__, detector=detector, detector_name=detector_name,
                              detector_patchers=network_patchers(detector, self.load_device, self.offload_device),
                              expression_model=model, _expression_patcher=patcher)
        return other

    def _with_detector(self, patchers: list) -> list:
        return patchers + self.detector_patchers

    def reference_expression(self, images, **kw) -> torch.Tensor:
        """(N, 64) Deep3DFaceRecon expression coefficients (on the CPU) of the faces in `images`,
        picked as Encode Face picks them (kw: ExpressionRegressor.crops's)."""
        mm.load_models_gpu(self._with_detector([self._expression_patcher]), force_full_load=True)
        return self.expression_model.expression(images, self.detector, **kw)

    @contextmanager
    def loaded(self):
        """The engine's F2DEncoder, on ComfyUI's compute device for the duration of the block."""
        # always whole: a partial (lowvram) load would leave cls_token/pos_embed/null_exp behind;
        # the detector's networks come along, since every encode starts with a detection
        mm.load_models_gpu(self._with_detector([self.patcher]), force_full_load=True)
        yield self.encoder

    def describe(self) -> str:
        p = next(self.encoder.parameters())
        expr = os.path.basename(self.expression_model.path) if self.expression_model else "none"
        return (f"{os.path.basename(self.encoder.msid_path)} + {os.path.basename(self.encoder.mapping_path)} "
                f"({self.encoder.family.label}), "
                f"{str(p.dtype).replace('torch.', '')}, detector: {self.detector_name or 'none'}, "
                f"expression model: {expr}")


_cache: dict = {}
_expression_cache: dict = {}
_network_cache: dict = {}


def network_patchers(owner, load_device, offload_device) -> list:
    """ModelPatchers over the torch modules of a face detector or identity scorer (insightface's ONNX
    files run by torch: det_10g, 1k3d68, w600k_r50), so ComfyUI moves them to its compute device for a
    run and evicts them when it needs the memory; [] when there are none (dlib). One patcher per
    network, kept: the detector shared by the loader and Face Similarity (faces.onnx caches one
    module per file) is counted and moved by one patcher, and ComfyUI tracks patchers weakly."""
    nets = owner.networks() if owner is not None and hasattr(owner, "networks") else []
    patchers = []
    for net in nets:
        key = (id(net), str(load_device), str(offload_device))
        if key not in _network_cache:
            if len(_network_cache) >= 8:
                _network_cache.pop(next(iter(_network_cache)))
            _network_cache[key] = comfy.model_patcher.ModelPatcher(
                _Patchable(net, offload_device), load_device=load_device, offload_device=offload_device)
        patchers.append(_network_cache[key])
    return patchers


def devices(choice: str) -> tuple:
    """(load, offload) device for a node's device input: "auto" is ComfyUI's, anything else the CPU."""
    if choice == "auto":
        return mm.get_torch_device(), mm.unet_offload_device()
    return torch.device("cpu"), torch.device("cpu")


def _file_key(path):
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def load_handle(msid_path, mapping_path, device_choice="auto", dtype=None) -> EncoderHandle:
    """Built once per (files, device, dtype) and reused across graphs and runs."""
    load_device, offload_device = devices(device_choice)
    dtype = dtype or torch.float32  # "auto" (None) is fp32, as in the official code; fp16/bf16 only when chosen
    key = (_file_key(msid_path), _file_key(mapping_path), str(load_device), str(dtype))
    if key not in _cache:
        encoder = load_encoder(msid_path, mapping_path, device=offload_device, dtype=dtype)
        _cache.clear()  # one encoder at a time: a new file replaces the old one
        _cache[key] = EncoderHandle(encoder, load_device, offload_device)
    return _cache[key]


def load_expression(path, load_device, offload_device):
    """(Deep3DFaceRecon regressor, its ModelPatcher), built once per file (fp32: small, runs rarely).
    One patcher per model: ComfyUI tracks patchers weakly, and a dropped one that was on the GPU
    would leave the weights there unaccounted for."""
    key = (_file_key(path), str(load_device), str(offload_device))
    if key not in _expression_cache:
        _expression_cache.clear()
        model = load_expression_model(path, device=offload_device)
        patcher = comfy.model_patcher.ModelPatcher(_Patchable(model.net, offload_device),
                                                   load_device=load_device, offload_device=offload_device)
        _expression_cache[key] = (model, patcher)
    return _expression_cache[key]
