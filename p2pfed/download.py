"""Downloading the consensus from a live peer: a restarted peer, a peer that fell behind, or
one excluded from a round. The answer is checked against the local model's schema and its
digest is recomputed before anything is adopted.

    me -> peer   fetch(round = the oldest round I accept)
    peer -> me   model(round, digest, names, members) + one array per tensor
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import averaging, protocol, wire
from .allreduce import RoundError
from .mailbox import Mailbox

log = logging.getLogger("p2pfed.download")


@dataclass
class Consensus:
    round: int
    digest: str
    members: list[int]
    state: dict
    source: int


def download(transport, mailbox: Mailbox, template: dict, peers: list[int], min_round: int,
             timeout_s: float, expect_digest: str | None = None, where: str = "") -> Consensus:
    """The consensus of a round >= min_round from any live peer, digest-verified. If
    expect_digest is given, a model of exactly min_round must have that digest.
    Raises RoundError when no live peer can provide it within timeout_s."""
    me = transport.me.id
    others = [p for p in peers if p != me]
    deadline = time.monotonic() + timeout_s
    asked_at, tried, alone_since = 0.0, [], time.monotonic()
    while time.monotonic() < deadline:
        if mailbox.live(others):
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since > 2 * mailbox.dead_after_s:
            raise RoundError(f"{where}the others went on without me and no peer is alive to download the "
                             f"consensus of round >= {min_round} from (the run may be over)")
        for msg in mailbox.all_of("model"):
            mailbox.discard(msg)
            if msg["round"] < min_round:
                continue
            try:
                state = wire.check_state(msg["names"], msg.arrays, template)
            except wire.WireError as e:
                log.warning("model from peer %s rejected: %s", msg.sender, e)
                continue
            dg = averaging.digest(state)
            if dg != msg["digest"] or (expect_digest and msg["round"] == min_round and dg != expect_digest):
                log.warning("model from peer %s rejected: digest %s does not match the announced one",
                            msg.sender, dg[:12])
                continue
            return Consensus(msg["round"], dg, [int(m) for m in msg["members"]], state, msg.sender)
        if time.monotonic() - asked_at > protocol.FETCH_RETRY_S:
            live = sorted(mailbox.live(others), key=lambda p: -mailbox.committed(p))
            if live:
                target = next((p for p in live if p not in tried), live[0])
                tried.append(target)
                transport.send(target, wire.encode("fetch", me, round=min_round))
                asked_at = time.monotonic()
        mailbox.pump(min(0.5, max(0.0, deadline - time.monotonic())))
    raise RoundError(f"{where}could not download the consensus of round >= {min_round} from any live peer "
                     f"within fetch_timeout_s={timeout_s}")
