"""Training-only dependencies: a clear message when they are missing.

Node users never install these; the trainer needs requirements-train.txt."""
from __future__ import annotations

import importlib

from ..errors import F2DError

INSTALL = ("pip install -r requirements-train.txt  (from the repository root, in the Python environment that "
           "has torch; it installs diffusers, matplotlib and tqdm and never touches torch)")


def require(module: str, purpose: str):
    """Import `module` or raise an F2DError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise F2DError(f"{purpose} needs the `{module.split('.')[0]}` package, which is not installed ({e}). "
                       f"Install the training dependencies: {INSTALL}") from None
