"""Exit codes of `p2pfed` commands and `launch.py`, each with the help text a user sees."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1                  # the work failed: no consensus, a round could not complete, an output failed
    USAGE = 2                   # a bad option or config key; the message names it
    NETWORK_DOWN = 3            # the peer's network thread died; it could not heartbeat, so it stopped
    NO_PEERS = 4                # no other peer could be reached (at start-up, or by a restarted peer)
    CRASHED = 5                 # an unexpected error (a bug); the traceback is in the peer's log
    INJECTED_CRASH = 70         # a fault injected on purpose (faults / --kill) ended the peer
    INTERRUPTED = 130           # Ctrl-C (SIGINT)
    TERMINATED = 143            # SIGTERM


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "finished; for launch.py: every peer finished with the agreed consensus",
    ExitCode.FAILED: "failed: see the error line and RUN_DIR/peer-<id>.log; for launch.py: no consensus was written",
    ExitCode.USAGE: "bad command line or config: the message names the option or key and what is allowed",
    ExitCode.NETWORK_DOWN: "the peer's network thread died (a bug: please report the log); the peer exited "
                           "instead of hanging",
    ExitCode.NO_PEERS: "no other peer could be reached within averaging.startup_timeout_s: the run is over, the "
                       "others are not started, or this host is cut off (check host/port and the firewall)",
    ExitCode.CRASHED: "an unexpected error (a bug: please report the traceback in RUN_DIR/peer-<id>.log); a "
                      "supervisor restarts the peer",
    ExitCode.INJECTED_CRASH: "a crash injected on purpose by a [[faults]] entry or --kill/--crash-at",
    ExitCode.INTERRUPTED: "interrupted by Ctrl-C; partial results stay in the run directory",
    ExitCode.TERMINATED: "ended by SIGTERM; partial results stay in the run directory",
}


def describe(code: int) -> str:
    """'exited 70 (a crash injected on purpose ...)', or the signal for negative codes."""
    if code < 0:
        import signal
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    try:
        return f"exited {code} ({HELP[ExitCode(code)]})"
    except ValueError:
        return f"exited {code}"
