"""train.auto_steps for one peer: it measures its exchange and step times, puts them in its round
state, and once the choice is agreed (consensus/autosteps.py) merges the rest of its plan's
rounds and turns compression on, as every other member does from the same committed state.
"""
from __future__ import annotations

import logging

from ...consensus import autosteps
from ...learning import schedule

log = logging.getLogger("p2pfed.run.pacing")


class Pacing:
    def __init__(self, tcfg, plan: schedule.Plan):
        self.on = bool(tcfg.auto_steps)
        self.compression = tcfg.compression
        self.static = plan                  # the plan before any choice: its round DECIDE_ROUND's k
        self.choice: tuple[int, bool] | None = None
        self._exchange = [0.0, 0]           # sum of ready -> commit seconds, rounds (from round 2)
        self._step = [0.0, 0]               # sum of training seconds, steps (from round 2)

    def measured(self, rnd: int, train_s: float, steps: int, exchange_s: float | None) -> None:
        """After my round rnd: its training time and steps, and its ready -> commit time (None
        if I did not average it). Round 1 (start-up, first steps) is left out."""
        if rnd < 2:
            return
        if steps:
            self._step = [self._step[0] + train_s, self._step[1] + steps]
        if exchange_s is not None:
            self._exchange = [self._exchange[0] + exchange_s, self._exchange[1] + 1]

    def entries(self) -> dict:
        """The auto.* entries of the state I send (nothing when train.auto_steps is off)."""
        if not self.on:
            return {}
        ex, st = self._exchange, self._step
        return autosteps.entries((ex[0] / ex[1] if ex[1] else 0.0, st[0] / st[1] if st[1] else 0.0), self.choice)

    def adopt(self, rnd: int, state: dict) -> tuple[int, bool] | None:
        """After committing (or downloading) round rnd: the choice now in force, if it is new."""
        if not self.on or self.choice is not None:
            return None
        k = self.static.steps[min(autosteps.DECIDE_ROUND, self.static.rounds) - 1]
        self.choice = autosteps.decided(state, rnd, k, self.compression)
        return self.choice

    def plan(self) -> schedule.Plan:
        """The plan with the choice applied to every round after DECIDE_ROUND (on every member,
        whenever it learned the choice: round numbers after it count merged rounds)."""
        return schedule.merged(self.static, autosteps.DECIDE_ROUND, self.choice[0])


def follow(peer, committed) -> None:
    """On a peer that committed or downloaded `committed`: if the choice is new, its plan (and
    its trainer's), the mailbox's last round and the codec of its averaging follow it."""
    choice = peer.pacing.adopt(committed.round, committed.state)
    if not choice:
        return
    peer.plan = peer.trainer.plan = peer.pacing.plan()
    peer.mailbox.last_round = peer.plan.rounds
    if choice[1] and not peer.allreduce.secure:     # masked sums need one scale: secure aggregation stays f32
        peer.allreduce.codec = "i8"
    log.info("train.auto_steps chose local steps x %d%s after round %d: %d rounds in all", choice[0],
             " and int8 shards" if choice[1] else "", autosteps.DECIDE_ROUND, peer.plan.rounds)
    plan = peer.plan
    peer.metrics.write("plan", round=committed.round, rounds=plan.rounds, total_steps=plan.total_steps,
                       epochs=round(plan.total_steps / plan.steps_per_epoch, 3),
                       steps_per_epoch=plan.steps_per_epoch, auto_steps=list(choice))
