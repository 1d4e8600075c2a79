"""Fault injection, a product feature: make this peer crash, stall or dissent at a named point.

Points (FaultPoint): `train` (halfway through a round's local steps), `exchange` (with half of
its shard slices sent), `seed` and `reveal` (secure aggregation: after every member held every
part, before releasing its self-mask seed; with half of its slice's sums sent), `between-rounds`
(after committing and checkpointing a round). Actions:
`crash` (exit with code 70 at once: a supervisor leaves it dead), `kill` and `abort` (die of
SIGKILL, as by the OOM killer, or of SIGABRT, as by a failed assertion in libzmq: real crashes,
which a supervisor restarts), `stall` (sleep faults.stall_s), and `dissent` (exchange only): the
peer's own copy of the round's result differs by one ulp, as with bad memory, so its digest is
outvoted. `slow` is not a point but a state: from its round on, every local step of
the peer is followed by a sleep of (slow_factor - 1) x the step's own time, as on a machine that
many times slower (the trainer asks `slowdown(round)`). The peer calls one injector at these points; a restarted peer gets an empty
one, so it does not crash again.
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import time

from ...consensus.faultpoints import FaultPoint
from ..exitcodes import ExitCode

log = logging.getLogger("p2pfed.run.faults")

__all__ = ["CRASH_EXIT_CODE", "FaultInjector", "FaultPoint", "SIGNALS"]

CRASH_EXIT_CODE = int(ExitCode.INJECTED_CRASH)   # so launch.py can tell an injected crash apart
SIGNALS = {"kill": signal.SIGKILL, "abort": signal.SIGABRT}


class FaultInjector:
    def __init__(self, faults, peer_id: int, on_fire=lambda fault: None):
        self.faults = [f for f in faults if f.peer == peer_id]
        self.on_fire = on_fire
        self.fired: set[int] = set()

    def at(self, rnd: int, point: str) -> bool:
        """Fire the faults of this point; True if one of them is a `dissent`."""
        dissent = False
        for i, f in enumerate(self.faults):
            if i in self.fired or f.round != rnd or f.phase != point or f.action == "slow":
                continue
            self.fired.add(i)
            self.on_fire(f)
            if f.action == "dissent":
                log.warning("fault injection: corrupting my copy of round %d's result", rnd)
                dissent = True
                continue
            if f.action == "crash":
                log.warning("fault injection: crashing at %s of round %d", point, rnd)
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)
            if f.action in ("kill", "abort"):
                log.warning("fault injection: dying of %s at %s of round %d", SIGNALS[f.action].name, point, rnd)
                logging.shutdown()
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))     # an injected abort leaves no core file
                os.kill(os.getpid(), SIGNALS[f.action])
                time.sleep(60)                                         # the signal ends the process before this
            log.warning("fault injection: stalling %.1f s at %s of round %d", f.stall_s, point, rnd)
            time.sleep(f.stall_s)
        return dissent

    def slowdown(self, rnd: int) -> float:
        """How many times as long my local steps take in round rnd (1.0: my own speed)."""
        factor = 1.0
        for i, f in enumerate(self.faults):
            if f.action == "slow" and f.round <= rnd:
                if i not in self.fired:
                    self.fired.add(i)
                    self.on_fire(f)
                    log.warning("fault injection: from round %d on, my local steps take %gx as long", f.round,
                                f.slow_factor)
                factor = max(factor, f.slow_factor)
        return factor
