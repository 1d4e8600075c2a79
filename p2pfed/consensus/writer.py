"""The end of a run: which peer writes the outputs, and the wait for it.

The writer is output.writer if that peer is alive, else the lowest live member of the last
committed round. It collects the peers' reports (waiting a bounded time for the last round's),
writes consensus.pt and summary.json, sends `done` to everyone, and only then does the slow
optional work (ONNX export, INT8 quantization). The others wait for `done` or for the writer's
death, whichever comes first; a new writer is elected if it dies.
"""
from __future__ import annotations

import logging

from ..net import clock, protocol
from ..net.protocol import COUNT_LIMIT, ID_LIMIT
from .mailbox import Mailbox

log = logging.getLogger("p2pfed.consensus.writer")

_REPORT_TYPES = {"members": list, "digest": str, "averaging_s": (int, float), "bytes_sent": int,
                 "attempt": int, "events": list, "train_loss": (int, float), "n_samples": int}
_EVAL_TYPES = {"correct": int, "total": int, "loss_sum": (int, float)}     # only in rounds that evaluated


def valid_report(stats) -> bool:
    """A report's stats have the documented types and plausible values (docs/protocol.md, report)."""
    if not (isinstance(stats, dict) and all(isinstance(stats.get(k), t) for k, t in _REPORT_TYPES.items())
            and all(isinstance(stats.get(k), t) for k, t in _EVAL_TYPES.items() if k in stats)):
        return False
    if len({k in stats for k in _EVAL_TYPES}) != 1:         # an evaluation's counts come all together or not at all
        return False
    numbers = [stats[k] for k in ("averaging_s", "bytes_sent", "attempt", "n_samples", "train_loss")]
    numbers += [stats[k] for k in _EVAL_TYPES if k in stats]
    if any(isinstance(v, bool) or not 0 <= v < COUNT_LIMIT for v in numbers):     # also rejects NaN
        return False
    if "total" in stats and stats["correct"] > stats["total"]:
        return False
    if "life" in stats and (type(stats["life"]) is not int or not 1 <= stats["life"] < COUNT_LIMIT):
        return False
    return all(type(m) is int and 0 <= m < ID_LIMIT for m in stats["members"])


def valid_reports(reports: dict[int, dict[int, dict]]) -> dict[int, dict[int, dict]]:
    """round -> peer -> stats, keeping only reports whose stats are valid (they came from the
    network: ill-typed or absurd ones are dropped with one log line per round)."""
    out = {}
    for r, by in reports.items():
        out[r] = {p: s for p, s in by.items() if valid_report(s)}
        if len(out[r]) != len(by):
            log.warning("round %d: ignored %d malformed reports", r, len(by) - len(out[r]))
    return out


def elect(mailbox: Mailbox, want: int, final_members: list[int], me: int) -> int:
    if want >= 0 and mailbox.alive(want):
        return want
    return min(mailbox.live(final_members) or [me])


def collect_reports(mailbox: Mailbox, last_round: int, members: list[int]) -> dict[int, dict[int, dict]]:
    """round -> peer -> stats, after waiting (bounded) for the last round's live members."""
    deadline = clock.now() + protocol.REPORT_WAIT_DEAD_AFTER * mailbox.dead_after_s
    while clock.now() < deadline:
        have = mailbox.get("report", last_round)
        missing = [m for m in members if m not in have and mailbox.alive(m)]
        if not missing:
            break
        mailbox.wait(deadline, watch=missing)
    return valid_reports({r: {p: m["stats"] for p, m in by.items()} for r, by in mailbox.by_round("report").items()})


def await_done(mailbox: Mailbox, last_round: int, is_writer, write, deadline_s: float) -> bool:
    """Wait until a writer says done; if I become the writer, call write(). True if the run's
    outputs were written (by me or by another peer) before the deadline."""
    deadline = clock.now() + deadline_s
    while clock.now() < deadline:
        if mailbox.get("done", last_round):
            return True
        if is_writer():
            write()
            return True
        mailbox.pump(min(protocol.POLL_S, max(0.0, deadline - clock.now())))
    return False

