"""The network thread: it owns every ZeroMQ socket of a peer.

One ROUTER (inbound only) and one DEALER per other peer (outbound only, routing id = my peer
id). The thread sends heartbeats every heartbeat_interval_s, receives and validates every frame
(wire.decode; any exception from one frame counts as a rejected frame and never ends the thread),
answers on the main thread's behalf (shared.SharedState.heard), queues every other valid message
for the main thread, and forwards the main thread's outgoing messages from an inproc socket.

Socket options: LINGER=0 (unless a clean exit flushes), IMMEDIATE=1 on dealers (nothing is queued
for a peer that is not connected), ZMTP heartbeats that close a connection silent for
LINK_TIMEOUT_S, and reconnects every RECONNECT_S .. RECONNECT_MAX_S with a CONNECT_TIMEOUT_S
bound on a hanging connect: a healed link carries messages again within about a second.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

import zmq

from . import protocol, wire
from .curve import CurveKeys, start_authenticator
from .outbox import Outbox
from .ratelimit import RateLimitedLog
from .shared import SharedState

log = logging.getLogger("p2pfed.net.thread")

STOP = b"__stop__"
RESET = b"__reset__"     # close and reopen my outbound link to one peer


def ms(seconds: float) -> int:
    """ZeroMQ takes milliseconds; the protocol's constants are seconds."""
    return int(round(seconds * 1000))


class NetworkThread(threading.Thread):
    def __init__(self, me, peers: dict, ctx: zmq.Context, inproc: str, shared: SharedState,
                 inbox: "queue.Queue[wire.Message]", *, max_message_bytes: int, heartbeat_interval_s: float,
                 curve: CurveKeys | None):
        super().__init__(name=f"p2pfed-net-{me.id}", daemon=True)
        self.me, self.peers, self.ctx, self.inproc = me, peers, ctx, inproc
        self.shared, self.inbox = shared, inbox
        self.max_message_bytes = max_message_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.curve = curve
        self.ready = threading.Event()
        self.error: BaseException | None = None         # why the loop ended, if it crashed
        self.setup_error: BaseException | None = None   # why it could not start (bind, keys)
        self.bytes_sent = 0
        self.bytes_received = 0     # every inbound frame, valid or not
        self.rejected = 0
        self._reject_log = RateLimitedLog(log, protocol.REJECT_LOG_EVERY_S, max_keys=1000)
        self._flush_s = 0.0
        self.outbox = Outbox(max_bytes_per_peer=4 * max_message_bytes)
        self._auth = None
        self._monitor = None

    def run(self) -> None:
        try:
            self._setup()
        except BaseException as e:  # bind failure, bad keys: reported by Transport.start()
            self.setup_error = e
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
        except BaseException as e:   # supervised: the main thread sees it through Transport.failed
            self.error = e
            log.exception("network thread crashed; the peer will stop")
        finally:
            if self._monitor is not None:
                self._router.disable_monitor()
                self._monitor.close(linger=0)
            for s in [self._router, self._pull, *self._dealers.values()]:
                s.close(linger=ms(self._flush_s))
            if self._auth:
                self._auth.stop()

    # ------------------------------------------------------------------ sockets
    def _options(self, s: zmq.Socket) -> None:
        for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, protocol.QUEUE_MESSAGES),
                           (zmq.SNDHWM, protocol.QUEUE_MESSAGES), (zmq.HEARTBEAT_IVL, ms(protocol.LINK_PING_S)),
                           (zmq.HEARTBEAT_TIMEOUT, ms(protocol.LINK_TIMEOUT_S)),
                           (zmq.HEARTBEAT_TTL, ms(protocol.LINK_TIMEOUT_S))):
            s.setsockopt(opt, value)

    def _setup(self) -> None:
        self._pull = self.ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(self.inproc)
        self._router = self.ctx.socket(zmq.ROUTER)
        self._options(self._router)
        self._router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        # a peer that reconnects (after a cut link) takes over its routing id at once, instead of
        # being parked behind its old connection until that one times out
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.curve:
            self._auth = start_authenticator(self.ctx, self.curve.peers)
            self._router.curve_server = True
            self._router.curve_secretkey = self.curve.secret
            self._router.curve_publickey = self.curve.public
        self._router.bind(f"tcp://{self.me.bind or self.me.host}:{self.me.port}")
        self._dealers: dict[int, zmq.Socket] = {pid: self._dealer(pid) for pid in self.peers}
        self._reset_at: dict[int, float] = {}

    def _dealer(self, pid: int) -> zmq.Socket:
        """My outbound link to peer pid: a DEALER whose routing id is my peer id."""
        d = self.ctx.socket(zmq.DEALER)
        self._options(d)
        for opt, value in ((zmq.IMMEDIATE, 1), (zmq.RECONNECT_IVL, ms(protocol.RECONNECT_S)),
                           (zmq.RECONNECT_IVL_MAX, ms(protocol.RECONNECT_MAX_S)),
                           (zmq.CONNECT_TIMEOUT, ms(protocol.CONNECT_TIMEOUT_S))):
            d.setsockopt(opt, value)
        d.setsockopt(zmq.ROUTING_ID, str(self.me.id).encode())
        if self.curve:
            d.curve_serverkey = self.curve.peers[pid]
            d.curve_publickey = self.curve.public
            d.curve_secretkey = self.curve.secret
        spec = self.peers[pid]
        d.connect(f"tcp://{spec.host}:{spec.port}")
        return d

    def reset(self, pid: int) -> None:
        """Replace my outbound link to pid with a new connection (a peer told me it cannot hear
        me while I hear it): at most once per LINK_TIMEOUT_S per peer; what was queued on the old
        link is dropped, as when a connection breaks."""
        now = time.monotonic()
        if pid not in self._dealers or now - self._reset_at.get(pid, -1e9) < protocol.LINK_TIMEOUT_S:
            return
        self._reset_at[pid] = now
        log.warning("peer %d cannot hear me although I hear it; reconnecting my link to it", pid)
        self._dealers[pid].close(linger=0)
        self._dealers[pid] = self._dealer(pid)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        poller.register(self._monitor, zmq.POLLIN)
        next_hb = time.monotonic()
        while True:
            wake = min(next_hb, self.outbox.next_retry)
            events = dict(poller.poll(max(0, ms(wake - time.monotonic()))))
            if time.monotonic() >= self.outbox.next_retry:
                self.bytes_sent += self.outbox.flush(self._send)
            if self._router in events:
                for _ in range(100):
                    try:
                        frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._incoming(frames)
            if self._pull in events:
                for _ in range(100):
                    try:
                        cmd = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if cmd[0].bytes == STOP:
                        self._flush_s = float(cmd[1].bytes)
                        return
                    if cmd[0].bytes == RESET:
                        self.reset(int(cmd[1].bytes))
                        continue
                    self.forward(int(cmd[0].bytes), cmd[1:])
            if self._monitor in events:
                self._monitor_event()
            if time.monotonic() >= next_hb:
                hb = self.shared.heartbeat_frames(self.me.id)
                for pid in self._dealers:
                    self.forward(pid, hb, count=False)
                next_hb = time.monotonic() + self.heartbeat_interval_s

    def _monitor_event(self) -> None:
        """ZeroMQ drops oversized messages and failed handshakes itself; say so in the log."""
        from zmq.utils.monitor import recv_monitor_message
        ev = recv_monitor_message(self._monitor)
        what = {zmq.EVENT_DISCONNECTED: f"connection closed (a peer left, or sent a message over "
                                        f"max_message_bytes={self.max_message_bytes}, or broke the ZMTP protocol)",
                zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake refused: CURVE key not listed in the config",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed: not a ZeroMQ peer or wrong security"}
        log.debug("inbound %s", what.get(ev["event"], f"event {ev['event']}"))

    def forward(self, dest: int, frames: list, count: bool = True) -> None:
        """Send now, or keep it (outbox.py) while the peer's connection is down. Heartbeats
        (count=False) are never kept: the next one says the same."""
        if dest not in self._dealers:
            return
        if count and self.outbox.pending(dest):
            self.outbox.keep(dest, frames)
        elif not self._send(dest, frames) and count:
            self.outbox.keep(dest, frames)
        elif count:
            self.bytes_sent += sum(len(f.buffer) if isinstance(f, zmq.Frame) else len(f) for f in frames)

    def _send(self, dest: int, frames: list) -> bool:
        try:
            self._dealers[dest].send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    # ------------------------------------------------------------------ inbound
    def _reject(self, who: str, reason: str, kind: str | None = None) -> None:
        """Count and log a dropped frame; the same (sender, kind of reason) at most once a second."""
        self.rejected += 1
        self._reject_log.log((who, kind or reason), logging.WARNING, "rejected frame from %s: %s (%d rejected "
                             "so far)", who, reason, self.rejected)

    def _incoming(self, frames: list) -> None:
        """Handle one inbound message. Any exception counts as a rejected frame: one frame
        must never end the network thread."""
        try:
            self.bytes_received += sum(len(f.buffer) if isinstance(f, zmq.Frame) else len(f) for f in frames)
            self._handle(frames)
        except Exception as e:
            self._reject(_claimed_sender(frames), f"internal error handling a frame: {type(e).__name__}: "
                                                  f"{str(e)[:150]}", kind=type(e).__name__)

    def _handle(self, frames: list) -> None:
        ident = frames[0].bytes
        try:
            sender = int(ident.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return self._reject(repr(ident[:16]), "routing id is not a peer id")
        if sender not in self.peers:
            return self._reject(f"peer {sender}", f"peer id {sender} is not in the config")
        if self.curve and frames[0].get("User-Id") != str(sender):
            return self._reject(f"peer {sender}", f"CURVE key belongs to {frames[0].get('User-Id')!r}, "
                                                  f"not peer {sender}")
        try:
            msg = wire.decode(frames[1:], self.max_message_bytes)
        except wire.WireError as e:
            return self._reject(f"peer {sender}", str(e))
        if msg.sender != sender:
            return self._reject(f"peer {sender}", f"message claims to be from peer {msg.sender}")
        msg.received = time.monotonic()
        reply = self.shared.heard(msg)
        if reply:
            self.forward(sender, reply)
        # a heartbeat from a new process of the sender (it restarted) goes to the main thread too,
        # to wake a wait in which that peer's last life is a member (mailbox.alive)
        if msg.kind not in ("hb", "fetch") or (msg.kind == "hb" and self.shared.reborn_at(sender) == msg.received):
            try:
                self.inbox.put_nowait(msg)
            except queue.Full:
                self._reject(f"peer {sender}", "inbox full")


def _claimed_sender(frames: list) -> str:
    """Who a frame says it is from (its routing id), for a log line; never raises."""
    try:
        return f"peer {int(frames[0].bytes.decode('ascii'))}"
    except Exception:
        return "an unknown sender"
