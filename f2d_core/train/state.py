"""Run state for exact resuming: what `last.pt` holds, and per-step randomness.

Every random draw for a training sample (noise, timestep, expression dropout, VAE sampling,
dropout inside the mapping network) comes from a generator seeded by (run seed, sample
number), and the data order is a function of the sample number (data.SampleStream). So a
run resumed from step s draws exactly what the uninterrupted run drew, and what a sample
draws does not depend on the micro-batch or the rank it lands in. The global RNG states
(torch, CUDA, numpy, python) are saved and restored as well, for anything else that draws.

The file is written atomically and read back with torch.load(weights_only=True): only
tensors, numbers, strings, lists and dicts are stored.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

STATE_FILE = "last.pt"
STATE_VERSION = 2  # 2: per-sample random draws, world size recorded


def step_seed(seed: int, step: int, micro: int = 0) -> int:
    """A distinct 63-bit seed per (run seed, optimizer step, micro-batch)."""
    return (int(seed) * 6_364_136_223_846_793_005 + int(step) * 1_442_695_040_888_963_407 + int(micro) * 2_654_435_761
            + 1) % (1 << 63)


def sample_seed(seed: int, sample: int) -> int:
    """A distinct 63-bit seed per (run seed, sample number), unrelated to the step seeds."""
    return (int(seed) * 2_862_933_555_777_941_757 + int(sample) * 3_202_034_522_624_059_733
            + 7_046_029_254_386_353_131) % (1 << 63)


def sample_generator(seed: int, sample: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, sample))


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
        raise F2DError(f"{path}: run state version {state.get('version')}, this trainer reads {STATE_VERSION}: the run "
                       "was written by another version of the trainer, whose random draws differ, so it cannot be "
                       "continued exactly. Start a new run in another --out folder (--init-mapping / --init can "
                       "start it from the weights the old run saved).")
    set_rng_state(state["rng"])
    return state
