"""The option values users pick in the nodes and on the command line, and their parsing."""
from __future__ import annotations

import re

import torch

from .errors import F2DError

FACE_CHOICES = ("largest", "most confident", "index")
ON_NO_FACE = ("error", "skip")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check(name, value, allowed):
    if value not in allowed:
        raise F2DError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def face_policy(choice: str, index: int = 0):
    """Node/CLI face choice -> detect.select_face policy ("largest", "confident" or an int)."""
    _check("face", choice, FACE_CHOICES)
    if choice == "index":
        if int(index) < 0:
            raise F2DError(f"face index must be 0 or more (0 = the largest face), got {index}")
        return int(index)
    return "largest" if choice == "largest" else "confident"


def on_no_face(choice: str) -> str:
    _check("on no face", choice, ON_NO_FACE)
    return choice


def precision(choice: str):
    """None for "auto" (decided per device), else a torch dtype."""
    _check("precision", choice, PRECISIONS)
    return DTYPES.get(choice)


def parse_vector(text: str, dim: int = 64, name: str = "expression vector") -> torch.Tensor:
    """`dim` numbers separated by commas, spaces or newlines (brackets allowed) -> float32 tensor."""
    parts = [p for p in re.split(r"[\s,;\[\]()]+", text or "") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", p))
        raise F2DError(f"{name}: {bad!r} is not a number; give {dim} numbers separated by commas.") from None
    if len(values) != dim:
        decimal_comma = re.search(r"[-+]?\d+,\d+", text)  # '0,5': a comma between digits, no space
        if decimal_comma:
            raise F2DError(f"{name}: expected {dim} numbers, got {len(values)}: the text writes decimals with a "
                           f"comma ({decimal_comma.group()!r}), and ',' also separates the numbers, so each number "
                           "is read as two. Write decimals with a point (0.5, not 0,5), separated by commas.")
        raise F2DError(f"{name}: expected {dim} numbers, got {len(values)}. Paste all {dim} coefficients, "
                       "separated by commas.")
    t = torch.tensor(values, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise F2DError(f"{name}: contains NaN or infinite values.")
    return t
