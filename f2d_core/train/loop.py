"""What both trainers share: optimizer and schedule, the step loop, saving, exact resuming.

A subclass sets `self.trainable` (the modules whose weights and optimizer state are saved)
and `self.model` (the module its loss calls, `self.wrap(...)`: DistributedDataParallel under
torchrun), and implements `loss(batch, step, micro)`, `batches(start_step)` and `export()`
(the official-format weight files); `periodic()` is an optional hook (rank 0 only).

Under torchrun (distributed.py) the global batch is split over the ranks, only rank 0
writes, and an error on any rank stops every rank with a message naming it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os

import numpy as np
import torch

from ..errors import F2DError

from . import distributed, runtime
from .state import STATE_FILE, load_state, save_state

log = logging.getLogger(__name__)


def lr_lambda(warmup: int, total: int, schedule: str):
    """Linear warm-up over `warmup` steps, then constant or cosine decay to 0 at `total`."""
    def f(step):
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            done = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        return 1.0
    return f


def plain(v):
    """Config values as stored in the run state (tuples become lists)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


class BaseTrainer:
    resume_keys: tuple = ()       # settings a resumed run must share with the original
    title = "training"
    # None: a run may be resumed on another number of ranks; else why not (the refusal says it)
    world_size_fixed_because: str | None = None

    def setup_runtime(self, cfg):
        self.cfg = cfg
        self.ranks = distributed.current()
        self.device = self.ranks.device(cfg.device)
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        runtime.setup_backend(self.device)
        self._split_batch()
        if self.ranks.is_main:
            os.makedirs(cfg.out, exist_ok=True)
        self.step = 0
        self.model = None

    def _split_batch(self):
        """Samples per rank and per forward pass: --batch-size is the global batch."""
        cfg, world = self.cfg, self.ranks.world
        if cfg.batch_size % world:
            raise F2DError(f"--batch-size {cfg.batch_size} cannot be split evenly over the {world} ranks of this run "
                           f"(torchrun --nproc_per_node x --nnodes): give a multiple of {world}, or run on a number "
                           f"of processes that divides {cfg.batch_size}.")
        self.per_rank_batch = cfg.batch_size // world
        self.micro = cfg.micro_batch_size or self.per_rank_batch
        if self.micro < 1 or self.per_rank_batch % self.micro:
            where = f" over {world} ranks is {self.per_rank_batch} per rank, which" if world > 1 else ""
            raise F2DError(f"--batch-size {cfg.batch_size}{where} must be a multiple of --micro-batch-size "
                           f"{self.micro}.")

    def setup_optimizer(self, params, schedule: str = "constant"):
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(max(0, cfg.warmup_steps), cfg.steps, schedule))
        self.scaler = runtime.make_scaler(self.device, self.precision)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module the loss calls: DistributedDataParallel around `module` under torchrun."""
        self.model = self.ranks.wrap(module, self.device)
        return self.model

    def autocast(self):
        return runtime.autocast(self.device, self.precision)

    @property
    def accumulation(self) -> int:
        """Micro-batches per rank and optimizer step."""
        return self.per_rank_batch // self.micro

    def sample_numbers(self, step: int, micro: int, count: int) -> range:
        """The stream numbers of the samples in this rank's micro-batch `micro` of `step` (see
        data.SampleStream.shard): what seeds each sample's random draws."""
        first = step * self.cfg.batch_size + self.ranks.rank * self.per_rank_batch + micro * self.micro
        return range(first, first + count)

    def params(self):
        return [p for m in self.trainable.values() for p in m.parameters()]

    def _gradient_sync(self, sync: bool):
        """DDP all-reduces the gradients in the last micro-batch's backward pass only."""
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def train_step(self, batches) -> dict:
        """One optimizer step over `accumulation` micro-batches on every rank; returns {"loss": the
        mean loss of the global batch}."""
        acc = self.accumulation
        losses = []
        for micro in range(acc):
            with self.ranks.guard(f"step {self.step + 1}"):  # data and forward pass: an error stops every rank
                loss = self.loss(next(batches), self.step, micro)
            with self._gradient_sync(micro == acc - 1):
                self.scaler.scale(loss / acc).backward()
            losses.append(loss.detach().float())
        total = self.ranks.mean(torch.stack(losses).mean())
        if getattr(self.cfg, "max_grad_norm", 0) > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        self.step += 1
        return {"loss": float(total)}

    # ---- state ---------------------------------------------------------------------------------
    def save(self):
        """Weights and the resume state (call on rank 0: the ranks hold the same weights)."""
        self.export()
        save_state(os.path.join(self.cfg.out, STATE_FILE), step=self.step,
                   modules={k: m.state_dict() for k, m in self.trainable.items()},
                   optimizer=self.optimizer.state_dict(), lr_schedule=self.lr_schedule.state_dict(),
                   scaler=self.scaler.state_dict(), config=plain(dataclasses.asdict(self.cfg)),
                   world_size=self.ranks.world)

    def resume(self):
        path = os.path.join(self.cfg.out, STATE_FILE)
        if not os.path.isfile(path):
            raise F2DError(f"--resume: {path} does not exist; there is no run to continue in {self.cfg.out}.")
        state = load_state(path)
        old = state["config"]
        # a setting the saved run predates (e.g. `base` of SD1.x-only versions) had its default then
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg)}
        changed = [k for k in self.resume_keys if old.get(k, plain(defaults.get(k))) != plain(getattr(self.cfg, k))]
        if changed:
            raise F2DError(f"--resume: these settings differ from the run in {self.cfg.out}: "
                           + ", ".join(f"{k} {old.get(k)!r} -> {getattr(self.cfg, k)!r}" for k in changed)
                           + ". Use the run's settings, or start a new run in another --out folder.")
        was = int(state["world_size"])
        if was != self.ranks.world:
            if self.world_size_fixed_because is not None:
                raise F2DError(f"--resume: the run in {self.cfg.out} was trained on {was} rank(s), this one has "
                               f"{self.ranks.world}. {self.world_size_fixed_because} Resume it on {was} process(es) "
                               "(torchrun --nproc_per_node x --nnodes), or start a new run in another --out folder.")
            log.info("resuming a run of %d rank(s) on %d: the same samples and random draws, the gradients are "
                     "summed in another order", was, self.ranks.world)
        for k, m in self.trainable.items():
            m.load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        log.info("resumed %s at step %d", self.cfg.out, self.step)

    # ---- the run ---------------------------------------------------------------------------------
    def periodic(self, last: bool):
        """Called on rank 0 after every step (samples, evaluations)."""

    def run(self, resume: bool = False) -> str:
        from .logbook import Logbook
        cfg, main = self.cfg, self.ranks.is_main
        book = None
        with self.ranks.guard("starting the run"):
            if resume:
                self.resume()
            elif os.path.isfile(os.path.join(cfg.out, STATE_FILE)):
                raise F2DError(f"{cfg.out} already holds a training run ({STATE_FILE}); pass --resume to continue "
                               "it, or choose another --out folder.")
            if main:
                book = Logbook(cfg.out, ("loss",), self.step, cfg.steps, cfg.progress, title=self.title)
        batches = self.batches(self.step)
        try:
            while self.step < cfg.steps:
                lr = self.optimizer.param_groups[0]["lr"]
                metrics = self.train_step(batches)
                if not np.isfinite(metrics["loss"]):  # the global mean: every rank stops here together
                    raise F2DError(f"the loss became {metrics['loss']} at step {self.step}; lower --lr, or use "
                                   "--precision fp32 / bf16 instead of fp16.")
                last = self.step == cfg.steps
                with self.ranks.guard(f"saving step {self.step}"):
                    if main:
                        book.write(self.step, lr, **metrics)
                        if last or (cfg.save_every and self.step % cfg.save_every == 0):
                            self.save()
                            book.plot()
                        self.periodic(last)
        finally:
            if book is not None:
                book.close()
        return self.cfg.out

    def loader(self, dataset, start_step: int, flip: bool):
        """This rank's endless micro-batches from optimizer step `start_step` on (data.SampleStream.shard)."""
        from .data import SampleStream
        stream = SampleStream(len(dataset), self.cfg.seed, flip)
        cfg, ranks, micro = self.cfg, self.ranks, self.micro

        class _Batches:  # DataLoader takes any iterable of index lists
            def __iter__(self):
                return stream.shard(start_step, cfg.batch_size, ranks.rank, ranks.world, micro)

        return iter(torch.utils.data.DataLoader(dataset, batch_sampler=_Batches(), num_workers=self.cfg.workers,
                                                pin_memory=self.device.type == "cuda"))
