"""Per-peer metrics as JSON lines: one record per training step, phase change, round and fault.

Record types (field "type"):
    plan        rounds, epochs, steps_per_epoch, total_steps   once, at start-up
    step        round, step, steps, loss, global_step, epoch,  every optimiser step
                lr, step_s (seconds since the previous step ended, or since the round's training began)
    phase       round, phase                                   start | sync | train | wait | exchange | eval | done
    round       round, members, weights, digest, attempt, sync_s, averaging_s, wait_s, train_s,
                bytes_sent, train_loss, epoch, events (+ correct, total, loss_sum, eval_s, bn_pooled
                in rounds that evaluate)
    checkpoint  round                                          a checkpoint was written
    fault       round, phase, action                           an injected fault fired
    event       round, message                                 something the report should show
    consensus   round, epoch, accuracy, test_loss, members     a round's consensus accuracy, once every member has
                                                               reported its test slice (run/observe/status.py)
    exit        round, peak_rss_mb                             the peer is exiting
Every record also has "peer" and "t" (unix time, s).

Sinks (TensorBoard, Prometheus, the peer's status board) receive every record as it is written.
A sink that raises is logged once and dropped: watching a run never stops it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("p2pfed.outputs.metrics")

Sink = Callable[[dict], None]


class MetricsWriter:
    def __init__(self, path: str | Path, peer: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.peer = peer
        self._f = open(self.path, "a", buffering=1)   # line-buffered: readers see whole lines
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()                 # records may come from the network thread's callbacks too

    def add_sink(self, sink: Sink) -> None:
        """Call sink(record) for every record written from now on."""
        self._sinks.append(sink)

    def write(self, type_: str, **fields) -> None:
        rec = {"type": type_, "peer": self.peer, "t": round(time.time(), 3), **fields}
        with self._lock:
            if not self._f.closed:
                self._f.write(json.dumps(rec) + "\n")
            for sink in list(self._sinks):
                try:
                    sink(rec)
                except Exception as e:      # a broken sink loses its view, never the run
                    log.warning("metrics sink %s failed on a %s record (%s: %s); it gets no more records",
                                getattr(sink, "__qualname__", sink), type_, type(e).__name__, e)
                    self._sinks.remove(sink)

    def close(self) -> None:
        with self._lock:
            self._f.close()


def read_from(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete records of a JSON-lines file from byte `offset` on, and the offset after the
    last complete line: a line still being written (or torn by a crash) is left for later, and
    a line that is not JSON is skipped. A missing file has no records."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[:chunk.rfind(b"\n") + 1]
    out = []
    for line in complete.splitlines():
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return out, offset + len(complete)


def read(path: str | Path) -> list[dict]:
    """All complete records of a metrics file."""
    return read_from(path)[0]


def read_run(run_dir: str | Path) -> dict[int, list[dict]]:
    """peer id -> records, for every metrics-<id>.jsonl in a run dir."""
    out = {}
    for p in sorted(Path(run_dir).glob("metrics-*.jsonl")):
        try:
            out[int(p.stem.split("-", 1)[1])] = read(p)
        except ValueError:
            continue
    return out
