"""Downloading the consensus from a live peer: a restarted peer, a peer that fell behind, or
one excluded from a round. The answer is checked against the local model's schema and its
digest is recomputed before anything is adopted.

    me -> peers  fetch(round = the oldest round I accept), to FETCH_FANOUT live peers at a time
    peer -> me   model(round, digest, names, members) + one array per tensor
"""
from __future__ import annotations

import logging

from ..net import clock, protocol, wire
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
    deadline = clock.now() + timeout_s
    asked_at, tried, alone_since, reasks = -float("inf"), [], clock.now(), 0
    while clock.now() < deadline:
        if mailbox.reachable(others):
            alone_since = clock.now()
        elif clock.now() - alone_since > 2 * mailbox.dead_after_s:
            return Failed(_nobody(mailbox, min_round), alone=True)
        got, early = _take_model(mailbox, template, min_round, expect_digest)
        if got:
            return got
        committers = {m.sender for m in mailbox.commits(min_round)}
        if early & committers and reasks < protocol.FETCH_REASKS:
            reasks += 1
            # a peer that announced the commit answered before it served that round's model (the
            # commit notice goes out first): ask it again shortly instead of after FETCH_RETRY_S
            tried = [p for p in tried if p not in early & committers]
            asked_at = min(asked_at, clock.now() - protocol.FETCH_RETRY_S + protocol.POLL_S)
        if clock.now() - asked_at > protocol.FETCH_RETRY_S:
            # first a peer that announced the commit of a round I accept: it serves that model
            # (or will, in a moment), where a peer still in the round's exchange would not
            live = sorted(mailbox.reachable(others), key=lambda p: (p not in committers, -mailbox.committed(p)))
            # two peers at a time: a link to a peer that just came back may take a while to carry
            # answers again, and one unanswered fetch would cost FETCH_RETRY_S
            targets = ([p for p in live if p not in tried] + [p for p in live if p in tried])[:protocol.FETCH_FANOUT]
            for target in targets:
                tried.append(target)
                transport.send(target, wire.encode("fetch", mailbox.me, round=min_round))
            if targets:
                asked_at = clock.now()
        mailbox.pump(min(protocol.FETCH_RETRY_S, max(0.0, deadline - clock.now())))
    if not mailbox.reachable(others):
        return Failed(_nobody(mailbox, min_round), alone=True)
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


def _take_model(mailbox: Mailbox, template: dict, min_round: int,
                expect_digest: str | None) -> tuple[Committed | None, set[int]]:
    """A verified model of a round >= min_round if one came, and the peers that answered with an
    older round."""
    early = set()
    for msg in mailbox.all_of("model"):
        mailbox.discard(msg)
        if msg["round"] < min_round:
            early.add(msg.sender)
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
        return Committed(msg["round"], dg, tuple(msg["members"]), state), early
    return None, early
