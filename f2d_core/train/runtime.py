"""Device and mixed precision for the trainers.

precision "auto": bf16 autocast on GPUs that support it, else fp16 autocast with loss
scaling; fp32 on the CPU. Frozen networks are stored in the autocast dtype on the GPU
(half the memory); trained weights and the optimizer stay fp32.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import F2DError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise F2DError("--device cuda was asked for, but this torch sees no CUDA GPU (torch "
                       f"{torch.__version__}); use --device cpu or install a CUDA build of torch.")
    return dev


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise F2DError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise F2DError("fp16 training needs a CUDA GPU; on the CPU use fp32 (or bf16).")
    return name


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def frozen_dtype(device: torch.device, precision: str) -> torch.dtype:
    """dtype to store frozen networks in: the autocast dtype on the GPU, fp32 on the CPU."""
    return DTYPES[precision] if device.type == "cuda" else torch.float32


def make_scaler(device: torch.device, precision: str):
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))


def setup_backend(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
