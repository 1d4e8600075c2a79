"""Messages the network thread could not hand to a peer's connection yet, kept a few seconds.

With IMMEDIATE=1 a DEALER refuses a message while its connection is down: just after a peer
started, or while a link that a partition broke reconnects. Dropping such a message loses it
for good (a `part` sent once, a `ready`), and the round then waits out its deadline. So a refused
message is kept, in order, and retried every RETRY_S until it goes through or UNSENT_KEEP_S have
passed (then the peer is presumably gone, and the protocol's deadlines take over). Later messages
to the same peer queue behind it, so order is kept. The bytes kept per peer are bounded.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from . import protocol

log = logging.getLogger("p2pfed.net.outbox")


def _size(frames: list) -> int:
    return sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in frames)


class Outbox:
    def __init__(self, max_bytes_per_peer: int):
        self.max_bytes = max_bytes_per_peer
        self._queues: dict[int, deque] = {}
        self._bytes: dict[int, int] = {}
        self.next_retry = float("inf")

    def pending(self, dest: int) -> bool:
        return bool(self._queues.get(dest))

    def keep(self, dest: int, frames: list) -> None:
        size = _size(frames)
        q = self._queues.setdefault(dest, deque())
        if self._bytes.get(dest, 0) + size > self.max_bytes:
            log.debug("peer %s: %d bytes already wait for its connection; dropped a message", dest,
                      self._bytes.get(dest, 0))
            return
        q.append((time.monotonic() + protocol.UNSENT_KEEP_S, frames, size))
        self._bytes[dest] = self._bytes.get(dest, 0) + size
        self.next_retry = min(self.next_retry, time.monotonic() + protocol.RETRY_S)

    def flush(self, send: Callable[[int, list], bool]) -> int:
        """Retry every kept message in order; send(dest, frames) is True once it went through.
        Returns the bytes sent."""
        now, sent = time.monotonic(), 0
        for dest, q in self._queues.items():
            while q:
                expiry, frames, size = q[0]
                if expiry < now:
                    log.debug("peer %s: no connection for %.0f s; dropped a message", dest, protocol.UNSENT_KEEP_S)
                elif not send(dest, frames):
                    break
                else:
                    sent += size
                q.popleft()
                self._bytes[dest] -= size
        self.next_retry = now + protocol.RETRY_S if any(self._queues.values()) else float("inf")
        return sent
