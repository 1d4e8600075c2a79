"""What the network thread learns and the main thread reads, behind one lock.

The network thread writes when each peer was last heard and its last heartbeat; the main
thread writes what the heartbeats say about it (status), what to answer while it is busy
(served), and its standing `ready` (announced). Neither thread touches these dicts directly.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from . import clock, protocol, wire


@dataclass(frozen=True)
class Served:
    """What the network thread answers with while the main thread works: the last committed
    round's `model` (for `fetch`) and `commit` notice (for ready/group/part of that round or an
    older one, except a ready with another recipe: my rounds are not that peer's rounds)."""
    round: int
    model_frames: list
    commit_frames: list
    recipe: str


class SharedState:
    def __init__(self):
        self._lock = threading.Lock()
        self._last_seen: dict[int, float] = {}
        self._heartbeats: dict[int, dict] = {}
        self._bye: set[int] = set()       # peers whose last message was a bye
        # life: a random id of this process, in every heartbeat: a peer that restarts has a new one
        self._status = {"round": 0, "phase": "start", "committed": 0, "life": os.urandom(8).hex()}
        self._lives: dict[int, str] = {}      # peer -> the life id of its last heartbeat
        self._reborn: dict[int, float] = {}   # peer -> when (monotonic) a heartbeat with a new life id came
        self._served: Served | None = None
        self._announced: tuple[int, list, float] | None = None   # (round, ready frames, first sent)
        self._resent: dict[int, float] = {}

    # ------------------------------------------------------------------ main thread
    def last_seen(self, peer: int) -> float | None:
        with self._lock:
            return self._last_seen.get(peer)

    def said_bye(self, peer: int) -> bool:
        with self._lock:
            return peer in self._bye

    def reborn_at(self, peer: int) -> float | None:
        """When (monotonic) this peer's heartbeats last came from a new process (None: never seen)."""
        with self._lock:
            return self._reborn.get(peer)

    def heartbeat(self, peer: int) -> dict:
        with self._lock:
            return dict(self._heartbeats.get(peer, {}))

    def set_status(self, **fields) -> None:
        with self._lock:
            self._status = {**self._status, **fields}

    def serve(self, served: Served) -> None:
        with self._lock:
            self._served = served

    def announce(self, rnd: int | None, frames: list | None) -> None:
        with self._lock:
            self._announced = None if rnd is None else (rnd, frames, clock.now())
            self._resent.clear()

    # ------------------------------------------------------------------ network thread
    def heartbeat_frames(self, me: int) -> list:
        with self._lock:
            return wire.encode("hb", me, **self._status)

    def heard(self, msg: wire.Message) -> list | None:
        """Record a valid message; return the network thread's own answer to it, if any: the
        model to a fetch, a commit notice to a peer still in a round I committed, my standing
        ready to a peer in my round that has not committed it (at most every READY_RESEND_S,
        and only once the ready has stood that long)."""
        now = msg.received or clock.now()
        with self._lock:
            self._last_seen[msg.sender] = now
            if msg.kind == "bye":
                self._bye.add(msg.sender)
            else:
                self._bye.discard(msg.sender)
            served, announced = self._served, self._announced
            if msg.kind == "hb":
                self._heartbeats[msg.sender] = msg.header
                life = msg.header.get("life")
                if isinstance(life, str) and len(life) <= protocol.LIFE_MAX_CHARS:
                    if self._lives.get(msg.sender, life) != life:
                        self._reborn[msg.sender] = now
                    self._lives[msg.sender] = life
                if announced:
                    rnd, frames, since = announced
                    if (msg["round"] == rnd and msg["committed"] < rnd and now - since >= protocol.READY_RESEND_S
                            and now - self._resent.get(msg.sender, 0.0) >= protocol.READY_RESEND_S):
                        self._resent[msg.sender] = now
                        return frames
                return None
        if msg.kind == "fetch":
            return served.model_frames if served else None
        if served and msg.kind in ("ready", "group", "part") and msg["round"] <= served.round:
            return None if msg.kind == "ready" and msg["recipe"] != served.recipe else served.commit_frames
        return None


class SharedView:
    """The transport's side of SharedState (`self.shared`): what the network thread learnt, and
    what it is to say. net/transport.py's Transport and the simulator's SimTransport share it."""
    shared: SharedState

    def last_seen(self, peer: int) -> float | None:
        """When (monotonic) a valid message last came from this peer; None if never."""
        return self.shared.last_seen(peer)

    def said_bye(self, peer: int) -> bool:
        """Whether this peer's last message was a `bye` (it stopped on purpose)."""
        return self.shared.said_bye(peer)

    def reborn_at(self, peer: int) -> float | None:
        """When (monotonic) this peer was last heard from a new process of it (it restarted)."""
        return self.shared.reborn_at(peer)

    def heartbeat(self, peer: int) -> dict:
        """A copy of this peer's last heartbeat header ({} if none yet)."""
        return self.shared.heartbeat(peer)

    # ------------------------------------------------------------------ what the network thread says
    def set_status(self, **fields) -> None:
        """What my heartbeats say: round, phase, committed."""
        self.shared.set_status(**fields)

    def serve(self, served: Served) -> None:
        """Answer fetches and late peers from this committed round from now on."""
        self.shared.serve(served)

    def announce(self, rnd: int | None, frames: list | None = None) -> None:
        """My standing `ready` for round rnd (None: withdrawn). The network thread re-sends it,
        at most every READY_RESEND_S, to each peer whose heartbeat says it is in round rnd and
        has not committed it: a ready lost on a link that was not up yet, or dropped by a peer
        that was still rounds behind, is delivered anyway."""
        self.shared.announce(rnd, frames)
