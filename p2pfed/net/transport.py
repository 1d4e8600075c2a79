"""The transport: the one class the rest of p2pfed talks to the network through.

The main thread sends (handed to the network thread over an inproc socket, zero-copy, never
blocking), receives validated Messages from a queue, and reads what the network thread learnt
(when each peer was last heard, its last heartbeat) through locked accessors. It tells the
network thread what its heartbeats say (`set_status`), what to answer while it is busy
(`serve`), and its standing `ready` (`announce`). The sockets themselves live in the network
thread (netthread.py).

Whether a peer is alive is decided in one place, consensus.mailbox.Mailbox.alive. If the
network thread dies anyway, `recv` and `send` raise TransportDown, so the peer exits instead
of hanging.
"""
from __future__ import annotations

import logging
import queue
import time

import zmq

from . import protocol, wire
from .curve import CurveKeys
from .netthread import RESET, STOP, NetworkThread
from .shared import Served, SharedState, SharedView

log = logging.getLogger("p2pfed.net.transport")

__all__ = ["BindError", "Served", "Transport", "TransportDown"]


class TransportDown(RuntimeError):
    """The network thread died: this peer can no longer heartbeat or receive, so it must exit."""


class BindError(RuntimeError):
    """The peer could not listen on its address (in use, not local, bad keys); says what to do."""


class Transport(SharedView):
    def __init__(self, me, peers, *, max_message_bytes: int, heartbeat_interval_s: float,
                 curve: CurveKeys | None = None):
        self.me = me
        self.id: int = me.id
        self.peer_ids = sorted(p.id for p in peers if p.id != me.id)
        self.inbox: queue.Queue[wire.Message] = queue.Queue(protocol.INBOX_LIMIT)
        self.shared = SharedState()
        self._ctx = zmq.Context()
        self._inproc = f"inproc://p2pfed-cmd-{id(self)}"
        self._thread = NetworkThread(me, {p.id: p for p in peers if p.id != me.id}, self._ctx, self._inproc,
                                     self.shared, self.inbox, max_message_bytes=int(max_message_bytes),
                                     heartbeat_interval_s=heartbeat_interval_s, curve=curve)
        self._cmd: zmq.Socket | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._thread.ready.wait(timeout_s) or self._thread.setup_error:
            err = self._thread.setup_error
            where = f"{self.me.bind or self.me.host}:{self.me.port}"
            if isinstance(err, zmq.ZMQError) and err.errno == zmq.EADDRINUSE:
                raise BindError(f"peer {self.id}: address {where} is already in use: another program (or an "
                                f"earlier run still exiting) listens there; stop it, or give peer {self.id} "
                                f"another port in the config") from None
            raise BindError(f"peer {self.id}: could not listen on {where} ({err}); check host, bind and port of "
                            f"peer {self.id} in the config") from None
        self._cmd = self._ctx.socket(zmq.PUSH)
        self._cmd.setsockopt(zmq.LINGER, 0)
        self._cmd.connect(self._inproc)

    def close(self, flush_s: float = 0.0) -> None:
        """Stop the thread; flush_s > 0 gives queued messages that long to leave (clean exit)."""
        self._closing = True
        if self._cmd is not None and self._thread.is_alive():
            try:
                self._cmd.send_multipart([STOP, str(flush_s).encode()], zmq.NOBLOCK)
            except zmq.Again:
                pass
            self._thread.join(timeout=flush_s + 5)
        if self._cmd is not None:
            self._cmd.close(linger=0)
        if not self._thread.is_alive():      # a stuck thread keeps the context; never block exit on it
            self._ctx.term()

    @property
    def failed(self) -> str | None:
        """Why the network thread died, or None while it runs (or after a deliberate close)."""
        t = self._thread
        if self._closing or t.is_alive() or not t.ready.is_set():
            return None
        return f"{type(t.error).__name__}: {t.error}" if t.error else "it exited"

    def _check_alive(self) -> None:
        why = self.failed
        if why:
            raise TransportDown(f"peer {self.id}: the network thread died ({why}); the peer cannot heartbeat "
                                f"or receive any more, so it stops. Please report {why!r} with the peer's log")

    # ------------------------------------------------------------------ messages
    def send(self, dest: int, frames: list) -> None:
        self._check_alive()
        try:   # never block: with the network thread gone, nothing would ever read this
            self._cmd.send_multipart([str(dest).encode()] + list(frames), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._check_alive()
            log.warning("peer %s: outgoing queue full; dropped a message to peer %s", self.id, dest)

    def reset_link(self, dest: int) -> None:
        """Reconnect my outbound link to dest (it reported me dead while I hear it)."""
        self._check_alive()
        try:
            self._cmd.send_multipart([RESET, str(dest).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def broadcast(self, dests, frames: list) -> None:
        for d in dests:
            if d != self.id:
                self.send(d, frames)

    def recv(self, timeout_s: float) -> wire.Message | None:
        """The next validated message, or None after timeout_s. Raises TransportDown if the
        network thread has died (the wait is cut into 1 s slices to notice it)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            self._check_alive()
            try:
                return self.inbox.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None

    # ------------------------------------------------------------------ what the network thread knows
    @property
    def bytes_sent(self) -> int:
        return self._thread.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._thread.bytes_received

    @property
    def rejected(self) -> int:
        return self._thread.rejected
