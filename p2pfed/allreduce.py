"""One round of averaging among the live peers: group, butterfly all-reduce, digest agreement.

    ready    every peer broadcasts `ready(round, n_samples)` once its local training is done
    group    the lowest live id (the leader) waits until every live peer is ready (or
             ready_timeout_s passes), then broadcasts `group(round, attempt, members, weights)`
    scatter  member i sends slice j of its flat float vector to member j (`part`)
    reduce   member j averages slice j over all members (weights = sample counts)
    gather   member j sends its averaged slice to everyone (`reduced`); the lowest member
             also sends its integer buffers, which everyone copies
    agree    everyone hashes the assembled model and broadcasts `digest`; it commits when
             every live member's digest equals its own

Any failure in an attempt (a member dies, an `abort`, a newer `group`, the deadline)
aborts the attempt: the peer keeps its pre-round model and the leader proposes the next
attempt among the survivors. A peer that learns that the round was committed without it
(a `commit` notice) raises Excluded and the caller downloads the consensus instead.
Per round each member sends about 2x the model's float bytes, whatever the group size.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import averaging, wire

log = logging.getLogger("p2pfed.allreduce")

POLL_S = 0.05   # how often a waiting loop re-checks liveness and deadlines


class AttemptFailed(Exception):
    """This attempt cannot complete; the reason is logged and sent to the group."""
    def __init__(self, reason: str, dead: list[int] = ()):
        super().__init__(reason)
        self.dead = list(dead)


class RoundError(RuntimeError):
    """The round cannot complete at all (max_attempts or a deadline passed)."""


class Behind(Exception):
    """Live peers have already committed this round (or later): download instead of averaging."""
    def __init__(self, rnd: int, peer: int):
        super().__init__(f"peer {peer} has committed round {rnd}")
        self.round = rnd
        self.peer = peer


class Excluded(Exception):
    """The round was committed without this peer; carries the `commit` message."""
    def __init__(self, commit: wire.Message):
        super().__init__(f"round {commit['round']} committed by peer {commit.sender} without me")
        self.commit = commit


@dataclass
class RoundResult:
    state: "OrderedDict[str, np.ndarray]"
    digest: str
    members: list[int]
    weights: list[int]
    attempt: int
    averaging_s: float          # from the accepted group to the commit (the last attempt)
    wait_s: float               # from ready to the accepted group (others' training, failed attempts)
    bytes_sent: int
    digests: dict[int, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


class Mailbox:
    """Files validated messages by (kind, round, attempt) -> {sender: message}.

    Keeps the current round and the next two; older rounds are dropped as stale, except
    `report`, `done` and `bye`, which the writer collects for the whole run.
    """
    KEEP_ALL = ("report", "done", "bye")          # kept for the whole run (small)
    ANY_ROUND = KEEP_ALL + ("model",)              # a downloaded model may be of any round
    AHEAD_OK = ANY_ROUND + ("commit",)             # commits far ahead tell me I am behind

    def __init__(self, transport, validate: Callable[[wire.Message], None] = lambda msg: None):
        self.transport = transport
        self.validate = validate          # schema check against the local model; raises WireError
        self.log = log
        self.round = 0
        self.box: dict[tuple, dict[int, wire.Message]] = defaultdict(dict)
        self.departed: set[int] = set()
        self.suspects: dict[int, float] = {}   # peer -> when a member reported it dead

    def pump(self, timeout_s: float) -> None:
        """Wait up to timeout_s for one message, then take whatever else is queued."""
        msg = self.transport.recv(timeout_s)
        while msg is not None:
            self._file(msg)
            msg = self.transport.recv(0)

    def _file(self, msg: wire.Message) -> None:
        r = msg.header.get("round", 0)
        if msg.kind == "bye":
            self.departed.add(msg.sender)
        else:
            self.departed.discard(msg.sender)
        if msg.kind == "abort":
            for d in msg.header.get("dead", []):
                if isinstance(d, int) and d != self.transport.me.id:
                    self.suspects[d] = time.monotonic()
        try:
            self.validate(msg)
        except wire.WireError as e:
            self.log.warning("rejected %s from peer %s: %s", msg.kind, msg.sender, e)
            return
        if r < self.round and msg.kind not in self.ANY_ROUND:
            self.log.info("dropped stale %s from peer %s: round %s < current round %s", msg.kind, msg.sender, r,
                          self.round)
            return
        if r > self.round + 2 and msg.kind not in self.AHEAD_OK:
            self.log.warning("dropped %s from peer %s for round %s, too far ahead", msg.kind, msg.sender, r)
            return
        self.box[(msg.kind, r, msg.header.get("attempt", -1))][msg.sender] = msg

    def get(self, kind: str, rnd: int, attempt: int = -1) -> dict[int, wire.Message]:
        return self.box.get((kind, rnd, attempt), {})

    def latest_any(self, kind: str) -> list[wire.Message]:
        return [m for (k, _, _), d in self.box.items() if k == kind for m in d.values()]

    def discard(self, msg: wire.Message) -> None:
        self.box.get((msg.kind, msg.header.get("round", 0), msg.header.get("attempt", -1)), {}).pop(msg.sender, None)

    def advance(self, rnd: int) -> None:
        self.round = rnd
        for key in [k for k in self.box if k[1] < rnd and k[0] not in self.KEEP_ALL]:
            del self.box[key]

    def alive(self, peer: int) -> bool:
        """Heard from within dead_after_s, not said bye, and not reported dead by a member since."""
        if peer in self.departed or not self.transport.alive(peer):
            return False
        suspected = self.suspects.get(peer)
        return suspected is None or self.transport.last_seen.get(peer, 0.0) > suspected


class AllReduce:
    def __init__(self, transport, mailbox: Mailbox, acfg, all_peers: list[int],
                 fault: Callable[[str], None] = lambda where: None,
                 on_phase: Callable[[str], None] = lambda phase: None):
        self.t = transport
        self.mb = mailbox
        self.cfg = acfg
        self.me = transport.me.id
        self.all_peers = sorted(all_peers)
        self.log = log
        self.fault = fault
        self.on_phase = on_phase
        self.candidates: dict[str, OrderedDict] = {}   # digest -> result computed in an aborted attempt
        self.min_members = acfg.min_peers or len(self.all_peers) // 2 + 1
        self._quorum_logged = 0.0

    # ------------------------------------------------------------------ helpers
    def _send(self, dest: int, kind: str, arrays=(), **fields) -> None:
        self.t.send(dest, wire.encode(kind, self.me, list(arrays), **fields))

    def _broadcast(self, dests, kind: str, arrays=(), **fields) -> None:
        frames = wire.encode(kind, self.me, list(arrays), **fields)
        self.t.broadcast([d for d in dests if d != self.me], frames)

    def _check_commit(self, rnd: int) -> None:
        commits = [m for (k, r, _), d in self.mb.box.items() if k == "commit" and r >= rnd for m in d.values()]
        if commits:
            raise Excluded(max(commits, key=lambda m: m["round"]))

    def max_attempt_seen(self, rnd: int) -> int:
        seen = [a for (k, r, a) in self.mb.box if r == rnd and a >= 0]
        return max(seen, default=0)

    # ------------------------------------------------------------------ the round
    def run(self, rnd: int, state: "OrderedDict[str, np.ndarray]", n_samples: int) -> RoundResult:
        """Average `state` with the live peers for round rnd. Raises Excluded or RoundError."""
        started = time.monotonic()
        bytes_before = self.t.bytes_sent
        flat = averaging.flatten(state)
        ints = OrderedDict((k, v) for k, v in state.items() if not averaging.is_float(v))
        self.mb.advance(rnd)
        self.candidates.clear()
        self._broadcast(self.all_peers, "ready", round=rnd, n_samples=int(n_samples))
        ready_at = time.monotonic()
        last_attempt, events = 0, []
        for tries in range(1, self.cfg.max_attempts + 1):
            attempt, members, weights = self._await_group(rnd, last_attempt, ready_at, n_samples)
            grouped_at = time.monotonic()
            try:
                new_state, dg, digests = self._attempt(rnd, attempt, members, weights, flat, ints, state)
            except AttemptFailed as e:
                reason = str(e)
                self.log.warning("attempt %d with %s failed: %s; keeping my pre-round model", attempt, members, reason)
                events.append(f"attempt {attempt} {members}: {reason}")
                self._broadcast(members, "abort", round=rnd, attempt=attempt, reason=reason[:200], dead=e.dead)
                last_attempt = attempt
                self._backoff(min(1.0, 0.1 * tries))
                # tell a possibly new leader that I am still ready for this round
                self._broadcast(self.all_peers, "ready", round=rnd, n_samples=int(n_samples))
                continue
            self._broadcast(self.all_peers, "commit", round=rnd, digest=dg, members=members)
            return RoundResult(new_state, dg, members, weights, attempt, time.monotonic() - grouped_at,
                               grouped_at - started, self.t.bytes_sent - bytes_before, digests, events)
        raise RoundError(f"round {rnd}: no attempt succeeded in {self.cfg.max_attempts} tries "
                         f"(averaging.max_attempts); last failures: {events[-3:]}")

    def _backoff(self, seconds: float) -> None:
        """Keep reading messages (aborts carry who died) for a moment before the next attempt."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.mb.pump(until - time.monotonic())

    def _await_group(self, rnd: int, last_attempt: int, ready_at: float, n_samples: int):
        """Block until a group for an attempt > last_attempt includes me (or I propose one)."""
        deadline = ready_at + self.cfg.ready_timeout_s + self.cfg.exchange_timeout_s * self.cfg.max_attempts
        while True:
            self._check_commit(rnd)
            groups = [(a, d) for (k, r, a), d in self.mb.box.items() if k == "group" and r == rnd and a > last_attempt]
            for a, by_sender in sorted(groups, key=lambda g: g[0], reverse=True):
                for msg in by_sender.values():
                    members = [int(m) for m in msg["members"]]
                    weights = [int(w) for w in msg["weights"]]
                    if self.me in members and len(members) == len(weights) and len(set(members)) == len(members):
                        return a, members, weights
            live = [p for p in self.all_peers if self.mb.alive(p)]
            for p in live:
                committed = int(self.t.info.get(p, {}).get("committed", 0))
                if p != self.me and committed >= rnd:
                    raise Behind(committed, p)
            if live and min(live) == self.me:
                proposal = self._maybe_propose(rnd, live, ready_at, n_samples)
                if proposal:
                    return proposal
            if time.monotonic() > deadline:
                raise RoundError(f"round {rnd}: no group formed within {deadline - ready_at:.0f} s "
                                 f"(live peers {live}, leader {min(live) if live else '?'}); "
                                 f"check that every peer runs the same config")
            self.mb.pump(POLL_S)

    def _maybe_propose(self, rnd: int, live: list[int], ready_at: float, n_samples: int):
        ready = {m.sender: int(m["n_samples"]) for m in self.mb.get("ready", rnd).values()
                 if self.mb.alive(m.sender) and m["n_samples"] > 0}
        ready[self.me] = int(n_samples)
        waiting = [p for p in live if p not in ready]
        if waiting and time.monotonic() - ready_at < self.cfg.ready_timeout_s:
            return None
        members = sorted(ready)
        if len(members) < self.min_members:
            if not waiting and time.monotonic() - self._quorum_logged > 10:
                self._quorum_logged = time.monotonic()
                self.log.warning("only %s are live and ready; a round needs %d members (averaging.min_peers, "
                                 "0 = a majority of %d) so that a cut-off minority cannot diverge; waiting",
                                 members, self.min_members, len(self.all_peers))
            return None
        attempt = self.max_attempt_seen(rnd) + 1
        weights = [ready[m] for m in members]
        if waiting:
            self.log.warning("proposing without %s: not ready after ready_timeout_s=%s", waiting,
                             self.cfg.ready_timeout_s)
        self.log.info("proposing attempt %d: members %s, weights %s", attempt, members, weights)
        self._broadcast(self.all_peers, "group", round=rnd, attempt=attempt, members=members, weights=weights)
        return attempt, members, weights

    def _wait_for(self, kind: str, rnd: int, attempt: int, members: list[int], deadline: float,
                  allow_dead: bool = False) -> dict[int, wire.Message]:
        """Messages of `kind` from every other member; fail fast on death, abort or a newer group."""
        others = [m for m in members if m != self.me]
        while True:
            got = self.mb.get(kind, rnd, attempt)
            for m in others:
                if m in self.mb.get("abort", rnd, attempt):
                    raise AttemptFailed(f"peer {m} aborted: {self.mb.get('abort', rnd, attempt)[m]['reason']}")
            if any(a > attempt for (k, r, a) in self.mb.box if k == "group" and r == rnd):
                raise AttemptFailed("a newer attempt was proposed")
            missing = [m for m in others if m not in got]
            dead = [m for m in missing if not self.mb.alive(m)]
            if dead and not allow_dead:
                raise AttemptFailed(f"peer {dead[0]} died (silent for {self.cfg.dead_after_s} s)", dead)
            if not [m for m in missing if m not in dead]:
                return {m: got[m] for m in others if m in got}
            if time.monotonic() > deadline:
                raise AttemptFailed(f"no {kind} from {missing} within exchange_timeout_s={self.cfg.exchange_timeout_s}")
            self._check_commit(rnd)
            self.mb.pump(POLL_S)

    def _attempt(self, rnd, attempt, members, weights, flat, ints, state):
        k, pos = len(members), members.index(self.me)
        bounds = averaging.shard_bounds(flat.size, k)
        deadline = time.monotonic() + self.cfg.exchange_timeout_s
        self.on_phase("exchange")
        # scatter: my slice of shard j goes to member j
        sent = 0
        for j, m in enumerate(members):
            if m == self.me:
                continue
            if sent == (k - 1) // 2:
                self.fault("exchange")           # fault injection: die with half the parts sent
            self._send(m, "part", [flat[bounds[j][0]:bounds[j][1]]], round=rnd, attempt=attempt, shard=j)
            sent += 1
        if k == 1:
            self.fault("exchange")
        parts = self._wait_for("part", rnd, attempt, members, deadline)
        lo, hi = bounds[pos]
        slices = {self.me: flat[lo:hi]}
        for m, msg in parts.items():
            if msg["shard"] != pos:
                raise AttemptFailed(f"peer {m} sent shard {msg['shard']}, expected {pos}")
            try:
                slices[m] = wire.check_shard(msg, hi - lo)
            except wire.WireError as e:
                raise AttemptFailed(f"peer {m}: {e}") from None
        mine = averaging.weighted_mean([slices[m] for m in members], weights)
        # gather: my averaged shard goes to everyone; the lowest member adds its integer buffers
        source = averaging.integer_source(members)
        extra = list(ints.values()) if self.me == source else []
        names = list(ints.keys()) if self.me == source else []
        self._broadcast(members, "reduced", [mine, *extra], round=rnd, attempt=attempt, shard=pos, ints=names)
        reduced = self._wait_for("reduced", rnd, attempt, members, deadline)
        out = np.empty_like(flat)
        out[lo:hi] = mine
        int_values = ints
        for m, msg in reduced.items():
            j = members.index(m)
            if msg["shard"] != j:
                raise AttemptFailed(f"peer {m} sent reduced shard {msg['shard']}, expected {j}")
            try:
                out[bounds[j][0]:bounds[j][1]] = wire.check_shard(msg, bounds[j][1] - bounds[j][0])
                if m == source:
                    int_values = wire.check_ints(msg["ints"], msg.arrays[1:], state)
            except wire.WireError as e:
                raise AttemptFailed(f"peer {m}: {e}") from None
        new_state = averaging.unflatten(out, int_values, state)
        dg = averaging.digest(new_state)
        self.candidates[dg] = new_state
        # agree: every live member must report the same digest. A member that dies after
        # the gather is skipped: its contribution is already in everyone's model.
        self._broadcast(members, "digest", round=rnd, attempt=attempt, digest=dg)
        digests = {self.me: dg}
        try:
            got = self._wait_for("digest", rnd, attempt, members, deadline + self.cfg.exchange_timeout_s,
                                 allow_dead=True)
        except Excluded as ex:
            if ex.commit["digest"] != dg:
                raise
            # a member already committed this very result: take the digests that did arrive
            got = dict(self.mb.get("digest", rnd, attempt))
        for m, msg in got.items():
            digests[m] = msg["digest"]
            if msg["digest"] != dg:
                raise AttemptFailed(f"digest mismatch: peer {m} has {msg['digest'][:12]}, I have {dg[:12]}")
        return new_state, dg, digests
