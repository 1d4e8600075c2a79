"""Fault injection: make this peer crash or stall at a named point of a round.

Points: `train` (mid local training), `exchange` (after sending half of its shard
slices), `between-rounds` (after committing and checkpointing a round). Actions: `crash`,
`stall`, and `dissent` (exchange only): the peer's own copy of the round's result differs by
one ulp, as with bad memory, so its digest is outvoted.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("p2pfed.faults")

from .exitcodes import ExitCode

CRASH_EXIT_CODE = int(ExitCode.INJECTED_CRASH)   # so launch.py can tell an injected crash apart


class FaultInjector:
    def __init__(self, faults, peer_id: int, on_fire=lambda fault: None):
        self.faults = [f for f in faults if f.peer == peer_id]
        self.on_fire = on_fire
        self.fired: set[int] = set()

    def at(self, rnd: int, phase: str) -> bool:
        """Fire the faults of this point; True if one of them is a `dissent`."""
        dissent = False
        for i, f in enumerate(self.faults):
            if i in self.fired or f.round != rnd or f.phase != phase:
                continue
            self.fired.add(i)
            self.on_fire(f)
            if f.action == "dissent":
                log.warning("fault injection: corrupting my copy of round %d's result", rnd)
                dissent = True
                continue
            if f.action == "crash":
                log.warning("fault injection: crashing at %s of round %d", phase, rnd)
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)
            log.warning("fault injection: stalling %.1f s at %s of round %d", f.stall_s, phase, rnd)
            time.sleep(f.stall_s)
        return dissent
