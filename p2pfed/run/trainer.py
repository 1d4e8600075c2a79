"""A peer's local training: its model, optimizer, partition stream and SCAFFOLD controls, and
the round's k local steps. The round state goes in and out here (state.py).
"""
from __future__ import annotations

import logging

import torch

from ..consensus import roundstate
from ..learning import augment, model, scaffold, train
from ..outputs.metrics import MetricsWriter
from .faults import FaultInjector, FaultPoint
from .state import capture_state, restore_state

log = logging.getLogger("p2pfed.run.trainer")


class Trainer:
    def __init__(self, cfg, peer_id: int, n_peers: int, train_split, plan, metrics: MetricsWriter,
                 faults: FaultInjector):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.plan = plan
        self.metrics = metrics
        self.faults = faults
        self.global_batch = cfg.train.batch_size * n_peers
        self.net = model.channels_last(model.build(cfg.model, seed=cfg.data.seed))
        self.opt = train.make_optimizer(self.net, cfg.train)
        self.controls = scaffold.Controls(self.net) if cfg.train.scaffold else None
        self.carried: dict = {}          # scaffold.* (c) and outer.* entries of the last committed round
        self.global_step = 0
        self.batches = augment.stream(train_split, cfg.train.batch_size,
                                      torch.Generator().manual_seed(augment.peer_seed(cfg.data.seed, peer_id)),
                                      cfg.train.augment, cfg.model.input_size)
        # a copy: round 1's anchor for the outer step, and the schema received states must match
        self.template = capture_state(self.net, self.opt, cfg.train, copy=True)

    def state(self, copy: bool = False) -> dict:
        """My round state now; what I send carries my own control variate c_i in place of c."""
        sent = self.carried
        if self.controls:
            sent = {**sent, **{roundstate.SCAFFOLD + k: v for k, v in self.controls.local.items()}}
        return capture_state(self.net, self.opt, self.tcfg, sent, copy=copy)

    def load(self, state: dict, global_step: int | None = None) -> None:
        """Train on from a committed round state: model, averaged optimizer buffers, the
        federation's control variate c, outer momentum."""
        if global_step is not None:
            self.global_step = global_step
        self.carried = restore_state(self.net, self.opt, self.tcfg, state, self.global_step)
        if self.controls:
            self.controls.set_common(roundstate.split(self.carried).scaffold)

    def train_round(self, rnd: int) -> list[float]:
        """The round's local steps; the `train` fault point is halfway through them."""
        steps = self.plan.steps[rnd - 1]
        half = max(1, steps // 2)
        epoch0 = self.global_step / self.plan.steps_per_epoch

        def on_step(i: int, loss: float) -> None:
            self.metrics.write("step", round=rnd, step=i, steps=steps, loss=round(loss, 5),
                               global_step=self.global_step + i,
                               epoch=round(epoch0 + i / self.plan.steps_per_epoch, 4))

        hook = self.controls.round_hook() if self.controls else None
        losses = self._steps(half, on_step, hook)
        self.faults.at(rnd, FaultPoint.TRAIN)
        losses += self._steps(steps - half, lambda i, loss: on_step(half + i, loss), hook, done=half)
        if self.controls:
            self.controls.finish_round()
        self.global_step += len(losses)
        return losses

    def _steps(self, n: int, on_step, hook, done: int = 0) -> list[float]:
        return train.train_steps(self.net, self.opt, self.batches, self.tcfg, n, self.global_step + done,
                                 self.plan.total_steps, self.global_batch, on_step, grad_hook=hook)
