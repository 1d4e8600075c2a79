"""The end of a run: which peer writes the outputs, and the wait for it.

The writer is output.writer if that peer is alive, else the lowest live member of the last
committed round. It collects the peers' reports (waiting a bounded time for the last round's),
writes consensus.pt and summary.json, sends `done` to everyone, and only then does the slow
optional work (ONNX export, INT8 quantization). The others wait for `done` or for the writer's
death, whichever comes first; a new writer is elected if it dies.
"""
from __future__ import annotations

import logging
import time

from . import protocol
from .mailbox import Mailbox

log = logging.getLogger("p2pfed.writer")


def elect(mailbox: Mailbox, want: int, final_members: list[int], me: int) -> int:
    if want >= 0 and mailbox.alive(want):
        return want
    return min(mailbox.live(final_members) or [me])


def collect_reports(mailbox: Mailbox, last_round: int, members: list[int]) -> dict[int, dict[int, dict]]:
    """round -> peer -> stats, after waiting (bounded) for the last round's live members."""
    deadline = time.monotonic() + protocol.REPORT_WAIT_DEAD_AFTER * mailbox.dead_after_s
    while time.monotonic() < deadline:
        have = mailbox.get("report", last_round)
        missing = [m for m in members if m not in have and mailbox.alive(m)]
        if not missing:
            break
        mailbox.wait(deadline, watch=missing)
    return {r: {p: m["stats"] for p, m in by.items()} for r, by in mailbox.by_round("report").items()}


def await_done(mailbox: Mailbox, last_round: int, is_writer, write, deadline_s: float) -> bool:
    """Wait until a writer says done; if I become the writer, call write(). True if the run's
    outputs were written (by me or by another peer) before the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if mailbox.get("done", last_round):
            return True
        if is_writer():
            write()
            return True
        mailbox.pump(min(0.2, max(0.0, deadline - time.monotonic())))
    return False

