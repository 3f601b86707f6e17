"""What both trainers share: optimizer and schedule, the step loop, saving, exact resuming.

A subclass sets `self.trainable` (the modules whose weights and optimizer state are saved),
and implements `loss(batch, step, micro)`, `batches(start_step)` and `export()` (the
official-format weight files); `after_save()` and `periodic()` are optional hooks.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np
import torch

from ..errors import F2DError

from . import runtime
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

    def setup_runtime(self, cfg):
        self.cfg = cfg
        self.device = runtime.resolve_device(cfg.device)
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        runtime.setup_backend(self.device)
        os.makedirs(cfg.out, exist_ok=True)
        self.step = 0

    def setup_optimizer(self, params, schedule: str = "constant"):
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(max(0, cfg.warmup_steps), cfg.steps, schedule))
        self.scaler = runtime.make_scaler(self.device, self.precision)

    def autocast(self):
        return runtime.autocast(self.device, self.precision)

    @property
    def accumulation(self) -> int:
        micro = self.cfg.micro_batch_size or self.cfg.batch_size
        if micro < 1 or self.cfg.batch_size % micro:
            raise F2DError(f"--batch-size {self.cfg.batch_size} must be a multiple of --micro-batch-size {micro}")
        return self.cfg.batch_size // micro

    def params(self):
        return [p for m in self.trainable.values() for p in m.parameters()]

    def train_step(self, batches) -> dict:
        """One optimizer step over `accumulation` micro-batches; returns {"loss": mean loss}."""
        acc = self.accumulation
        total = 0.0
        for micro in range(acc):
            loss = self.loss(next(batches), self.step, micro)
            self.scaler.scale(loss / acc).backward()
            total += float(loss.detach()) / acc
        if getattr(self.cfg, "max_grad_norm", 0) > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        self.step += 1
        return {"loss": total}

    # ---- state ---------------------------------------------------------------------------------
    def save(self):
        self.export()
        save_state(os.path.join(self.cfg.out, STATE_FILE), step=self.step,
                   modules={k: m.state_dict() for k, m in self.trainable.items()},
                   optimizer=self.optimizer.state_dict(), lr_schedule=self.lr_schedule.state_dict(),
                   scaler=self.scaler.state_dict(), config=plain(dataclasses.asdict(self.cfg)))

    def resume(self):
        path = os.path.join(self.cfg.out, STATE_FILE)
        if not os.path.isfile(path):
            raise F2DError(f"--resume: {path} does not exist; there is no run to continue in {self.cfg.out}.")
        state = load_state(path)
        old = state["config"]
        changed = [k for k in self.resume_keys if old.get(k) != plain(getattr(self.cfg, k))]
        if changed:
            raise F2DError(f"--resume: these settings differ from the run in {self.cfg.out}: "
                           + ", ".join(f"{k} {old.get(k)!r} -> {getattr(self.cfg, k)!r}" for k in changed)
                           + ". Use the run's settings, or start a new run in another --out folder.")
        for k, m in self.trainable.items():
            m.load_state_dict(state["modules"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        log.info("resumed %s at step %d", self.cfg.out, self.step)

    # ---- the run ---------------------------------------------------------------------------------
    def periodic(self, last: bool):
        """Called after every step (samples, evaluations)."""

    def run(self, resume: bool = False) -> str:
        from .logbook import Logbook
        cfg = self.cfg
        if resume:
            self.resume()
        elif os.path.isfile(os.path.join(cfg.out, STATE_FILE)):
            raise F2DError(f"{cfg.out} already holds a training run ({STATE_FILE}); pass --resume to continue it, "
                           "or choose another --out folder.")
        book = Logbook(cfg.out, ("loss",), self.step, cfg.steps, cfg.progress, title=self.title)
        batches = self.batches(self.step)
        try:
            while self.step < cfg.steps:
                lr = self.optimizer.param_groups[0]["lr"]
                metrics = self.train_step(batches)
                if not np.isfinite(metrics["loss"]):
                    raise F2DError(f"the loss became {metrics['loss']} at step {self.step}; lower --lr, or use "
                                   "--precision fp32 / bf16 instead of fp16.")
                book.write(self.step, lr, **metrics)
                last = self.step == cfg.steps
                if last or (cfg.save_every and self.step % cfg.save_every == 0):
                    self.save()
                    book.plot()
                self.periodic(last)
        finally:
            book.close()
        return self.cfg.out

    def loader(self, dataset, start_sample: int, micro: int, flip: bool):
        """Endless micro-batches from sample number `start_sample` on (see data.SampleStream)."""
        from .data import SampleStream
        stream = SampleStream(len(dataset), self.cfg.seed, flip)

        class _Batches:  # DataLoader takes any iterable of index lists
            def __iter__(self):
                return stream.batches(start_sample, micro)

        return iter(torch.utils.data.DataLoader(dataset, batch_sampler=_Batches(), num_workers=self.cfg.workers,
                                                pin_memory=self.device.type == "cuda"))
