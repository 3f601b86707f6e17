"""Run state for exact resuming: what `last.pt` holds, and per-step randomness.

Every random draw of a training step (noise, timesteps, expression dropout, VAE sampling,
dropout inside the mapping network) comes from generators seeded by (run seed, step), and
the data order is a function of the sample number (data.SampleStream). So a run resumed
from step s draws exactly what the uninterrupted run drew. The global RNG states (torch,
CUDA, numpy, python) are saved and restored as well, for anything else that draws.

The file is written atomically and read back with torch.load(weights_only=True): only
tensors, numbers, strings, lists and dicts are stored.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

STATE_FILE = "last.pt"
STATE_VERSION = 1


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, optimizer step, micro-batch)."""
    return (int(seed) * 6_364_136_223_846_793_005 + int(step) * 1_442_695_040_888_963_407 + int(micro) * 2_654_435_761
            + 1) % (1 << 63)


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, micro))


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                     int(np_state[3]), float(np_state[4])],
           "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str, **state) -> None:
    state = dict(state, version=STATE_VERSION, rng=rng_state())
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash never leaves a half-written state


def load_state(path: str) -> dict:
    from ..errors import F2DError
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise F2DError(f"{path}: the run state could not be read ({type(e).__name__}: {e}). Start a new run in "
                       "another --out folder, or restore the file.") from None
    if state.get("version") != STATE_VERSION:
        raise F2DError(f"{path}: run state version {state.get('version')}, this trainer reads {STATE_VERSION}.")
    set_rng_state(state["rng"])
    return state
