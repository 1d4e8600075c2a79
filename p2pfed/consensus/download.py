"""Downloading the consensus from a live peer: a restarted peer, a peer that fell behind, or
one excluded from a round. The answer is checked against the local model's schema and its
digest is recomputed before anything is adopted.

    me -> peer   fetch(round = the oldest round I accept)
    peer -> me   model(round, digest, names, members) + one array per tensor
"""
from __future__ import annotations

import logging
import time

from ..net import protocol, wire
from . import digest as digest_mod
from .mailbox import Mailbox
from .outcome import Committed, Failed

log = logging.getLogger("p2pfed.consensus.download")


def download(transport, mailbox: Mailbox, template: dict, peers: list[int], min_round: int, timeout_s: float,
             expect_digest: str | None = None) -> Committed | Failed:
    """The consensus of a round >= min_round from any live peer, digest-verified. If
    expect_digest is given, a model of exactly min_round must have that digest. Failed when no
    live peer can provide it within timeout_s (it says so when the run has ended)."""
    others = [p for p in peers if p != mailbox.me]
    deadline = time.monotonic() + timeout_s
    asked_at, tried, alone_since = -float("inf"), [], time.monotonic()
    while time.monotonic() < deadline:
        if mailbox.live(others):
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since > 2 * mailbox.dead_after_s:
            return Failed(_nobody(mailbox, min_round))
        got = _take_model(mailbox, template, min_round, expect_digest)
        if got:
            return got
        if time.monotonic() - asked_at > protocol.FETCH_RETRY_S:
            live = sorted(mailbox.live(others), key=lambda p: -mailbox.committed(p))
            if live:
                target = next((p for p in live if p not in tried), live[0])
                tried.append(target)
                transport.send(target, wire.encode("fetch", mailbox.me, round=min_round))
                asked_at = time.monotonic()
        mailbox.pump(min(protocol.FETCH_RETRY_S, max(0.0, deadline - time.monotonic())))
    if not mailbox.live(others):
        return Failed(_nobody(mailbox, min_round))
    return Failed(f"could not download the consensus of round >= {min_round} from any live peer within "
                  f"fetch_timeout_s={timeout_s}")


def _nobody(mailbox: Mailbox, min_round: int) -> str:
    ended = mailbox.last_round and max((mailbox.committed(p) for p in mailbox.peers if p != mailbox.me),
                                       default=0) >= mailbox.last_round
    if ended or mailbox.all_of("done") or mailbox.all_of("bye"):
        return (f"the run has ended: the other peers finished and left while I was behind (I needed round "
                f">= {min_round}); their consensus.pt is the run's result")
    return (f"the others went on without me and no peer is alive to download the consensus of round "
            f">= {min_round} from; if the run has ended, its consensus.pt is the result")


def _take_model(mailbox: Mailbox, template: dict, min_round: int, expect_digest: str | None) -> Committed | None:
    for msg in mailbox.all_of("model"):
        mailbox.discard(msg)
        if msg["round"] < min_round:
            continue
        try:
            state = wire.check_state(msg["names"], msg.arrays, template)
        except wire.WireError as e:
            log.warning("model from peer %s rejected: %s", msg.sender, e)
            continue
        dg = digest_mod.digest(state)
        if dg != msg["digest"] or (expect_digest and msg["round"] == min_round and dg != expect_digest):
            log.warning("model from peer %s rejected: digest %s does not match the announced one", msg.sender, dg[:12])
            continue
        log.debug("downloaded round %d from peer %d", msg["round"], msg.sender)
        return Committed(msg["round"], dg, tuple(msg["members"]), state)
    return None
