"""The simulated world: one virtual clock, one event queue, an in-memory network.

Every peer process of a simulation (a *life*) is a greenlet running the real consensus code:
a coroutine with its own call stack, so blocking calls deep inside consensus/ need no change.
Only one runs at a time: the scheduler switches to a life, and the life switches back when it
blocks (waiting for a message or for virtual time to pass). Nothing runs in parallel and
nothing depends on the wall clock, so a run is a pure function of its seed: the same seed gives
the same events in the same order, and the same trace hash. (Threads handing a baton were
tried first: a switch costs about 70 us there against about 1 us with greenlet.)

The network delivers what the lives send after a seeded latency, in order per link (as one
TCP connection does), and can drop, duplicate and reorder messages, and cut links one way or
both. A message on a cut link, or to a peer whose process is down, waits like ZeroMQ's queue
and outbox do (net/outbox.py): it is delivered if the link heals or the peer comes back within
UNSENT_KEEP_S, and lost otherwise. Heartbeats are never kept (the next one says the same).
"""
from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Callable

try:
    import greenlet
except ImportError:                 # pragma: no cover - said once, with what to do
    raise ImportError("the simulator needs greenlet: pip install -e '.[sim]' (or '.[test]')") from None

from ..net import protocol, wire


class Killed(BaseException):
    """The simulator ended this process (a crash): raised in its greenlet, never caught by
    `except Exception`, so the real code unwinds as far as its `finally` blocks."""


@dataclass(frozen=True)
class NetParams:
    """How the simulated network behaves (seeded per run, plan.py)."""
    latency_s: float = 0.001        # one-way delay of every message
    jitter_s: float = 0.002         # plus an exponential delay with this mean
    drop_p: float = 0.0             # a message is lost (a connection reset under it)
    dup_p: float = 0.0              # a message is delivered twice
    reorder_p: float = 0.0          # a message skips its link's order (a reconnect)
    keep_s: float = protocol.UNSENT_KEEP_S


class Trace:
    """Every event, as one line each, hashed as it goes: equal hashes, equal runs."""

    def __init__(self, keep: bool):
        self.keep = keep
        self.lines: list[str] = []
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, now: float, text: str) -> None:
        line = f"{now:.6f} {text}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.count += 1
        if self.keep:
            self.lines.append(line)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()[:16]


def describe(frames: list[bytes]) -> str:
    """A message in one short line: kind, sender, round, attempt (for the trace)."""
    try:
        msg = wire.decode(frames, 1 << 40)
    except wire.WireError as e:
        return f"<undecodable: {e}>"
    h = msg.header
    where = "".join(f" {k[0]}{h[k]}" for k in ("round", "attempt", "seq") if k in h)
    return f"{msg.kind} from {msg.sender}{where}"


class World:
    def __init__(self, seed: int, net: NetParams, keep_trace: bool = False):
        self.seed = seed
        self.now = 0.0
        self.net = net
        self.rng = random.Random(seed)
        self.trace = Trace(keep_trace)
        self._events: list = []
        self._seq = 0
        self.scheduler = greenlet.getcurrent()           # the greenlet that runs the events
        self.running = None                              # the life running now (None: the scheduler)
        self.endpoints: dict[int, Callable[[int, list[bytes]], None] | None] = {}   # peer -> deliver (None: down)
        self.cut: set[tuple[int, int]] = set()           # (from, to) links that carry nothing now
        self._link_last: dict[tuple[int, int], float] = {}
        self._held: dict[tuple[int, int], list[tuple[float, list[bytes]]]] = {}
        self.observe: Callable[[int, wire.Message], None] = lambda peer, msg: None   # every delivery (checks)
        self.tamper: Callable[[int, int, list[bytes]], list[bytes]] | None = None    # corrupts messages (plan)
        self.failure: str | None = None                  # set by a check or a crashed thread: the run stops
        self.sent = 0                                    # messages sent, heartbeats included
        self.bytes = 0
        self.heartbeats = 0
        self._decoded: dict[bytes, tuple] = {}

    # ------------------------------------------------------------------ time and events
    def at(self, t: float, fn: Callable, *args) -> None:
        """Run fn(*args) at virtual time t (events at one time run in the order they were added)."""
        self._seq += 1
        heapq.heappush(self._events, (max(t, self.now), self._seq, fn, args))

    def run_until(self, t_end: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Process events up to t_end, or until stop() or a failure."""
        while self._events and self.failure is None and not stop():
            t, _, fn, args = self._events[0]
            if t > t_end:
                break
            heapq.heappop(self._events)
            self.now = t
            fn(*args)
        if self.now < t_end and (not self._events or self._events[0][0] > t_end):
            self.now = t_end

    def decode(self, data: list[bytes], max_bytes: int) -> wire.Message:
        """wire.decode, remembered for messages without arrays (heartbeats repeat the same bytes)."""
        if len(data) != 1:
            return wire.decode(data, max_bytes)
        known = self._decoded.get(data[0])
        if known is None:
            msg = wire.decode(data, max_bytes)
            if len(self._decoded) > 50_000:
                self._decoded.clear()
            self._decoded[data[0]] = known = (msg.kind, msg.sender, msg.header)
        return wire.Message(known[0], known[1], dict(known[2]))

    def fail(self, what: str) -> None:
        if self.failure is None:
            self.failure = what
            self.trace.add(self.now, f"VIOLATION {what}")

    # ------------------------------------------------------------------ the network
    def send(self, src: int, dst: int, frames: list, keep: bool = True) -> None:
        """Queue a message from src to dst (frames are copied now, as ZeroMQ does when it sends)."""
        data = [bytes(f) for f in frames]
        if self.tamper is not None:
            data = self.tamper(src, dst, data)
        self.sent += 1
        self.bytes += sum(len(f) for f in data)
        if not keep:
            self.heartbeats += 1
        self._route(src, dst, data, keep, self.now)

    def _route(self, src: int, dst: int, data: list[bytes], keep: bool, sent_at: float) -> None:
        link = (src, dst)
        if link in self.cut or self.endpoints.get(dst) is None:
            if keep:
                self._held.setdefault(link, []).append((sent_at, data))
            return
        rng, net = self.rng, self.net
        if net.drop_p and rng.random() < net.drop_p:
            self.trace.add(self.now, f"drop {src}->{dst} {describe(data)}")
            return
        t = self.now + net.latency_s + (rng.expovariate(1.0 / net.jitter_s) if net.jitter_s else 0.0)
        if not (net.reorder_p and rng.random() < net.reorder_p):
            t = max(t, self._link_last.get(link, 0.0))      # in order on one connection
            self._link_last[link] = t
        self.at(t, self._deliver, src, dst, data, sent_at)
        if net.dup_p and rng.random() < net.dup_p:
            self.at(t + net.latency_s, self._deliver, src, dst, data, sent_at)

    def _deliver(self, src: int, dst: int, data: list[bytes], sent_at: float) -> None:
        deliver = self.endpoints.get(dst)
        if (src, dst) in self.cut or deliver is None:      # cut, or died, while the message travelled
            self._held.setdefault((src, dst), []).append((sent_at, data))
            return
        deliver(src, data)

    def release(self) -> None:
        """Deliver what waits on links that carry again (healed, or the peer is back), if it has
        waited less than keep_s; forget the rest."""
        for link in list(self._held):
            src, dst = link
            if link in self.cut or self.endpoints.get(dst) is None:
                continue
            waiting = self._held.pop(link)
            for sent_at, data in waiting:
                if self.now - sent_at <= self.net.keep_s:
                    self._route(src, dst, data, False, sent_at)

    def expire_held(self) -> None:
        for link, waiting in list(self._held.items()):
            kept = [(s, d) for s, d in waiting if self.now - s <= self.net.keep_s]
            if kept:
                self._held[link] = kept
            else:
                del self._held[link]

    def cut_link(self, src: int, dst: int) -> None:
        self.cut.add((src, dst))
        self.trace.add(self.now, f"cut {src}->{dst}")

    def heal_link(self, src: int, dst: int) -> None:
        self.cut.discard((src, dst))
        self.trace.add(self.now, f"heal {src}->{dst}")
        self.release()
