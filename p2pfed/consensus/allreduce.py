"""One round of averaging among the live peers, returned as a value: Averaged, Download or Failed.

    ready, group    group.py: who averages this round (derived from the readies, or proposed)
    exchange        butterfly.py: scatter, reduce, gather; the result hashed as it arrives
    agree           every member broadcasts its digest; the digest of a strict majority of the
                    members is committed. A member outvoted by that majority (a dissenter)
                    keeps nothing and downloads the committed model; no strict majority (a tie)
                    fails the attempt.
    commit          tell everyone (late peers download from the committers)

Any failure in an attempt (a member dies, an `abort`, a newer `group`, the deadline) aborts
it: the peer keeps its pre-round model, says `abort` to the group, and waits for the next
group among the survivors. A round done without this peer (a `commit`, or a live peer whose
heartbeat claims it) is a Download, unless the commit is of a result this peer computed too.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from ..net import clock, protocol, wire
from . import averaging, compress, masked, roundstate
from .butterfly import Vector, exchange
from .ends import Aborted, Broken, End, Ended, Overtaken, RolledBack, Superseded
from .exchange import Scope, agree, majority
from .faultpoints import NoFaults
from .group import IMPLICIT, Group, GroupFormation
from .mailbox import Mailbox
from .masked import Secure
from .outcome import Averaged, Committed, Download, Failed

log = logging.getLogger("p2pfed.consensus.allreduce")


class Progress:
    """What the averaging tells its caller as it goes (the peer maps it to its stage)."""
    WAITING = "waiting"          # ready; waiting for a group
    TRAINING = "training"        # synchronized training within the attempt's group (work)
    EXCHANGING = "exchanging"    # in an attempt's exchange and agreement


@dataclass(frozen=True)
class _Dissent:
    """A strict majority committed another digest than mine."""
    download: Download


class AllReduce:
    def __init__(self, transport, mailbox: Mailbox, acfg, all_peers: list[int],
                 faults=None, on_progress: Callable[[str], None] = lambda progress: None, codec: str = "f32",
                 secure: Secure | None = None):
        """faults: has at(round, point) -> bool (faultpoints.py; the run's fault injector; None: none).
        codec: how shards travel when they can be compressed (compress.py; train.compression).
        secure: secure aggregation's keys and state (masked.py); None: shards travel in the clear."""
        self.t = transport
        self.mb = mailbox
        self.cfg = acfg
        self.me = mailbox.me
        self.all_peers = sorted(all_peers)
        self.secure = secure
        self.groups = GroupFormation(transport, mailbox, acfg, all_peers, mask_key=secure.key.public if secure else "")
        self.faults = faults if faults is not None else NoFaults()
        self.on_progress = on_progress
        self.dissents = 0            # consecutive rounds in which a majority outvoted my digest
        self.codec = codec
        self.feedback = compress.ErrorFeedback()

    def run(self, rnd: int, state: dict | None, n_samples: int, previous: list[int] | None = None,
            post: Callable[[dict], dict] | None = None,
            work: Callable[[Group, Scope], dict] | None = None,
            anchor: tuple[str, dict] | None = None) -> Averaged | Download | Failed:
        """Average `state` with the live peers for round rnd. previous: the members of the last
        round I committed (None: unknown, e.g. the first round: then all peers are expected).
        post: the round's result as a function of the exact mean of every exchanged entry (the
        outer step); derived entries are not sent, and the digest covers post's result.
        work: synchronized training (train.batchnorm = "sync"). Then `ready` is sent before the
        round's training, and each attempt's group runs work(group, scope), which trains
        together through the scope (stepsync.py) and returns the state to average; an Ended
        from it (raised inside torch's passes) ends the attempt like any other.
        anchor: (digest, round state) of the round I start from, committed in round rnd - 1.
        With it, a derived group (attempt 0: every member was a member of that round) sends its
        shards compressed as deltas from it; every other attempt, and a round without an anchor,
        sends float32 (compress.py)."""
        started, bytes_before = clock.now(), self.t.bytes_sent
        mine = Vector.of(roundstate.exchanged(state)) if work is None else None
        self.mb.advance(rnd)
        expected = set(previous if previous is not None else self.all_peers)
        self.groups.ready(rnd, n_samples)
        last_attempt, events, candidates = -1, [], {}
        try:
            for tries in range(1, self.cfg.max_attempts + 1):
                self.on_progress(Progress.WAITING)
                group = self.groups.await_group(rnd, last_attempt, started, n_samples, expected)
                if not isinstance(group, Group):
                    return self._adopt_computed(group, rnd, candidates, events)
                grouped_at = clock.now()
                outcome = self._attempt(rnd, group, mine, post, candidates, events, work, anchor)
                if isinstance(outcome, Committed) and group.attempt == IMPLICIT:
                    self.feedback.commit()         # this attempt's rounding errors are carried on
                else:
                    self.feedback.drop()
                if isinstance(outcome, Superseded):
                    last_attempt = max(group.attempt, last_attempt)
                    continue
                if isinstance(outcome, Aborted):
                    events.append(f"attempt {group.attempt} {list(group.members)}: {outcome.reason}")
                    last_attempt = max(group.attempt, last_attempt)
                    self._abort(rnd, group, outcome, tries)
                    # tell a possibly new leader that I am still ready, and the last attempt I took part in
                    # (not a newer proposal I may have filed meanwhile: its members would take my ready
                    # for a sign that I am not in it)
                    self.groups.ready(rnd, n_samples, tried=last_attempt)
                    continue
                if isinstance(outcome, _Dissent):
                    return self._dissent(outcome.download, rnd)
                if isinstance(outcome, Committed):
                    self.dissents = 0
                    if self.secure and mine is not None:   # the next round's masks, while I train
                        self.secure.prepare(self.mb, rnd + 1, outcome.members, mine.flat.size)
                    return Averaged(outcome, group.weights, group.attempt, grouped_at - started,
                                    clock.now() - grouped_at, self.t.bytes_sent - bytes_before, tuple(events))
                return outcome
            return Failed(f"round {rnd}: no attempt succeeded in {self.cfg.max_attempts} tries "
                          f"(averaging.max_attempts); last failures: {events[-3:]}")
        finally:
            self.groups.withdraw()

    def _attempt(self, rnd: int, group: Group, mine: Vector | None, post, candidates: dict, events: list,
                 work=None, anchor=None) -> Committed | Download | _Dissent | Superseded | Aborted:
        scope = Scope(rnd, group.attempt, group.members)
        try:
            if work is not None:
                self.on_progress(Progress.TRAINING)
                mine = Vector.of(roundstate.exchanged(work(group, scope)))
            mine = self._compressed(mine, group, anchor)
            self.on_progress(Progress.EXCHANGING)
            deadline = clock.now() + self.cfg.exchange_timeout_s
            if self.secure:
                result, dg = masked.exchange(self.t, self.mb, scope, group.weights, mine, deadline, self.secure,
                                             self.faults, post=post)
            else:
                result, dg = exchange(self.t, self.mb, scope, group.weights, mine, deadline, self.faults, post=post)
        except Ended as stop:
            routed = self._route(stop.end, rnd, group, candidates, events, anchor)
            if not isinstance(routed, tuple):
                return routed
            dg, result = routed                     # a rollback: agree on the round's starting state
            deadline = clock.now() + self.cfg.exchange_timeout_s
        candidates[dg] = result
        # agree: a member that dies after the gather is skipped: its contribution is in everyone's model
        try:
            digests = agree(self.t, self.mb, "digest", scope, dg, deadline + self.cfg.exchange_timeout_s)
            verdict = majority(digests, len(group.members))
        except Ended as stop:
            verdict = self._route(stop.end, rnd, group, candidates, events, anchor, agreeing=True)
            if not isinstance(verdict, str):
                return verdict
        if verdict is None:
            return Aborted(f"digests disagree and none is held by a strict majority of {list(group.members)}: "
                           f"{ {m: d[:12] for m, d in sorted(digests.items())} }")
        if verdict != dg:
            return _Dissent(Download(rnd, f"round {rnd}: my digest {dg[:12]} differs from {verdict[:12]}, which a "
                                          f"strict majority of {list(group.members)} computed", digest=verdict))
        self.t.broadcast(self.all_peers, wire.encode("commit", self.me, round=rnd, digest=dg,
                                                     members=list(group.members)))
        dissenters = sorted(m for m, msg in self.mb.get("digest", rnd, group.attempt).items()
                            if m in group.members and msg["digest"] != dg)
        if dissenters:
            log.warning("committed %s, the digest of a strict majority of %s; peers %s computed another digest and "
                        "will download this one", dg[:12], list(group.members), dissenters)
            events.append(f"attempt {group.attempt}: peers {dissenters} dissented (digest outvoted)")
        return Committed(rnd, dg, group.members, result)

    def _route(self, end: End, rnd: int, group: Group, candidates: dict, events: list, anchor,
               agreeing: bool = False):
        """The one place where an attempt's end (ends.py) decides what the round does next: an
        outcome for run(), or what the attempt goes on with (a rollback: the round's starting
        state as (digest, state), before agreeing; an overtaking commit's digest, while agreeing)."""
        if self.secure and not agreeing and not isinstance(end, RolledBack) \
                and self.mb.get("reduced", rnd, group.attempt):
            self.secure.seal(rnd)              # I hold a sum of this round: never take part in one over fewer
        match end:
            case RolledBack(sealed=sealed):
                if anchor is None:
                    return Aborted(f"{end.reason}, but I hold no committed round {rnd - 1} (a round without an "
                                   f"anchor cannot be rolled back)")
                log.warning("round %d, attempt %d: %s", rnd, group.attempt, end.reason)
                events.append(f"attempt {group.attempt}: rolled back to round {rnd - 1} (peers {list(sealed)} had "
                              f"seen sums of an earlier attempt)")
                return anchor
            case Overtaken(commit=c) if agreeing:
                return c["digest"]             # a member already committed: its digest is the majority's
            case Overtaken(commit=c):
                if c["round"] == rnd and c["digest"] in candidates:   # a result of mine, from an earlier attempt
                    return Committed(rnd, c["digest"], tuple(c["members"]), candidates[c["digest"]])
                return Download(c["round"], end.reason, digest=c["digest"])
            case Broken(reason=reason):
                log.error("round %d, attempt %d: %s", rnd, group.attempt, reason)
                self._tell_abort(rnd, group, Aborted(reason))
                return Failed(f"round {rnd}: {reason}. Check that every peer runs the same p2pfed version; stopping")
            case Superseded() | Aborted():
                return end

    def _compressed(self, mine: Vector, group: Group, anchor) -> Vector:
        """mine as this attempt sends it: compressed in a derived group with an anchor, else float32."""
        if self.codec == "f32" or anchor is None or group.attempt != IMPLICIT or self.secure:
            return mine
        base, state = anchor
        flat = averaging.flatten(roundstate.exchanged(state))
        if flat.shape != mine.flat.shape:
            return mine
        return mine.compressed(self.codec, flat, base, self.feedback)

    def _adopt_computed(self, outcome: Download | Failed, rnd: int, candidates: dict, events: list):
        """The round was committed while I waited for a group: if it is a result I computed in an
        earlier attempt, it is mine too; anything else stands."""
        if isinstance(outcome, Download) and outcome.round == rnd and outcome.digest in candidates:
            commit = next(c for c in self.mb.commits(rnd) if c["digest"] == outcome.digest)
            return Averaged(Committed(rnd, outcome.digest, tuple(commit["members"]), candidates[outcome.digest]),
                            (), 0, 0.0, 0.0, 0, tuple(events))
        return outcome

    def _dissent(self, download: Download, rnd: int) -> Download | Failed:
        self.dissents += 1
        if self.dissents >= protocol.MAX_CONSECUTIVE_DISSENT:
            return Failed(f"peer {self.me}: in {self.dissents} rounds in a row (the last {rnd}) my model's digest "
                          f"differed from the one a strict majority computed. This peer's computation differs from "
                          f"the others': check that it runs the same p2pfed version and config, and its hardware "
                          f"(memory); stopping")
        log.warning("%s; keeping nothing of this round, downloading the committed model (dissent %d of at most %d in "
                    "a row)", download.reason, self.dissents, protocol.MAX_CONSECUTIVE_DISSENT - 1)
        return download

    def _tell_abort(self, rnd: int, group: Group, failure: Aborted) -> None:
        """Tell the attempt's members that it failed, why, and whom I saw die."""
        self.t.broadcast(group.members, wire.encode("abort", self.me, round=rnd, attempt=group.attempt,
                                                    reason=failure.reason[:protocol.REASON_MAX_CHARS],
                                                    dead=list(failure.dead)))

    def _abort(self, rnd: int, group: Group, failure: Aborted, tries: int) -> None:
        log.warning("attempt %d with %s failed: %s; keeping my pre-round model", group.attempt, list(group.members),
                    failure.reason)
        self._tell_abort(rnd, group, failure)
        # keep reading messages (aborts carry who died) for a moment before the next attempt
        until = clock.now() + min(protocol.BACKOFF_MAX_S, protocol.BACKOFF_S * tries)
        while clock.now() < until:
            self.mb.pump(until - clock.now())
