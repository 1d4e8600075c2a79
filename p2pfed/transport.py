"""ZeroMQ transport: every socket lives here, in one network thread.

Each peer binds one ROUTER (inbound only) and keeps one DEALER per other peer (outbound
only), whose routing id is its own peer id. A background thread owns all of them: it sends
heartbeats every heartbeat_interval_s (so a peer busy training is never taken for dead),
receives and validates every frame (wire.decode), answers `fetch` requests from the model
snapshot it was given, and forwards the main thread's outgoing messages (handed over an
inproc socket, zero-copy). The main thread sees only validated Messages from recv().

`last_seen` records when a valid message last came from each peer; whether a peer is alive is
decided in one place, mailbox.Mailbox.alive. If the network thread dies anyway, `recv` and
`send` raise TransportDown, so the peer exits instead of hanging. All sockets use
LINGER=0 unless close() is asked to flush; sends never block (a full or disconnected peer
drops the message, and the protocol's deadlines handle the rest).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import zmq

from . import wire

log = logging.getLogger("p2pfed.transport")

from .protocol import INBOX_LIMIT

STOP = b"__stop__"


class TransportDown(RuntimeError):
    """The network thread died: this peer can no longer heartbeat or receive, so it must exit."""


class BindError(RuntimeError):
    """The peer could not listen on its address (in use, not local, bad keys); says what to do."""


@dataclass
class CurveKeys:
    public: bytes                       # this peer's Z85 public key
    secret: bytes                       # this peer's Z85 secret key
    peers: dict[int, bytes]             # peer id -> Z85 public key (the allow list)


class Transport:
    def __init__(self, me, peers, *, max_message_bytes: int, heartbeat_interval_s: float, dead_after_s: float,
                 curve: CurveKeys | None = None):
        self.me = me
        self.peers = {p.id: p for p in peers if p.id != me.id}
        self.max_message_bytes = int(max_message_bytes)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.dead_after_s = dead_after_s
        self.curve = curve
        self.log = log
        self.inbox: queue.Queue[wire.Message] = queue.Queue(INBOX_LIMIT)
        self.last_seen: dict[int, float] = {}
        self.info: dict[int, dict] = {}           # last heartbeat header per peer
        self.status = {"round": 0, "phase": "start", "committed": 0}
        self.snapshot: list | None = None          # frames of a `model` message to answer fetches
        self.responder = None                      # optional fn(Message) -> frames | None, net thread
        self.bytes_sent = 0
        self.rejected = 0
        self._reject_logged: dict[tuple, float] = {}
        self._ctx = zmq.Context()
        self._ready = threading.Event()
        self._error: BaseException | None = None        # why the network thread's loop ended, if it crashed
        self._setup_error: BaseException | None = None  # why it could not start (bind, keys)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"p2pfed-net-{me.id}", daemon=True)
        self._cmd: zmq.Socket | None = None
        self._lock = threading.Lock()              # the main thread's inproc socket may be used by helpers
        self._inproc = f"inproc://p2pfed-cmd-{id(self)}"
        self._auth = None

    # ------------------------------------------------------------------ main-thread API
    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._setup_error:
            err = self._setup_error
            where = f"{self.me.bind or self.me.host}:{self.me.port}"
            if isinstance(err, zmq.ZMQError) and err.errno == zmq.EADDRINUSE:
                raise BindError(f"peer {self.me.id}: address {where} is already in use: another program (or "
                                    f"an earlier run still exiting) listens there; stop it, or give peer "
                                    f"{self.me.id} another port in the config") from None
            raise BindError(f"peer {self.me.id}: could not listen on {where} ({err}); check host, bind and port of "
                            f"peer {self.me.id} in the config") from None
        self._cmd = self._ctx.socket(zmq.PUSH)
        self._cmd.setsockopt(zmq.LINGER, 0)
        self._cmd.connect(self._inproc)

    def send(self, dest: int, frames: list) -> None:
        self._check_alive()
        with self._lock:
            try:   # never block: with the network thread gone, nothing would ever read this
                self._cmd.send_multipart([str(dest).encode()] + list(frames), zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._check_alive()
                log.warning("peer %s: outgoing queue full; dropped a message to peer %s", self.me.id, dest)

    def broadcast(self, dests, frames: list) -> None:
        for d in dests:
            if d != self.me.id:
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

    @property
    def failed(self) -> str | None:
        """Why the network thread died, or None while it runs (or after a deliberate close)."""
        if self._closing or self._thread.is_alive() or not self._ready.is_set():
            return None
        return f"{type(self._error).__name__}: {self._error}" if self._error else "it exited"

    def _check_alive(self) -> None:
        why = self.failed
        if why:
            raise TransportDown(f"peer {self.me.id}: the network thread died ({why}); the peer cannot heartbeat "
                                f"or receive any more, so it stops. Please report {why!r} with the peer's log")

    def set_status(self, **fields) -> None:
        self.status = {**self.status, **fields}

    def serve(self, frames: list | None) -> None:
        """Answer future `fetch` requests with these frames (a complete `model` message)."""
        self.snapshot = frames

    def close(self, flush_s: float = 0.0) -> None:
        """Stop the thread; flush_s > 0 gives queued messages that long to leave (clean exit)."""
        self._closing = True
        if self._cmd is not None and self._thread.is_alive():
            with self._lock:
                try:
                    self._cmd.send_multipart([STOP, str(flush_s).encode()], zmq.NOBLOCK)
                except zmq.Again:
                    pass
            self._thread.join(timeout=flush_s + 5)
        if self._cmd is not None:
            self._cmd.close(linger=0)
        if not self._thread.is_alive():      # a stuck thread keeps the context; never block exit on it
            self._ctx.term()

    # ------------------------------------------------------------------ network thread
    def _socket_options(self, s: zmq.Socket) -> None:
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 1000)
        s.setsockopt(zmq.SNDHWM, 1000)

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as e:  # bind failure, bad keys: reported by start()
            self._setup_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException as e:   # supervised: the main thread sees it through failed/recv/send
            self._error = e
            self.log.exception("network thread crashed; the peer will stop")
        finally:
            if getattr(self, "_monitor", None) is not None:
                self._router.disable_monitor()
                self._monitor.close(linger=0)
            for s in [self._router, self._pull, *self._dealers.values()]:
                s.close(linger=0 if not getattr(self, "_flush_ms", 0) else self._flush_ms)
            if self._auth:
                self._auth.stop()

    def _setup(self) -> None:
        ctx = self._ctx
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(self._inproc)
        self._router = ctx.socket(zmq.ROUTER)
        self._socket_options(self._router)
        self._router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        if self.curve:
            from .security import start_authenticator
            self._auth = start_authenticator(ctx, self.curve.peers)
            self._router.curve_server = True
            self._router.curve_secretkey = self.curve.secret
            self._router.curve_publickey = self.curve.public
        bind = self.me.bind or self.me.host
        self._router.bind(f"tcp://{bind}:{self.me.port}")
        self._dealers: dict[int, zmq.Socket] = {}
        for pid, spec in self.peers.items():
            d = ctx.socket(zmq.DEALER)
            self._socket_options(d)
            d.setsockopt(zmq.IMMEDIATE, 1)          # never queue for a peer that is not connected
            d.setsockopt(zmq.ROUTING_ID, str(self.me.id).encode())
            d.setsockopt(zmq.RECONNECT_IVL, 100)
            d.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            if self.curve:
                d.curve_serverkey = self.curve.peers[pid]
                d.curve_publickey = self.curve.public
                d.curve_secretkey = self.curve.secret
            d.connect(f"tcp://{spec.host}:{spec.port}")
            self._dealers[pid] = d

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        monitor = self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        poller.register(monitor, zmq.POLLIN)
        next_hb = time.monotonic()
        while True:
            timeout_ms = max(0, int((next_hb - time.monotonic()) * 1000))
            events = dict(poller.poll(timeout_ms))
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
                        self._flush_ms = int(float(cmd[1].bytes) * 1000)
                        return
                    self._forward(int(cmd[0].bytes), cmd[1:])
            if monitor in events:
                self._monitor_event(monitor)
            if time.monotonic() >= next_hb:
                hb = wire.encode("hb", self.me.id, **self.status)
                for pid in self._dealers:
                    self._forward(pid, hb, count=False)
                next_hb = time.monotonic() + self.heartbeat_interval_s

    def _monitor_event(self, monitor: zmq.Socket) -> None:
        """ZeroMQ drops oversized messages and failed handshakes itself; say so in the log."""
        from zmq.utils.monitor import recv_monitor_message
        ev = recv_monitor_message(monitor)
        what = {zmq.EVENT_DISCONNECTED: f"connection closed (a peer left, or sent a message over "
                                        f"max_message_bytes={self.max_message_bytes}, or broke the ZMTP protocol)",
                zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake refused: CURVE key not listed in the config",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed: not a ZeroMQ peer or wrong security"}
        self.log.info("inbound %s", what.get(ev["event"], f"event {ev['event']}"))

    def _forward(self, dest: int, frames: list, count: bool = True) -> None:
        sock = self._dealers.get(dest)
        if sock is None:
            return
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if count:
                self.log.debug("peer %s unreachable; dropped a message", dest)
            return
        if count:
            self.bytes_sent += sum(len(f.buffer) if isinstance(f, zmq.Frame) else len(f) for f in frames)

    def _reject(self, who, reason: str, kind: str | None = None) -> None:
        """Count and log a dropped frame; the same (sender, kind of reason) is logged at most once a
        second (kind defaults to the reason itself)."""
        self.rejected += 1
        key = (who, kind or reason)
        now = time.monotonic()
        if now - self._reject_logged.get(key, 0.0) >= 1.0:
            self._reject_logged[key] = now
            self.log.warning("rejected frame from %s: %s (%d rejected so far)", who, reason, self.rejected)
        if len(self._reject_logged) > 1000:
            self._reject_logged.clear()

    def _incoming(self, frames: list) -> None:
        """Handle one inbound message. Any exception counts as a rejected frame: one frame
        must never end the network thread."""
        try:
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
        if self.curve:
            user = frames[0].get("User-Id")
            if user != str(sender):
                return self._reject(f"peer {sender}", f"CURVE key belongs to {user!r}, not peer {sender}")
        try:
            msg = wire.decode(frames[1:], self.max_message_bytes)
        except wire.WireError as e:
            return self._reject(f"peer {sender}", str(e))
        if msg.sender != sender:
            return self._reject(f"peer {sender}", f"message claims to be from peer {msg.sender}")
        self.last_seen[sender] = time.monotonic()
        if msg.kind == "hb":
            self.info[sender] = msg.header
            return
        if msg.kind == "fetch":
            if self.snapshot is not None:
                self._forward(sender, self.snapshot)
            return
        if self.responder is not None:
            reply = self.responder(msg)
            if reply:
                self._forward(sender, reply)
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
