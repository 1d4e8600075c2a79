"""Peers that come back by themselves: the restart policy that launch.py and `p2pfed peer
--supervise` share, and the supervisor of one peer process.

A peer process can die on its own: the kernel's OOM killer (SIGKILL), an assertion in libzmq
(SIGABRT, zeromq/libzmq issue 4841), a segfault in a native library, a lost node. Its supervisor
starts it again with `--resume`: it reloads its checkpoint, downloads the consensus it missed and
is a member again (docs/deploy.md). What is not a crash is never restarted:

    exit 0           it finished
    exit 1           it failed and said why (no group could form, a download failed, its checkpoint
                     does not match): its own verdict, which a restart would not change
    exit 2           a usage or config error: a restart would fail the same way
    exit 4           no other peer could be reached: the run is over, or this host is cut off
    exit 70          a crash injected on purpose (--kill, [[faults]] action = "crash")
    SIGINT, SIGTERM  someone asked it to stop (exit 130 or 143, or killed by the signal)
    exit 5 (an unexpected error) before its first round: a bug in start-up, which a restart would
                     hit again; after its first round it is restarted

Restarted: killed by any other signal, exit 3 (its network thread died), exit 5 after start-up.

The first restart waits first_delay_s; each life shorter than stable_s doubles the wait, up to
max_delay_s; a life of stable_s or more starts the back-off again. After max_restarts restarts
the peer stays dead and the supervisor says so. decide() is the policy as a pure function.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ...outputs.metrics import read_from
from ..exitcodes import ExitCode, describe

log = logging.getLogger("p2pfed.run.supervise")

NOT_CRASHES = {ExitCode.OK: "it finished", ExitCode.FAILED: "it failed and said why (see its log)",
               ExitCode.USAGE: "a usage or config error",
               ExitCode.NO_PEERS: "no other peer could be reached", ExitCode.INJECTED_CRASH: "an injected crash",
               ExitCode.INTERRUPTED: "it was interrupted", ExitCode.TERMINATED: "it was asked to stop",
               -signal.SIGINT: "it was interrupted", -signal.SIGTERM: "it was asked to stop"}
GRACE_S = 10.0          # after SIGINT/SIGTERM, how long the supervised peer gets before SIGKILL


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5          # restarts per peer over the run; then it stays dead
    first_delay_s: float = 0.5     # the wait before the first restart
    max_delay_s: float = 30.0      # the longest wait
    stable_s: float = 60.0         # a life this long starts the back-off again


@dataclass(frozen=True)
class Restart:
    delay_s: float


@dataclass(frozen=True)
class Stay:
    reason: str


def decide(policy: RestartPolicy, code: int, lived_s: float, got_going: bool, restarts: int,
           last_delay_s: float) -> Restart | Stay:
    """Restart a peer that exited with `code` after lived_s seconds, or let it stay dead.
    got_going: it had started its rounds (written its plan). restarts: how many times it was
    restarted already; last_delay_s: the wait before its last restart (0: none yet)."""
    if code in NOT_CRASHES:
        return Stay(NOT_CRASHES[code])
    if code == ExitCode.CRASHED and not got_going:
        return Stay("it crashed during start-up, and a restart would crash the same way")
    if restarts >= policy.max_restarts:
        return Stay(f"it was restarted {restarts} times already (the bound is {policy.max_restarts})")
    if lived_s >= policy.stable_s or not last_delay_s:
        return Restart(policy.first_delay_s)
    return Restart(min(policy.max_delay_s, 2 * last_delay_s))


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def exit_status(code: int) -> int:
    """A child's returncode as this process's exit status (killed by signal N: 128 + N, as a shell says)."""
    return 128 - code if code < 0 else code


class Supervisor:
    """`p2pfed peer --supervise`: runs the peer as a child process and restarts it by the policy.
    It imports no torch and opens no socket, so it stays small and cannot die of what kills the
    peer. SIGINT and SIGTERM are passed on to the child, and then nothing is restarted."""

    def __init__(self, command: list[str], peer_id: int, metrics_path: Path, policy: RestartPolicy,
                 spare: bool = False):
        """command: the peer's command line (`python -m p2pfed peer ...`); a restart adds --resume,
        --life N and --last-exit CODE to it. spare: keep a warm spare (spare.py) once the peer is
        going, and restart into it."""
        self.command = [a for a in command if a != "--resume"]
        self.resume = "--resume" in command
        self.peer_id = peer_id
        self.metrics_path = metrics_path
        self.policy = policy
        self.child: subprocess.Popen | None = None
        self.stopping = 0
        self._told: set[int] = set()      # children the stop signal was passed on to
        self.use_spare = spare
        self.spare = None
        self._offset, self._going = 0, False  # how far I read the metrics file; this life wrote its plan

    def _signal(self, signum, frame) -> None:
        self.stopping = signum
        self._pass_on()

    def _pass_on(self) -> None:
        """Send the stop signal to the current child, once per child (the peer stops on the first
        and ignores more; a signal that came before the child existed is sent when it does)."""
        child = self.child
        if self.stopping and child is not None and child.pid not in self._told and child.poll() is None:
            self._told.add(child.pid)
            try:
                child.send_signal(self.stopping)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            if self.spare is not None:
                self.spare.close()
            for s, h in old.items():
                signal.signal(s, h)

    def _run(self) -> int:
        restarts, delay, last = 0, 0.0, None
        while True:
            self._offset, self._going = size_of(self.metrics_path), False
            resume = self.resume or restarts > 0
            cmd = self.command + (["--resume"] if resume else []) \
                + (["--life", str(restarts + 1), "--last-exit", str(last)] if restarts else [])
            started = time.monotonic()
            self.child = self._spawn(cmd)
            code = self._wait()
            lived = time.monotonic() - started
            if self.stopping:
                return exit_status(code)
            verdict = decide(self.policy, code, lived, self._got_going(), restarts, delay)
            if isinstance(verdict, Stay):
                if code != 0:
                    log.warning("peer %d %s after %.1f s; not restarting it: %s", self.peer_id, describe(code),
                                lived, verdict.reason)
                return exit_status(code)
            restarts, delay, last = restarts + 1, verdict.delay_s, code
            log.warning("peer %d %s after %.1f s; restarting it with --resume in %.1f s (restart %d of at most %d)",
                        self.peer_id, describe(code), lived, delay, restarts, self.policy.max_restarts)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if self.stopping:                 # asked to stop while waiting: no child to wait for
                return 128 + self.stopping

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        if self.spare is not None:
            spare, self.spare = self.spare, None
            if spare.alive():
                try:
                    return spare.become(cmd[3:])          # cmd: python -m p2pfed ARGV
                except OSError:
                    pass
            spare.close()
        return subprocess.Popen(cmd)

    def _got_going(self) -> bool:
        """Whether this life wrote its plan record (it loaded its data and model): read on from
        where the last call stopped."""
        if not self._going:
            recs, self._offset = read_from(self.metrics_path, self._offset)
            self._going = any(r.get("type") == "plan" for r in recs)
        return self._going

    def _wait(self) -> int:
        """The child's returncode; after SIGINT/SIGTERM, it gets GRACE_S, then SIGKILL. Once the
        child is going, a warm spare is started for its next life."""
        child, stop_by = self.child, None
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                self._pass_on()               # a signal that came while the child was being started
                if self.use_spare and self.spare is None and not self.stopping and self._got_going():
                    from .spare import Spare
                    self.spare = Spare(inherit=True)
                if self.stopping and stop_by is None:
                    stop_by = time.monotonic() + GRACE_S
                if stop_by is not None and time.monotonic() > stop_by:
                    log.warning("peer %d did not stop within %.0f s; killing it", self.peer_id, GRACE_S)
                    try:
                        os.kill(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return child.wait()
