"""What one peer knows of the federation, kept current for the people watching it.

The status board listens to the peer's metrics records (its own round, stage, epoch, faults) and
to every report filed in its mailbox (every member's round stats: the timeline and the consensus
accuracy), and asks the transport, when asked itself, who is heard from and what their
heartbeats say. It never blocks training: the main thread only hands it records, under a lock
that snapshot() holds for microseconds.

A snapshot (federation.py has the schema) is
  - written to RUN_DIR/status/peer-K.json every STATUS_EVERY_S by a daemon thread, and once more
    at exit with the run's end state (`p2pfed watch RUN_DIR` merges these files);
  - served at /status on the metrics port (output.metrics_port), beside /metrics (Prometheus),
    for `p2pfed watch --peer HOST:PORT`.
When every member of an evaluated round has reported, the board hands on_consensus the round's
consensus accuracy (the peer writes it as a "consensus" metrics record: TensorBoard, Prometheus).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from ...consensus.writer import valid_report
from ...net.ratelimit import RateLimitedLog
from ...outputs import atomic
from . import federation

log = logging.getLogger("p2pfed.run.status")

STATUS_EVERY_S = 1.0      # how often a peer rewrites its status file
FAULTS_KEPT = 200


class StatusBoard:
    def __init__(self, me: int, ids: list[int], dead_after_s: float, on_consensus: Callable[[dict], None]):
        self.me, self.ids, self.dead_after_s = me, list(ids), dead_after_s
        self.on_consensus = on_consensus
        self.transport = None                     # attach() once the transport runs
        self._lock = threading.Lock()
        self._mine = {"id": me, "state": "live", "round": 0, "stage": "start", "committed": 0, "heard_s": 0.0,
                      "epoch": 0.0}
        self._run = {"peers": list(ids), "rounds": 0, "epochs": 0.0}
        self._reports: dict[int, dict[int, dict]] = {}     # round -> peer -> valid stats
        self._told: set[int] = set()                       # rounds whose consensus accuracy was handed on
        self._faults: list[dict] = []
        self.state = "running"                    # at exit: finished | failed

    def attach(self, transport) -> None:
        self.transport = transport

    # ------------------------------------------------------------------ fed by the main thread
    def sink(self, rec: dict) -> None:
        """A metrics sink (MetricsWriter.add_sink): my own progress."""
        kind = rec.get("type")
        with self._lock:
            if isinstance(rec.get("round"), int) and kind in ("step", "phase", "round"):
                # after the last round the round number runs one past it: show the last one
                self._mine["round"] = min(rec["round"], self._run["rounds"]) if self._run["rounds"] else rec["round"]
            if kind == "plan":
                self._run.update(rounds=rec["rounds"], epochs=rec["epochs"])
            elif kind == "step":
                self._mine["epoch"] = rec.get("epoch", self._mine["epoch"])
            elif kind == "phase":
                self._mine["stage"] = rec["phase"]
            elif kind in ("round", "checkpoint"):
                self._mine["committed"] = max(self._mine["committed"], rec["round"])
                self._mine["epoch"] = rec.get("epoch", self._mine["epoch"])
            elif kind == "fault":
                self._faults.append({"round": rec["round"], "peer": self.me,
                                     "what": f"injected {rec['action']} at {rec['phase']}"})
                del self._faults[:-FAULTS_KEPT]

    def report(self, msg) -> None:
        """Mailbox.on_report: a report filed (mine or a member's). Invalid stats are ignored."""
        rnd, stats = msg.header.get("round"), msg.header.get("stats")
        if type(rnd) is not int or not valid_report(stats):
            return
        with self._lock:
            if rnd < 1 or (self._run["rounds"] and rnd > self._run["rounds"]):
                return                # a round the run does not have must not push real ones out
            self._reports.setdefault(rnd, {})[msg.sender] = stats
            for old in sorted(self._reports)[:-federation.KEEP_ROUNDS]:
                del self._reports[old]
            done = None if rnd in self._told else federation.consensus(rnd, self._reports[rnd])
            if done:
                self._told.add(rnd)
        if done:
            self.on_consensus(done)

    # ------------------------------------------------------------------ read by any thread
    def snapshot(self) -> dict:
        with self._lock:
            reports = {r: dict(by) for r, by in self._reports.items()}
            mine, run, faults, state = dict(self._mine), dict(self._run), list(self._faults), self.state
        rounds, accuracy = federation.timeline(reports, self.ids)
        epochs = {}
        for r in rounds:
            for p in r["reported"]:
                epochs[p] = r["epoch"]
        rows = []
        now = time.monotonic()
        for pid in self.ids:
            if pid == self.me:
                rows.append(mine)
            elif self.transport is None:
                rows.append(federation.heartbeat_row(pid, None, self.dead_after_s, False, {}, None))
            else:
                seen = self.transport.last_seen(pid)
                rows.append(federation.heartbeat_row(pid, None if seen is None else now - seen, self.dead_after_s,
                                                     self.transport.said_bye(pid), self.transport.heartbeat(pid),
                                                     epochs.get(pid)))
        return {"t": round(time.time(), 3), "source": f"peer {self.me}", "from": self.me, "state": state,
                "run": run, "peers": rows, "accuracy": accuracy, "rounds": rounds,
                "faults": faults + federation.dropped_faults(rounds, {r["id"]: r["state"] for r in rows})}

    def live_counts(self) -> dict:
        """For Prometheus at scrape time: live peers (me included) and bytes on the wire."""
        t = self.transport
        if t is None:
            return {"live_peers": 1, "bytes_sent": 0, "bytes_received": 0}
        now = time.monotonic()
        live = 1 + sum(1 for p in self.ids if p != self.me and (s := t.last_seen(p)) is not None
                       and now - s < self.dead_after_s and not t.said_bye(p))
        return {"live_peers": live, "bytes_sent": t.bytes_sent, "bytes_received": t.bytes_received}


class StatusFile:
    """Rewrites RUN_DIR/status/peer-K.json from the board every STATUS_EVERY_S (atomically for
    readers, without fsync: it is a view, rewritten each second), and once more at close()."""

    def __init__(self, board: StatusBoard, run_dir: str | Path, every_s: float = STATUS_EVERY_S):
        self.board = board
        self.path = Path(run_dir) / "status" / f"peer-{board.me}.json"
        self.every_s = every_s
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._log = RateLimitedLog(log, 60.0)
        self._thread = threading.Thread(target=self._loop, name=f"status-{board.me}", daemon=True)

    def start(self) -> "StatusFile":
        self.write()
        self._thread.start()
        return self

    def write(self) -> None:
        try:
            with self._write_lock:   # snapshot and write together: an older snapshot never replaces a newer one
                atomic.replace_text(self.path, json.dumps(self.board.snapshot(), separators=(",", ":")))
        except Exception as e:       # a view that cannot be written is logged; the run goes on
            self._log.log(("write",), logging.WARNING, "could not write %s: %s: %s", self.path, type(e).__name__, e)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()

    def close(self, state: str) -> None:
        """The run's end for this peer: finished (exit 0) or failed."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.every_s + 1)
        self.board.state = state
        self.write()
