"""Protocol constants in one place: the peer's phases, size limits and retry intervals.

Deadlines that a user may tune are in config.AveragingConfig (seconds, `_s` suffix); the
values here are fixed parts of the protocol. docs/protocol.md explains each.
"""
from __future__ import annotations

import enum


class Phase(str, enum.Enum):
    """What a peer is doing; sent in every heartbeat (`hb.phase`) and written to its metrics."""
    START = "start"          # waiting for the other peers to appear
    SYNC = "sync"            # downloading the consensus from a live peer (restart, fell behind)
    TRAIN = "train"          # local optimiser steps of the current round
    WAIT = "wait"            # ready; waiting for the group of this round
    EXCHANGE = "exchange"    # butterfly all-reduce and digest agreement
    EVAL = "eval"            # pooled BatchNorm statistics and evaluation of the consensus
    DONE = "done"            # the run is over; the writer writes the outputs
    QUANTIZE = "quantize"    # the writer exports and quantizes the consensus

    def __str__(self) -> str:
        return self.value


def max_message_bytes(model_bytes: int) -> int:
    """The largest frame set a peer accepts: a whole model (`model` message) plus headroom."""
    return int(model_bytes * 1.25) + (1 << 20)


FETCH_RETRY_S = 2.0          # ask another live peer for the consensus if no answer came this fast
BACKOFF_S = 0.1              # after a failed attempt, read aborts this long times the try number (max 1 s)
REPORT_WAIT_DEAD_AFTER = 2   # the writer waits this many dead_after_s for the last round's reports
BYE_FLUSH_S = 1.0            # a clean exit gives queued messages this long to leave
MAX_CONSECUTIVE_DISSENT = 3  # a peer outvoted on the digest this many rounds in a row stops (its computation differs)
INBOX_LIMIT = 10_000         # validated messages queued for the main thread before new ones are dropped
