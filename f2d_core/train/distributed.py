"""Training on several processes: `torchrun` + torch.distributed, DistributedDataParallel.

One process per GPU (a *rank*), started by `torchrun` (or SLURM / Kubernetes through it),
which sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
`launch()` joins the process group (NCCL on GPUs, gloo on CPUs) with a timeout, so no
rank waits for ever on a rank that is gone, and each rank takes the GPU of its LOCAL_RANK.
Without torchrun (WORLD_SIZE unset or 1) nothing is initialised: one plain process.

How a run is split (see loop.py, data.SampleStream.shard):
- the global batch `--batch-size` B is split into B / world samples per rank, each rank
  accumulating micro-batches of `--micro-batch-size`; DDP averages the gradients;
- rank r takes samples [s·B + r·B/world, s·B + (r+1)·B/world) of step s, and every random
  draw of a sample is seeded by (seed, sample number), so a run depends on the seed only;
- only rank 0 writes files (weights, last.pt, loss.csv/png, samples, the face index);
- an error on one rank reaches every rank: the guarded regions of a step (data, forward,
  rank 0's saving) end with an all-reduce of an error flag, and every rank raises an
  F2DError naming the rank that failed. A rank that dies outright (killed, segfault) is
  noticed by the others' next collective (gloo: at once; NCCL: at the timeout) and torchrun
  stops the remaining workers of its node.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import F2DError

from . import runtime

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600  # a collective that waits longer than this fails (and with it the run)
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise F2DError(f"the environment variable {name}={value!r} is not a number; it is set by torchrun, "
                       "start the trainer with torchrun (or unset it for one process).") from None


class Ranks:
    """This process's place in the run and the few collectives the trainers need.
    Ranks() is the single-process run: every collective is a no-op there."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1):
        self.rank, self.world = int(rank), int(world)
        self.local_rank, self.local_world = int(local_rank), int(local_world)

    def __repr__(self):
        return f"Ranks(rank={self.rank}, world={self.world}, local_rank={self.local_rank})"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ---- devices -------------------------------------------------------------------------------
    def device(self, name: str = "auto") -> torch.device:
        """--device for this rank: "auto" and "cuda" mean the GPU of LOCAL_RANK when several ranks
        share the machine."""
        if not self.distributed or name not in ("auto", "cuda"):
            if self.local_world > 1 and name.startswith("cuda:"):
                raise F2DError(f"--device {name} names one GPU, but torchrun started {self.local_world} processes "
                               "on this machine: give --device cuda (or auto), and each rank takes the GPU of its "
                               "LOCAL_RANK; choose the GPUs with CUDA_VISIBLE_DEVICES.")
            return runtime.resolve_device(name)
        if not torch.cuda.is_available():
            if name == "cuda":
                runtime.resolve_device(name)  # raises the no-CUDA message
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise F2DError(f"rank {self.rank} has LOCAL_RANK {self.local_rank}, but this machine shows only {count} "
                           f"GPU(s): start at most {count} processes per machine (torchrun --nproc_per_node "
                           f"{count}), or check CUDA_VISIBLE_DEVICES.")
        return torch.device("cuda", self.local_rank)

    def _comm_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ---- collectives ----------------------------------------------------------------------------
    def _collective(self, what: str, fn):
        try:
            return fn()
        except RuntimeError as e:  # DistBackendError included: a peer is gone or timed out
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise F2DError(f"rank {self.rank} of {self.world} lost contact with the other ranks during {what} "
                           f"({first}). Another rank stopped or was killed: its own output says why.") from None

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks (the same on every rank)."""
        if not self.distributed:
            return value
        out = value.detach().clone().to(self._comm_device())
        self._collective("the loss average", lambda: dist.all_reduce(out))
        return (out / self.world).to(value.device)

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        self._collective("an exchange of results", lambda: dist.all_gather_object(out, obj))
        return out

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel around the trained module (the module itself for one process).
        Its forward pass must hold no collective, since it runs inside `guard`: buffers are not
        broadcast (only MSID's BatchNorm has buffers; rank 0's running statistics are the ones
        saved), and find_unused_parameters=True, because otherwise DDP broadcasts its bucket order
        at the start of the second forward pass (a rank whose data failed just before would never
        join it: a hang, seen in the tests). The price is one walk over the trained module's small
        autograd graph per step, and a warning each rank's C++ side prints once ("find_unused_parameters=
        True was specified ... but did not find any unused parameters"): expected. Gradients live in
        DDP's all-reduce buckets (no second copy)."""
        if not self.distributed:
            return module
        kw = dict(device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True,
                  find_unused_parameters=True)
        # torch >= 2.13 renamed broadcast_buffers (and warns on the old name)
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        kw["forward_sync_buffers" if new_name else "broadcast_buffers"] = False
        return self._collective("the start of DistributedDataParallel", lambda: DistributedDataParallel(module, **kw))

    @contextlib.contextmanager
    def guard(self, where: str):
        """Run the block on every rank, then agree whether it failed anywhere: if it did, every rank
        raises (the failing one its own error, the others an F2DError naming it). The block must
        hold no collective, or the ranks' collectives would no longer match."""
        if not self.distributed:
            yield
            return
        try:
            yield
        except Exception as e:
            self._agree(str(e) if isinstance(e, F2DError) else f"{type(e).__name__}: {e}", where)
            raise
        self._agree(None, where)

    def _agree(self, failure: str | None, where: str):
        flag = torch.tensor([0 if failure is None else 1], device=self._comm_device())
        self._collective(where, lambda: dist.all_reduce(flag))
        if int(flag.item()) == 0:
            return
        failures = self.gather(failure)
        if failure is None:
            rank, message = next((r, m) for r, m in enumerate(failures) if m is not None)
            raise F2DError(f"rank {rank} of {self.world} stopped ({where}), so rank {self.rank} stops too: {message}")


def current() -> Ranks:
    """The Ranks of the initialised process group (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    rank, world = dist.get_rank(), dist.get_world_size()
    return Ranks(rank, world, _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", world))


def from_env() -> Ranks:
    """The Ranks torchrun's environment describes (before the group is joined)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    return Ranks(rank, world, _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", world))


@contextlib.contextmanager
def launch(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Join torchrun's process group for the duration of a command; yields this process's Ranks.
    A group the caller already initialised (any init method) is used as it is and left open."""
    ranks, owner = from_env(), False
    if ranks.distributed and not dist.is_initialized():
        if not dist.is_available():
            raise F2DError("WORLD_SIZE > 1, but this torch build has no torch.distributed; install a torch "
                           "build with distributed support (the official Linux and Windows wheels have it).")
        missing = [v for v in TORCHRUN_VARS if not os.environ.get(v)]
        if missing:
            raise F2DError(f"WORLD_SIZE={ranks.world} asks for a distributed run, but {', '.join(missing)} "
                           "is not set: start the trainer with torchrun (see docs/training.md), which sets them.")
        if timeout_s <= 0:
            raise F2DError(f"--dist-timeout must be a positive number of seconds, got {timeout_s:g}")
        dev = ranks.device(device)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {}
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            kw["device_id"] = dev
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
        owner = True
    ranks = current()
    if ranks.distributed:
        if not ranks.is_main:  # every rank runs the same settings: rank 0 speaks for all
            logging.getLogger().setLevel(logging.ERROR)
        log.info("distributed run: %d ranks (%s), %d per machine", ranks.world, dist.get_backend(),
                 ranks.local_world)
    try:
        yield ranks
    finally:
        if owner:
            dist.destroy_process_group()
