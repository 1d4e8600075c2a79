"""A peer's local training: its model, optimizer, partition stream and SCAFFOLD controls, and
the round's k local steps. The round state goes in and out here (state.py).
"""
from __future__ import annotations

import copy
import logging
import time

import torch

from ...consensus import roundstate
from ...learning import augment, capture, model, photos, scaffold, schedule, syncbn, train
from ...outputs.metrics import MetricsWriter
from .faults import FaultInjector, FaultPoint
from .state import capture_state, restore_state

log = logging.getLogger("p2pfed.run.trainer")


class Trainer:
    def __init__(self, cfg, peer_id: int, n_peers: int, train_split, plan, metrics: MetricsWriter,
                 faults: FaultInjector, dev: torch.device = torch.device("cpu")):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.plan = plan
        self.metrics = metrics
        self.faults = faults
        self.global_batch = cfg.train.batch_size * n_peers
        self.device = dev
        self._host = capture.HostBuffers() if dev.type == "cuda" else None   # pinned, for the round state
        self.net = model.channels_last(model.build(cfg.model, seed=cfg.data.seed, classes=train_split.classes)).to(dev)
        if cfg.train.batchnorm == "sync":
            syncbn.convert(self.net)
        self.freeze_step = round(cfg.train.freeze_bn_at * plan.total_steps) if cfg.train.batchnorm == "frozen" \
            else None
        self._saved: tuple | None = None
        self.opt = train.make_optimizer(self.net, cfg.train)
        self.controls = scaffold.Controls(self.net) if cfg.train.scaffold else None
        self.carried: dict = {}          # scaffold.* (c), outer.* and auto.* entries of the last committed round
        self.global_step = 0
        self.last_images = 0             # images processed by the last round's steps
        seed = augment.peer_seed(cfg.data.seed, peer_id)
        # photos are decoded while training, in threads (photos.py); the unreadable ones are named in decoder.bad
        self.decoder = photos.Decoder(cfg.data.workers) if train_split.stream else None
        if self.decoder:
            self.batches = photos.PhotoStream(train_split.files, train_split.labels, cfg.train.batch_size,
                                              torch.Generator().manual_seed(seed), cfg.train.augment,
                                              cfg.model.input_size, cfg.model.input_size, self.decoder, device=dev)
        else:   # on a GPU the partition lives there as uint8 and is cropped and flipped there
            self.batches = augment.stream(augment.on_device(train_split, dev), cfg.train.batch_size,
                                          torch.Generator(device=dev).manual_seed(seed), cfg.train.augment,
                                          cfg.model.input_size)
        # a copy: round 1's anchor for the outer step, and the schema received states must match
        self.template = capture_state(self.net, self.opt, cfg.train, copy=True)

    def state(self, copy: bool = False) -> dict:
        """My round state now; what I send carries my own control variate c_i in place of c."""
        sent = self.carried
        if self.controls:
            sent = {**sent, **{roundstate.SCAFFOLD + k: v for k, v in self.controls.local.items()}}
        return capture_state(self.net, self.opt, self.tcfg, sent, copy=copy, buffers=self._host)

    def load(self, state: dict, global_step: int | None = None) -> None:
        """Train on from a committed round state: model, averaged optimizer buffers, the
        federation's control variate c, outer momentum."""
        if global_step is not None:
            self.global_step = global_step
        self.carried = restore_state(self.net, self.opt, self.tcfg, state, self.global_step)
        if self.controls:
            self.controls.set_common(roundstate.split(self.carried).scaffold)

    @property
    def bn_frozen(self) -> bool:
        """FixBN: from freeze_bn_at of the run on, BatchNorm normalizes with the averaged statistics."""
        return self.freeze_step is not None and self.global_step >= self.freeze_step

    def begin_round(self, rnd: int) -> None:
        """Before a round that may have to be trained again (synchronized BatchNorm: a member
        that dies mid-step voids the step for everyone): draw its batches and keep what it starts
        from, so that restore_round() can put it back."""
        batches = [next(self.batches) for _ in range(self.plan.steps[rnd - 1])]
        controls = (copy.deepcopy(self.controls.local), self.controls.trained) if self.controls else None
        self._saved = (rnd, batches, {k: v.clone() for k, v in self.net.state_dict().items()},
                       copy.deepcopy(self.opt.state_dict()), self.global_step, controls)

    def restore_round(self) -> list:
        """Back to the start of the round begin_round() saw; returns its batches."""
        rnd, batches, net_state, opt_state, global_step, controls = self._saved
        self.net.load_state_dict(net_state)
        self.opt.load_state_dict(opt_state)
        self.global_step = global_step
        if controls:
            self.controls.local, self.controls.trained = copy.deepcopy(controls[0]), controls[1]
        return batches

    def train_synced(self, rnd: int, share: float, combine, fresh: bool = False) -> list[float]:
        """One attempt of a synchronized round: back to the round's start, then its steps with
        every BatchNorm layer's sums added up over the group by combine (numpy in, numpy out);
        share is my weight in the group's mean. fresh: on the next batches of my stream instead
        of the round's first ones (secure aggregation's redo)."""
        batches = self.restore_round()
        if fresh:
            batches = [next(self.batches) for _ in batches]
        with syncbn.synced(self.net, lambda v: torch.from_numpy(combine(v.cpu().numpy())).to(v.device), share):
            return self.train_round(rnd, batches)

    def train_round(self, rnd: int, batches=None, batch_size: int | None = None,
                    deadline_s: float = 0.0) -> list[float]:
        """The round's local steps (on `batches`, else the next of my stream); the `train` fault
        point is halfway through them. batch_size: this round's batch (sample-target rounds);
        deadline_s > 0: no step starts after that many seconds (at least one always runs).
        self.last_images is then the number of images the round's steps processed."""
        steps = self.plan.steps[rnd - 1]
        if batch_size is not None:
            self.batches.batch_size = batch_size
        # progressive resizing: the size at the round's first step holds for the whole round
        self.batches.size = schedule.input_size_at(self.global_step, self.plan.total_steps, self.cfg.model.input_size,
                                                   self.tcfg.small_input, self.tcfg.small_until)
        stream = _Counted(iter(batches) if batches is not None else self.batches)
        half = max(1, steps // 2)
        epoch0 = self.global_step / self.plan.steps_per_epoch
        ends = time.monotonic() + deadline_s if deadline_s > 0 else None
        stop = (lambda: time.monotonic() >= ends) if ends is not None else None

        last = [time.monotonic()]

        def on_step(i: int, loss: float) -> None:
            now = time.monotonic()
            self.metrics.write("step", round=rnd, step=i, steps=steps, loss=round(loss, 5),
                               global_step=self.global_step + i,
                               epoch=round(epoch0 + i / self.plan.steps_per_epoch, 4),
                               lr=float(self.opt.param_groups[0]["lr"]), step_s=round(now - last[0], 5))
            last[0] = time.monotonic()      # the next step's time starts after this record

        slow = self.faults.slowdown(rnd)
        if slow > 1.0:
            on_step = _slowed(on_step, slow)
        hook = self.controls.round_hook() if self.controls else None
        losses = self._steps(stream, half, on_step, hook, stop=stop)
        self.faults.at(rnd, FaultPoint.TRAIN)
        if len(losses) == half:
            losses += self._steps(stream, steps - half, lambda i, loss: on_step(half + i, loss), hook, done=half,
                                  stop=stop)
        if self.controls:
            self.controls.finish_round()
        if len(losses) < steps:
            log.info("round %d: stopped after %d of %d local steps at train.round_deadline_s=%s", rnd, len(losses),
                     steps, deadline_s)
        self.global_step += steps        # the schedule's position: every member's learning rate follows the rounds
        self.last_images = stream.images
        return losses

    def _steps(self, stream, n: int, on_step, hook, done: int = 0, stop=None) -> list[float]:
        return train.train_steps(self.net, self.opt, stream, self.tcfg, n, self.global_step + done,
                                 self.plan.total_steps, self.global_batch, on_step, grad_hook=hook,
                                 frozen_bn=self.bn_frozen, stop=stop,
                                 first_runs=not done)


class _Counted:
    """An iterator of (x, y) batches that counts the images it has handed out."""

    def __init__(self, it):
        self.it, self.images = it, 0

    def __iter__(self):
        return self

    def __next__(self):
        x, y = next(self.it)
        self.images += len(y)
        return x, y


def _slowed(on_step, factor: float):
    """on_step, after a sleep of (factor - 1) x the time since the last step ended (fault `slow`)."""
    last = [time.monotonic()]

    def slowed(i: int, loss: float) -> None:
        time.sleep((factor - 1.0) * (time.monotonic() - last[0]))
        last[0] = time.monotonic()
        on_step(i, loss)
    return slowed
