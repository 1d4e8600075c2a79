"""Who is there: waiting for the other peers at start-up, and noticing that live peers have
committed the round I am in (then I download instead of training it).
"""
from __future__ import annotations

import logging

from ..net import clock, protocol
from .mailbox import Mailbox
from .outcome import Download, RoundError

log = logging.getLogger("p2pfed.consensus.presence")


class NoPeers(RoundError):
    """No other peer could be reached: the run is over, or this host is cut off (exit code 4;
    a supervisor does not restart it)."""


def wait_for_peers(mailbox: Mailbox, cfg, me: int, resumed: bool = False) -> None:
    """Until a heartbeat has come from every other peer, or startup_timeout_s. A resumed peer (a
    restart) goes on once it has heard one peer and RESUME_LISTEN heartbeat intervals have
    passed: the others are mid-run, and a peer that died with it must not hold its return up."""
    started = clock.now()
    deadline = started + cfg.averaging.startup_timeout_s
    others = [p for p in cfg.peer_ids if p != me]
    missing = others
    while clock.now() < deadline:
        # a heartbeat, not only a message: it says which round the peer has committed (claimed_ahead)
        missing = [p for p in others if not (mailbox.alive(p) and mailbox.transport.heartbeat(p))]
        if not missing:
            return
        if resumed and len(missing) < len(others) and \
                clock.now() - started > protocol.RESUME_LISTEN * cfg.averaging.heartbeat_interval_s:
            log.info("restarted: peers %s are live; going on without %s", sorted(set(others) - set(missing)), missing)
            return
        mailbox.pump(protocol.POLL_S)
    if not others:
        return
    if len(missing) == len(others):
        raise NoPeers(
            f"no other peer reachable within averaging.startup_timeout_s={cfg.averaging.startup_timeout_s}"
            f" (tried {', '.join(f'{p.id}@{p.host}:{p.port}' for p in cfg.peers if p.id != me)}); "
            f"start them, or check host/port in the config and the firewall")
    log.warning("peers %s not reachable after startup_timeout_s=%s; starting without them (they can join "
                "later). Check their host/port in the config and that they are running",
                missing, cfg.averaging.startup_timeout_s)


def claimed_ahead(mailbox: Mailbox, ids: list[int], rnd: int) -> Download | None:
    """A live peer whose heartbeat says it has committed round rnd (or a later one)."""
    claims = [(mailbox.committed(p), p) for p in mailbox.live(ids) if p != mailbox.me]
    best, peer = max(claims, default=(0, -1))
    if best < rnd:
        return None
    return Download(rnd, f"peer {peer} says it has committed round {best}", claimant=peer)
