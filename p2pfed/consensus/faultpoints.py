"""The named points at which a peer's fault injector is called, and the one hook it is called by.

The consensus code calls `faults.at(round, point)` at `exchange` (half of my parts sent; True:
corrupt my own copy of the result, as bad memory would), `seed` (secure aggregation: every part
held, before releasing my seed) and `reveal` (half of my slice's sums sent); the peer calls it at
`train` and `between-rounds`. The injector (run/node/faults.py, or the simulator's plan) decides what
happens there. `NoFaults` is the hook of a peer without faults.
"""
from __future__ import annotations

import enum


class FaultPoint(str, enum.Enum):
    TRAIN = "train"                 # halfway through a round's local steps
    EXCHANGE = "exchange"           # with half of my shard slices sent
    SEED = "seed"                   # secure aggregation: every part held, before releasing my self-mask seed
    REVEAL = "reveal"               # secure aggregation: with half of my slice's sums sent
    BETWEEN_ROUNDS = "between-rounds"

    def __str__(self) -> str:
        return self.value


class NoFaults:
    def at(self, rnd: int, point: str) -> bool:
        return False
