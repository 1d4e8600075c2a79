"""Fault injection: make this peer crash or stall at a named point of a round.

Points: `train` (mid local training), `exchange` (after sending half of its shard
slices), `between-rounds` (after committing and checkpointing a round).
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

    def at(self, rnd: int, phase: str) -> None:
        for i, f in enumerate(self.faults):
            if i in self.fired or f.round != rnd or f.phase != phase:
                continue
            self.fired.add(i)
            self.on_fire(f)
            if f.action == "crash":
                log.warning("fault injection: crashing at %s of round %d", phase, rnd)
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)
            log.warning("fault injection: stalling %.1f s at %s of round %d", f.stall_s, phase, rnd)
            time.sleep(f.stall_s)
