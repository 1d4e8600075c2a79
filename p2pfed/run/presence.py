"""Who is there: waiting for the other peers at start-up, and noticing that live peers have
committed the round I am in (then I download instead of training it).
"""
from __future__ import annotations

import logging
import time

from ..consensus.mailbox import Mailbox
from ..consensus.outcome import Download, RoundError
from ..net import protocol

log = logging.getLogger("p2pfed.run.presence")


def wait_for_peers(mailbox: Mailbox, cfg, me: int) -> None:
    """Until every other peer has been heard from, or startup_timeout_s."""
    deadline = time.monotonic() + cfg.averaging.startup_timeout_s
    others = [p for p in cfg.peer_ids if p != me]
    missing = others
    while time.monotonic() < deadline:
        missing = [p for p in others if not mailbox.alive(p)]
        if not missing:
            return
        mailbox.pump(protocol.POLL_S)
    if len(missing) == len(others):
        raise RoundError(
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
