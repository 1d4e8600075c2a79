"""What a peer is doing, as one stage at a time, and the transitions allowed between stages.

The stage is what the peer's heartbeats say (`hb.phase`), what its metrics record (`phase`
records, which the live view and the report's timeline read), and what its log lines follow.
Every change goes through StageMachine.enter(), which checks it against TRANSITIONS: a stage
can never disagree with what the code is doing without an error saying so.
"""
from __future__ import annotations

import enum
import logging
from typing import Callable

log = logging.getLogger("p2pfed.run.stages")


class RoundStage(str, enum.Enum):
    START = "start"          # set up; waiting for the other peers to appear
    SYNC = "sync"            # downloading a committed consensus (restart, fell behind, outvoted, left out)
    TRAIN = "train"          # the round's local optimiser steps on my partition
    WAIT = "wait"            # ready sent (or an attempt failed); waiting for the round's group
    EXCHANGE = "exchange"    # an attempt's butterfly exchange and digest agreement
    EVAL = "eval"            # pooled BatchNorm statistics and evaluation of the round's consensus
    DONE = "done"            # the last round is committed; electing the writer, waiting for its outputs
    QUANTIZE = "quantize"    # the writer exports the consensus to ONNX and quantizes it to INT8

    def __str__(self) -> str:
        return self.value


S = RoundStage
TRANSITIONS: dict[RoundStage, frozenset[RoundStage]] = {
    S.START:    frozenset({S.SYNC, S.TRAIN, S.WAIT}),           # WAIT: synchronized training groups first
    S.SYNC:     frozenset({S.TRAIN, S.WAIT, S.EVAL, S.DONE}),   # WAIT: a false claim, average after all
    S.TRAIN:    frozenset({S.WAIT, S.EXCHANGE, S.SYNC}),        # EXCHANGE, SYNC: synchronized training
    S.WAIT:     frozenset({S.EXCHANGE, S.SYNC, S.TRAIN, S.EVAL, S.DONE}),  # TRAIN/EVAL/DONE: adopted a commit
    S.EXCHANGE: frozenset({S.WAIT, S.SYNC, S.TRAIN, S.EVAL, S.DONE}),  # WAIT: the attempt failed
    S.EVAL:     frozenset({S.TRAIN, S.SYNC, S.WAIT, S.DONE}),
    S.DONE:     frozenset({S.QUANTIZE}),
    S.QUANTIZE: frozenset(),
}


class StageError(RuntimeError):
    """A transition that TRANSITIONS does not allow: a bug, never a user error."""


class StageMachine:
    """The current stage and round; enter() checks the move and tells everyone who shows it."""

    def __init__(self, on_enter: Callable[[RoundStage, int], None] = lambda stage, rnd: None):
        self.stage = RoundStage.START
        self.round = 0
        self.on_enter = on_enter
        self.history: list[tuple[int, RoundStage]] = [(0, RoundStage.START)]
        on_enter(RoundStage.START, 0)

    def enter(self, stage: RoundStage, rnd: int) -> None:
        """Move to `stage` in round rnd; entering the stage I am in (a new round, a retry) is allowed."""
        if stage != self.stage and stage not in TRANSITIONS[self.stage]:
            raise StageError(f"round {rnd}: no transition from {self.stage} to {stage}; allowed: "
                             f"{sorted(s.value for s in TRANSITIONS[self.stage])}")
        if (stage, rnd) != (self.stage, self.round):
            log.debug("stage %s -> %s (round %d)", self.stage, stage, rnd)
            self.stage, self.round = stage, rnd
            self.history.append((rnd, stage))
            self.on_enter(stage, rnd)
