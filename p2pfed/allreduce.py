"""One round of averaging among the live peers: group, butterfly all-reduce, digest agreement.

    ready    every peer broadcasts `ready(round, n_samples, recipe)` once its local steps are
             done. A peer whose recipe (recipe.py) differs from mine takes no part in my
             rounds; if such peers are not fewer than those sharing my recipe, I stop instead
    group    fast path: once every member of the last committed round and every other live
             peer is ready, each peer derives the group itself (the sorted ready ids, attempt
             0): no extra round trip. Otherwise (a failure, a straggler past ready_timeout_s)
             the lowest live id, the leader, proposes `group(round, attempt >= 1, members,
             weights)`.
    scatter  member i sends slice j of its flat float vector to member j (`part`)
    reduce   member j averages slice j over all members (weights = sample counts)
    gather   member j sends its averaged slice to everyone (`reduced`); the lowest member
             also sends its integer buffers, which everyone copies. Each peer hashes every
             1 MiB chunk of the result as soon as the chunk is complete.
    agree    everyone broadcasts its digest; when every live member's digest has arrived, the
             digest of a strict majority of the members is committed. A member outvoted by
             that majority (a dissenter) keeps nothing and downloads the committed model; no
             strict majority (a tie) fails the attempt.

Any failure in an attempt (a member dies, an `abort`, a newer `group`, the deadline) aborts
the attempt: the peer keeps its pre-round model and the leader proposes the next attempt
among the survivors. A peer that learns that the round was committed without it (a
`commit` notice) raises Excluded and the caller downloads the consensus instead.
Every wait blocks on the socket until a message, the deadline, or a possible death.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import averaging, protocol, recipe, roundstate, wire
from .mailbox import Mailbox

log = logging.getLogger("p2pfed.allreduce")

IMPLICIT = 0        # the attempt number of a group every peer derived from the ready messages


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


class Dissent(Exception):
    """A strict majority of the attempt's members agreed on a digest that differs from mine: the
    round is committed without my result, and I download theirs."""
    def __init__(self, rnd: int, digest: str, holders: list[int], mine: str):
        super().__init__(f"round {rnd}: my digest {mine[:12]} differs from {digest[:12]}, which peers {holders} "
                         f"(a strict majority) computed")
        self.round = rnd
        self.digest = digest
        self.holders = holders


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

    @property
    def sync_s(self) -> float:
        """ready -> commit."""
        return self.wait_s + self.averaging_s


class AllReduce:
    def __init__(self, transport, mailbox: Mailbox, acfg, all_peers: list[int],
                 fault: Callable[[str], bool | None] = lambda where: None,
                 on_phase: Callable[[str], None] = lambda phase: None):
        self.t = transport
        self.mb = mailbox
        self.cfg = acfg
        self.me = transport.me.id
        self.all_peers = sorted(all_peers)
        self.fault = fault
        self.on_phase = on_phase
        self.candidates: dict[str, OrderedDict] = {}   # digest -> result computed in an aborted attempt
        self.min_members = acfg.min_peers or len(self.all_peers) // 2 + 1
        self._quorum_logged = 0.0

    # ------------------------------------------------------------------ helpers
    def _broadcast(self, dests, kind: str, arrays=(), **fields) -> None:
        frames = wire.encode(kind, self.me, list(arrays), **fields)
        self.t.broadcast([d for d in dests if d != self.me], frames)

    def _check_commit(self, rnd: int) -> None:
        commits = self.mb.commits(rnd)
        if commits:
            raise Excluded(max(commits, key=lambda m: m["round"]))

    # ------------------------------------------------------------------ the round
    def run(self, rnd: int, state: "OrderedDict[str, np.ndarray]", n_samples: int,
            previous: list[int] | None = None, post: Callable[[dict], dict] | None = None) -> RoundResult:
        """Average `state` with the live peers for round rnd. previous: the members of the last
        round I committed (None: unknown, e.g. the first round: then all peers are expected).
        post: the round's result as a function of the exact mean of every exchanged entry (the
        outer step, outer.py); derived entries (roundstate.is_derived) are not sent, and the
        digest covers post's result. Raises Excluded, Behind or RoundError."""
        started = time.monotonic()
        bytes_before = self.t.bytes_sent
        state = roundstate.exchanged(state)
        flat = averaging.flatten(state)
        ints = OrderedDict((k, v) for k, v in state.items() if not averaging.is_float(v))
        self.mb.advance(rnd)
        self.candidates.clear()
        expected = set(previous if previous is not None else self.all_peers)
        self._broadcast(self.all_peers, "ready", round=rnd, n_samples=int(n_samples), recipe=self.mb.recipe)
        last_attempt, events = IMPLICIT - 1, []
        for tries in range(1, self.cfg.max_attempts + 1):
            attempt, members, weights = self._await_group(rnd, last_attempt, started, n_samples, expected)
            grouped_at = time.monotonic()
            try:
                new_state, dg, digests = self._attempt(rnd, attempt, members, weights, flat, ints, state, post)
            except AttemptFailed as e:
                reason = str(e)
                log.warning("attempt %d with %s failed: %s; keeping my pre-round model", attempt, members, reason)
                events.append(f"attempt {attempt} {members}: {reason}")
                self._broadcast(members, "abort", round=rnd, attempt=attempt, reason=reason[:200], dead=e.dead)
                last_attempt = max(attempt, last_attempt)
                self._backoff(min(1.0, protocol.BACKOFF_S * tries))
                # tell a possibly new leader that I am still ready for this round
                self._broadcast(self.all_peers, "ready", round=rnd, n_samples=int(n_samples), recipe=self.mb.recipe)
                continue
            self._broadcast(self.all_peers, "commit", round=rnd, digest=dg, members=members)
            dissenters = sorted(m for m, d in digests.items() if d != dg)
            if dissenters:
                log.warning("committed %s, the digest of a strict majority of %s; peers %s computed another "
                            "digest and will download this one", dg[:12], members, dissenters)
                events.append(f"attempt {attempt}: peers {dissenters} dissented (digest outvoted)")
            return RoundResult(new_state, dg, members, weights, attempt, time.monotonic() - grouped_at,
                               grouped_at - started, self.t.bytes_sent - bytes_before, digests, events)
        raise RoundError(f"round {rnd}: no attempt succeeded in {self.cfg.max_attempts} tries "
                         f"(averaging.max_attempts); last failures: {events[-3:]}")

    def _backoff(self, seconds: float) -> None:
        """Keep reading messages (aborts carry who died) for a moment before the next attempt."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.mb.pump(until - time.monotonic())

    def _ready(self, rnd: int, n_samples: int) -> dict[int, int]:
        """sender -> n_samples of the ready peers, me included (the mailbox files only readies
        that carry my recipe)."""
        ready = {m.sender: int(m["n_samples"]) for m in self.mb.get("ready", rnd).values()
                 if self.mb.live([m.sender]) and 0 < m["n_samples"] < 2**53}
        ready[self.me] = int(n_samples)
        return ready

    def _check_recipes(self, rnd: int) -> None:
        """Stop if the live peers with other options are not fewer than those sharing mine (me
        included): the majority keeps the run, and a tie stops both sides."""
        verdict = self.mb.judge_recipes()
        if verdict:
            peers, theirs = verdict
            raise RoundError(
                f"round {rnd}: peer {self.me} trains with other options than peers {peers} "
                f"({recipe.differences(self.mb.recipe, theirs)}), and they are not fewer than the peers that "
                f"share mine. Every peer of a run must use the same [data], [model] and [train] options "
                f"(docs/configuration.md): fix this peer's config and restart it; stopping")

    def _await_group(self, rnd: int, last_attempt: int, ready_at: float, n_samples: int, expected: set[int]):
        """Block until a group for an attempt > last_attempt includes me (or I derive or propose one)."""
        deadline = ready_at + self.cfg.ready_timeout_s + self.cfg.exchange_timeout_s * self.cfg.max_attempts
        while True:
            self._check_recipes(rnd)
            self._check_commit(rnd)
            for a, msg in self.mb.groups(rnd, last_attempt):
                members = [int(m) for m in msg["members"]]
                if self.me in members:
                    return a, members, [int(w) for w in msg["weights"]]
            live = self.mb.live(self.all_peers)
            for p in live:
                if p != self.me and self.mb.committed(p) >= rnd:
                    raise Behind(self.mb.committed(p), p)
            ready = self._ready(rnd, n_samples)
            if (last_attempt < IMPLICIT and expected - set(self.mb.foreign) <= set(ready) and set(live) <= set(ready)
                    and len(ready) >= self.min_members):
                members = sorted(ready)
                return IMPLICIT, members, [ready[m] for m in members]
            if live and min(live) == self.me:
                proposal = self._maybe_propose(rnd, live, ready_at, ready)
                if proposal:
                    return proposal
            if time.monotonic() > deadline:
                foreign = self.mb.live_foreign()
                raise RoundError(f"round {rnd}: no group formed within {deadline - ready_at:.0f} s "
                                 f"(live peers {live}, leader {min(live) if live else '?'}"
                                 + (f"; peers {sorted(foreign)} train with other options" if foreign else "")
                                 + "); check that every peer runs the same config")
            wake = deadline
            if live and min(live) == self.me and any(p not in ready for p in live):
                wake = min(wake, ready_at + self.cfg.ready_timeout_s)
            self.mb.wait(wake, watch=[p for p in self.all_peers if p not in ready])

    def _maybe_propose(self, rnd: int, live: list[int], ready_at: float, ready: dict[int, int]):
        waiting = [p for p in live if p not in ready]
        if waiting and time.monotonic() - ready_at < self.cfg.ready_timeout_s:
            return None
        members = sorted(ready)
        if len(members) < self.min_members:
            if not waiting and time.monotonic() - self._quorum_logged > 10:
                self._quorum_logged = time.monotonic()
                log.warning("only %s are live and ready; a round needs %d members (averaging.min_peers, "
                            "0 = a majority of %d) so that a cut-off minority cannot diverge; waiting",
                            members, self.min_members, len(self.all_peers))
            return None
        attempt = max(self.mb.max_attempt(rnd), IMPLICIT) + 1
        weights = [ready[m] for m in members]
        if waiting:
            log.warning("proposing without %s: not ready after ready_timeout_s=%s", waiting,
                        self.cfg.ready_timeout_s)
        log.info("proposing attempt %d: members %s, weights %s", attempt, members, weights)
        self._broadcast(self.all_peers, "group", round=rnd, attempt=attempt, members=members, weights=weights)
        return attempt, members, weights

    def _collect(self, kind: str, rnd: int, attempt: int, members: list[int], deadline: float,
                 on_message: Callable[[int, wire.Message], None], allow_dead: bool = False) -> set[int]:
        """Hand each `kind` message of every other member to on_message as it arrives; fail
        fast on a death, an abort or a newer group. Returns the members that delivered."""
        others = [m for m in members if m != self.me]
        done: set[int] = set()
        while True:
            got = self.mb.get(kind, rnd, attempt)
            for m in others:
                if m in got and m not in done:
                    done.add(m)
                    on_message(m, got[m])
            aborts = self.mb.get("abort", rnd, attempt)
            for m in others:
                if m in aborts:
                    raise AttemptFailed(f"peer {m} aborted: {aborts[m]['reason']}")
            if self.mb.groups(rnd, attempt):
                raise AttemptFailed("a newer attempt was proposed")
            missing = [m for m in others if m not in done]
            dead = [m for m in missing if not self.mb.alive(m)]
            if dead and not allow_dead:
                raise AttemptFailed(f"peer {dead[0]} died (silent for {self.cfg.dead_after_s} s)", dead)
            if not [m for m in missing if m not in dead]:
                return done
            if time.monotonic() > deadline:
                raise AttemptFailed(f"no {kind} from {missing} within exchange_timeout_s={self.cfg.exchange_timeout_s}")
            self._check_commit(rnd)
            self.mb.wait(deadline, watch=missing)

    def _attempt(self, rnd, attempt, members, weights, flat, ints, state, post):
        k, pos = len(members), members.index(self.me)
        bounds = averaging.shard_bounds(flat.size, k)
        lo, hi = bounds[pos]
        deadline = time.monotonic() + self.cfg.exchange_timeout_s
        self.on_phase(protocol.Phase.EXCHANGE)
        # scatter: my slice of shard j goes to member j
        corrupt = False
        for n, j in enumerate([j for j, m in enumerate(members) if m != self.me]):
            if n == (k - 1) // 2:
                corrupt = self.fault("exchange")  # fault injection: die with half the parts sent, or dissent
            self.t.send(members[j], wire.encode("part", self.me, [flat[bounds[j][0]:bounds[j][1]]], round=rnd,
                                                attempt=attempt, shard=j, members=members))
        if k == 1:
            corrupt = self.fault("exchange")
        slices = {self.me: flat[lo:hi]}

        def take_part(m: int, msg: wire.Message) -> None:
            if msg["shard"] != pos or msg["members"] != members:
                raise AttemptFailed(f"peer {m} sent shard {msg['shard']} of group {msg['members']}; "
                                    f"I expected shard {pos} of {members}")
            try:
                slices[m] = wire.check_shard(msg, hi - lo)
            except wire.WireError as e:
                raise AttemptFailed(f"peer {m}: {e}") from None

        self._collect("part", rnd, attempt, members, deadline, take_part)
        mine = averaging.weighted_mean([slices[m] for m in members], weights)
        # gather: my averaged shard goes to everyone; the lowest member adds its integer buffers
        source = averaging.integer_source(members)
        extra = list(ints.values()) if self.me == source else []
        self._broadcast(members, "reduced", [mine, *extra], round=rnd, attempt=attempt, shard=pos,
                        ints=list(ints.keys()) if self.me == source else [])
        out = np.empty_like(flat)
        # hash chunks as they arrive, unless a post-step changes the result (then it is hashed once, after)
        hasher = averaging.IncrementalDigest(out) if post is None else None
        out[lo:hi] = mine
        if corrupt and hi > lo:                  # fault injection: my own copy differs by one ulp (bad memory)
            out[lo] = np.nextafter(out[lo], np.float32(np.inf))
        if hasher:
            hasher.placed(lo, hi)
        int_values: dict = ints

        def take_reduced(m: int, msg: wire.Message) -> None:
            nonlocal int_values
            j = members.index(m)
            if msg["shard"] != j:
                raise AttemptFailed(f"peer {m} sent reduced shard {msg['shard']}, expected {j}")
            try:
                out[bounds[j][0]:bounds[j][1]] = wire.check_shard(msg, bounds[j][1] - bounds[j][0])
                if m == source:
                    int_values = wire.check_ints(msg["ints"], msg.arrays[1:], state)
            except wire.WireError as e:
                raise AttemptFailed(f"peer {m}: {e}") from None
            if hasher:
                hasher.placed(*bounds[j])

        self._collect("reduced", rnd, attempt, members, deadline, take_reduced)
        new_state = averaging.unflatten(out, int_values, state, copy=False)
        if hasher:
            dg = hasher.digest(averaging.layout(state), [new_state[k] for k in ints])
        else:                                    # the outer step, then one pass to hash its result
            new_state = post(new_state)
            dg = averaging.digest(new_state)
        self.candidates[dg] = new_state
        # agree: a strict majority of the members must report one digest. A member that dies
        # after the gather is skipped: its contribution is already in everyone's model.
        self._broadcast(members, "digest", round=rnd, attempt=attempt, digest=dg)
        digests = {self.me: dg}

        def take_digest(m: int, msg: wire.Message) -> None:
            digests[m] = msg["digest"]

        try:
            self._collect("digest", rnd, attempt, members, deadline + self.cfg.exchange_timeout_s, take_digest,
                          allow_dead=True)
        except Excluded as ex:
            # a member already committed; its digest is what the majority holds, or it broke the rule
            for m, msg in self.mb.get("digest", rnd, attempt).items():
                if m in members and m not in digests:
                    take_digest(m, msg)
            if ex.commit["digest"] != dg:
                holders = sorted(m for m, d in digests.items() if d == ex.commit["digest"]) or [ex.commit.sender]
                raise Dissent(rnd, ex.commit["digest"], holders, dg) from None
            return new_state, dg, digests        # it committed my result: it saw the majority
        verdict = averaging.majority(digests, len(members))
        if verdict is None:
            raise AttemptFailed(f"digests disagree and none is held by a strict majority of {members}: "
                                f"{ {m: d[:12] for m, d in sorted(digests.items())} }")
        if verdict != dg:
            raise Dissent(rnd, verdict, sorted(m for m, d in digests.items() if d == verdict), dg)
        return new_state, dg, digests
