"""launch.py's live view: one line per peer, and the consensus accuracy once.

Everything comes from the peers' metrics files (read with outputs.metrics.read_from, which
leaves a line still being written for later): the plan, each step, each stage change, each
round. The consensus accuracy of an evaluated round is the sum of the members' correct counts
over the sum of their test slices: one model, one number. On a terminal the lines are redrawn
in place; in a log, a peer's line is printed when it starts training, evaluates, exits or
restarts (or every PLAIN_EVERY_S while it makes progress), and the consensus line when a new
round is evaluated.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...outputs.metrics import read_from
from ..exitcodes import describe
from ..node.faults import CRASH_EXIT_CODE

PLAIN_EVERY_S = 30.0     # without a terminal, a peer that makes progress gets a line this often


@dataclass
class PeerView:
    """What the launcher knows about one peer, from its process and metrics file."""
    id: int
    proc: object = None
    offset: int = 0
    round: int = 0
    rounds: int = 0              # from the peer's "plan" record
    epoch: float = 0.0
    epochs: float = 0.0
    step: int = 0                # optimiser steps taken (global_step of the last "step" record)
    steps: int = 0               # total_steps of the plan
    phase: str = "starting"
    loss: float | None = None
    restarts: int = 0
    exit_code: int | None = None
    started_at: float = 0.0          # when this life of the process started (monotonic)
    restart_at: float | None = None  # a crashed peer's restart is due at this time
    last_delay: float = 0.0          # the back-off before its last restart
    events: list = field(default_factory=list)
    evals: dict = field(default_factory=dict)    # round -> (members, correct, total) of my evaluations

    def line(self) -> str:
        last = min(self.round, self.rounds) if self.rounds else self.round
        again = f" (restarted {self.restarts}x)" if self.restarts else ""
        if self.exit_code is not None:
            state = "finished" if self.exit_code == 0 else (
                "crashed (injected)" if self.exit_code == CRASH_EXIT_CODE else describe(self.exit_code))
            if self.restart_at is not None:
                state += f", restarting in {max(0.0, self.restart_at - time.monotonic()):.1f} s"
            return f"peer {self.id}: {state} (round {last}, epoch {self.epoch:.2f}){again}"
        if not self.rounds:                       # no plan record yet: loading data and the model
            return f"peer {self.id}: starting"
        done = min(20, int(20 * self.epoch / self.epochs)) if self.epochs else 0
        loss = f"  loss {self.loss:.3f}" if self.loss is not None else ""
        return (f"peer {self.id}: epoch {self.epoch:5.2f}/{self.epochs:g}  step {self.step}/{self.steps or '?'}  "
                f"round {last}/{self.rounds} {self.phase:<8} [{'#' * done}{'.' * (20 - done)}]{loss}{again}")

    def poll(self, run_dir: Path) -> None:
        recs, self.offset = read_from(run_dir / f"metrics-{self.id}.jsonl", self.offset)
        for r in recs:
            self.round = r.get("round", self.round)
            if r["type"] == "plan":
                self.rounds, self.epochs, self.steps = r["rounds"], r["epochs"], r.get("total_steps", 0)
            elif r["type"] == "step":
                self.loss, self.epoch = r["loss"], r.get("epoch", self.epoch)
                self.step = r.get("global_step", self.step)
            elif r["type"] == "phase":
                self.phase = r["phase"]
            elif r["type"] == "round":
                self.epoch = r.get("epoch", self.epoch)
                if r.get("total"):
                    self.evals[r["round"]] = (tuple(r["members"]), r["correct"], r["total"])
            elif r["type"] in ("fault", "event"):
                self.events.append(r)


def consensus_accuracy(views) -> tuple[int, float, float] | None:
    """(round, epoch, accuracy) of the newest evaluated round whose members have all reported."""
    by_round: dict[int, dict[int, tuple]] = {}
    for v in views:
        for rnd, ev in v.evals.items():
            by_round.setdefault(rnd, {})[v.id] = ev
    for rnd in sorted(by_round, reverse=True):
        got = by_round[rnd]
        members = next(iter(got.values()))[0]
        if set(members) <= set(got):
            correct = sum(got[m][1] for m in members)
            total = sum(got[m][2] for m in members)
            return rnd, max(v.epoch for v in views), correct / total if total else 0.0
    return None


class LiveView:
    def __init__(self, views: dict[int, PeerView], out=sys.stdout, tested_on: str = "the test split"):
        self.views = views
        self.tested_on = tested_on
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._printed: dict[object, tuple] = {}

    def lines(self) -> list[str]:
        lines = [v.line() for v in self.views.values()]
        acc = consensus_accuracy(self.views.values())
        if acc:
            lines.append(f"consensus: {100 * acc[2]:.2f}% on {self.tested_on} after round {acc[0]}")
        return lines

    def render(self) -> None:
        lines = self.lines()
        if self.tty:
            self.out.write((f"\x1b[{self._drawn}F" if self._drawn else "") + "".join(f"\x1b[2K{l}\n" for l in lines))
            self.out.flush()
            self._drawn = len(lines)
            return
        now = time.monotonic()
        for key, line in zip([*self.views, "consensus"], lines):
            v = self.views.get(key)
            state = (bool(v.rounds), len(v.evals), v.exit_code, v.restarts) if v else line
            last_state, last_t, last_line = self._printed.get(key, (None, -PLAIN_EVERY_S, None))
            if state != last_state or (now - last_t >= PLAIN_EVERY_S and line != last_line):
                self._printed[key] = (state, now, line)
                print(line, file=self.out, flush=True)
