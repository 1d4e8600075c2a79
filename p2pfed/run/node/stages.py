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
    START = "start"
    SYNC = "sync"
    TRAIN = "train"
    WAIT = "wait"
    EXCHANGE = "exchange"
    EVAL = "eval"
    DONE = "done"
    QUANTIZE = "quantize"

    def __str__(self) -> str:
        return self.value


S = RoundStage
DOING: dict[RoundStage, str] = {
    S.START: "set up; waiting for the other peers to appear",
    S.SYNC: "downloading a committed consensus (restart, fell behind, outvoted, left out)",
    S.TRAIN: "the round's local optimiser steps on my partition",
    S.WAIT: "ready sent (or an attempt failed); waiting for the round's group",
    S.EXCHANGE: "an attempt's butterfly exchange and digest agreement",
    S.EVAL: "pooled BatchNorm statistics and evaluation of the round's consensus",
    S.DONE: "the last round is committed; electing the writer, waiting for its outputs",
    S.QUANTIZE: "the writer exports the consensus to ONNX and quantizes it to INT8",
}
TRANSITIONS: dict[RoundStage, frozenset[RoundStage]] = {
    S.START:    frozenset({S.SYNC, S.TRAIN, S.WAIT}),
    S.SYNC:     frozenset({S.TRAIN, S.WAIT, S.EVAL, S.DONE}),
    S.TRAIN:    frozenset({S.WAIT, S.EXCHANGE, S.SYNC}),
    S.WAIT:     frozenset({S.EXCHANGE, S.SYNC, S.TRAIN, S.EVAL, S.DONE}),
    S.EXCHANGE: frozenset({S.WAIT, S.SYNC, S.TRAIN, S.EVAL, S.DONE}),
    S.EVAL:     frozenset({S.TRAIN, S.SYNC, S.WAIT, S.DONE}),
    S.DONE:     frozenset({S.QUANTIZE}),
    S.QUANTIZE: frozenset(),
}
WHY: dict[tuple[RoundStage, RoundStage], str] = {    # the moves that are not the plain round
    (S.START, S.WAIT): "synchronized training: groups first",
    (S.SYNC, S.WAIT): "a false claim: average after all",
    (S.TRAIN, S.EXCHANGE): "synchronized training",
    (S.TRAIN, S.SYNC): "synchronized training",
    (S.WAIT, S.TRAIN): "adopted a commit of my own result",
    (S.WAIT, S.EVAL): "adopted a commit of my own result",
    (S.WAIT, S.DONE): "adopted a commit of my own result",
    (S.EXCHANGE, S.WAIT): "the attempt failed",
}


def markdown_table() -> str:
    """The stage table of docs/architecture.md (tests/make_doc_tables.py writes it there)."""
    rows = ["| stage | what the peer is doing | may move to |", "|---|---|---|"]
    for stage in RoundStage:
        moves = [f"{to}" + (f" ({WHY[stage, to]})" if (stage, to) in WHY else "")
                 for to in RoundStage if to in TRANSITIONS[stage]]
        rows.append(f"| `{stage}` | {DOING[stage]} | {', '.join(moves) or '-'} |")
    return "\n".join(rows)


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
