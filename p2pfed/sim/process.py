"""A simulated peer process (a *life*) and its transport.

`SimTransport` offers what consensus/ uses of net.transport.Transport (send, broadcast, recv,
last_seen, heartbeat, reborn_at, set_status, serve, announce, reset_link, bytes_sent), backed
by the world's network. What the real network thread does for a peer (heartbeats, answering a
`fetch` and late peers, re-sending a standing `ready`, noticing a restart by its life id) is the
real `net.shared.SharedState`, called by the scheduler when a message arrives; every message is
encoded and decoded with the real `net.wire`, so its validation runs too.

A life is a greenlet: it runs only when the scheduler switches to it, and `recv` with nothing
queued switches back and sleeps until a message arrives or its timeout passes in virtual time.
"""
from __future__ import annotations

import collections
import logging
import math
import traceback
from typing import Callable

from ..net import protocol, wire
from ..net.shared import SharedState, SharedView
from .world import Killed, World, greenlet

log = logging.getLogger("p2pfed.sim.process")

MAX_MESSAGE_BYTES = 1 << 30
SPIN_TICK = 100                 # empty polls at one instant before the clock moves a microsecond
SPIN_LIMIT = 100_000            # empty polls in a row: a busy loop


class Life:
    """One process of one peer: its thread, its transport, and whether it is still alive."""

    def __init__(self, world: World, peer: int, number: int, peer_ids: list[int], heartbeat_interval_s: float,
                 main: Callable[["Life"], None]):
        self.world, self.peer, self.number = world, peer, number
        self.name = f"peer {peer} life {number}"
        self.heartbeat_interval_s = heartbeat_interval_s
        self.transport = SimTransport(self, peer_ids)
        self.alive = True
        self.finished = False
        self.stage = "start"
        self.round = 0
        self._main = main
        self.on_death: Callable[[Life], None] = lambda life: None     # it died (a restart may follow)
        self.on_end: Callable[[Life], None] = lambda life: None       # its greenlet has ended
        self._token = 0
        self._on_message = False
        self._glet = greenlet.greenlet(self._run, parent=world.scheduler)

    # ------------------------------------------------------------------ scheduler side
    def start(self) -> None:
        self.world.endpoints[self.peer] = self.transport.deliver
        self.world.trace.add(self.world.now, f"start {self.name}")
        self.world.at(self.world.now, self._resume)
        self.world.at(self.world.now, self._heartbeat)
        self.world.release()

    def kill(self, why: str) -> None:
        """End this process now (scheduler side: it is blocked; it unwinds and is gone)."""
        if not self.alive:
            return
        self._dead(why)
        if not self.finished:
            self._resume()

    def _dead(self, why: str) -> None:
        self.alive = False
        if self.world.endpoints.get(self.peer) == self.transport.deliver:
            self.world.endpoints[self.peer] = None
        self.world.trace.add(self.world.now, f"kill {self.name}: {why}")
        self.on_death(self)

    def _resume(self) -> None:
        if not self.finished:
            self.world.running = self
            try:
                self._glet.switch()
            finally:
                self.world.running = None

    def _timer(self, token: int) -> None:
        if token == self._token and not self.finished:
            self._resume()

    def _wake(self) -> None:
        """A message arrived: a life blocked in recv runs now."""
        if self._on_message and not self.finished:
            self._on_message = False
            self._token += 1
            self._resume()

    def _heartbeat(self) -> None:
        if not self.alive:
            return
        frames = self.transport.shared.heartbeat_frames(self.peer)
        for p in self.transport.peer_ids:
            self.world.send(self.peer, p, frames, keep=False)
        self.world.at(self.world.now + self.heartbeat_interval_s, self._heartbeat)

    # ------------------------------------------------------------------ life side
    def _run(self) -> None:
        try:
            if self.alive:
                self._main(self)
        except Killed:
            pass
        except Exception as e:
            self.world.fail(f"{self.name} raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            self.finished = True
            if self.alive:
                self._dead("its process ended")
            self.on_end(self)

    def block(self, until: float, on_message: bool) -> None:
        """Hand the baton back until virtual time `until` (or a message, if on_message)."""
        if not self.alive:
            raise Killed()
        self._token += 1
        if until != float("inf"):
            self.world.at(until, self._timer, self._token)
        self._on_message = on_message
        self.world.scheduler.switch()
        self._on_message = False
        if not self.alive:
            raise Killed()

    def sleep(self, seconds: float) -> None:
        """Busy for `seconds` of virtual time (training): messages queue meanwhile."""
        until = self.world.now + seconds
        while self.world.now < until:
            self.block(until, on_message=False)

    def die(self, why: str) -> None:
        """Crash here (life side: a fault point fired)."""
        self._dead(why)
        raise Killed()


class SimTransport(SharedView):
    """Transport's interface over the simulated network (net/transport.py has the real one)."""

    def __init__(self, life: Life, peer_ids: list[int]):
        self.life = life
        self.world = life.world
        self.id = life.peer
        self.peer_ids = sorted(p for p in peer_ids if p != life.peer)
        self.shared = SharedState()
        self.shared.set_status(life=f"{life.number:016x}")   # deterministic life ids (the real ones are random)
        self.inbox: collections.deque[wire.Message] = collections.deque()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rejected = 0
        self.failed = None
        self._spins = 0

    # ------------------------------------------------------------------ the main thread's side
    def send(self, dest: int, frames: list) -> None:
        if not self.life.alive:
            raise Killed()
        self.bytes_sent += sum(len(f) for f in frames)
        self.world.send(self.id, dest, frames)

    def broadcast(self, dests, frames: list) -> None:
        for d in dests:
            if d != self.id:
                self.send(d, frames)

    def recv(self, timeout_s: float) -> wire.Message | None:
        if not self.inbox and timeout_s > 0:
            # at least one tick of the clock: a deadline one ulp ahead must still pass
            self.life.block(max(self.world.now + timeout_s, math.nextafter(self.world.now, math.inf)),
                            on_message=True)
        elif not self.inbox:
            # a poll that finds nothing: real time moves on while a process polls, so after SPIN_TICK
            # polls at one instant the clock moves a microsecond; a wait that keeps polling instead of
            # waiting (in a real process: 100% CPU until its deadline) is a failure
            self._spins += 1
            if self._spins % SPIN_TICK == 0:
                if self._spins >= SPIN_LIMIT:
                    self.world.fail(f"{self.life.name} polls without waiting ({self._spins} polls):\n"
                                    + "".join(traceback.format_stack(limit=8)))
                    raise Killed()
                self.life.block(self.world.now + 1e-6, on_message=False)
        if not self.life.alive:
            raise Killed()
        if self.inbox:
            self._spins = 0
            return self.inbox.popleft()
        return None

    def reset_link(self, dest: int) -> None:
        self.world.trace.add(self.world.now, f"reset link {self.id}->{dest}")

    # ------------------------------------------------------------------ the network thread's side
    def deliver(self, sender: int, data: list[bytes]) -> None:
        """What netthread._handle does with an inbound message (scheduler side)."""
        if not self.life.alive:
            return
        self.bytes_received += sum(len(f) for f in data)
        try:
            msg = self.world.decode(data, MAX_MESSAGE_BYTES)
        except wire.WireError as e:
            self.rejected += 1
            self.world.trace.add(self.world.now, f"reject at {self.id}: {e}")
            return
        if msg.sender != sender:
            self.rejected += 1
            return
        msg.received = self.world.now
        if msg.kind != "hb":
            self.world.trace.add(self.world.now, f"deliver {sender}->{self.id} {_short(msg)}")
        self.world.observe(self.id, msg)
        reply = self.shared.heard(msg)
        if reply:
            self.world.send(self.id, sender, reply)
        if msg.kind not in ("hb", "fetch") or (msg.kind == "hb" and self.shared.reborn_at(sender) == msg.received):
            if len(self.inbox) >= protocol.INBOX_LIMIT:
                self.rejected += 1
                return
            self.inbox.append(msg)
            self.life._wake()


def _short(msg: wire.Message) -> str:
    h = msg.header
    return msg.kind + "".join(f" {k[0]}{h[k]}" for k in ("round", "attempt", "seq") if k in h)
