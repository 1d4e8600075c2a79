"""Per-peer metrics as JSON lines: one record per training step, phase change, round and fault.

Record types (field "type"):
    plan        rounds, epochs, steps_per_epoch, total_steps   once, at start-up
    step        round, step, steps, loss, global_step, epoch   every optimiser step
    phase       round, phase                                   start | sync | train | wait | exchange | eval | done
    round       round, members, weights, digest, attempt, sync_s, averaging_s, wait_s, train_s,
                bytes_sent, train_loss, epoch, events (+ correct, total, loss_sum, eval_s, bn_pooled
                in rounds that evaluate)
    checkpoint  round                                          a checkpoint was written
    fault       round, phase, action                           an injected fault fired
    event       round, message                                 something the report should show
    exit        round, peak_rss_mb                             the peer is exiting
Every record also has "peer" and "t" (unix time, s).
"""
from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsWriter:
    def __init__(self, path: str | Path, peer: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.peer = peer
        self._f = open(self.path, "a", buffering=1)   # line-buffered: readers see whole lines

    def write(self, type_: str, **fields) -> None:
        rec = {"type": type_, "peer": self.peer, "t": round(time.time(), 3), **fields}
        self._f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
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
