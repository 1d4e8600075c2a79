"""Gather and agree: the one way members combine values.

Used by the round's butterfly (`part`, `reduced`, then `digest`) and by pooled BatchNorm
statistics (`bnstats`, then `bndigest`); any later exchange goes through here too. Every
exchange has one deadline and one rule for faults: a member that aborts, dies (silent for
dead_after_s) or is replaced by a newer group ends the exchange, and so does a `commit` of the
round by someone else (the round went on without this exchange). Whatever a member sends is
validated by the caller's `accept` before it counts.

An exchange that cannot finish ends as a value (ends.py: Aborted, Superseded, Overtaken), carried
by `Ended` to the exchange's one handler (AllReduce's attempt, the BatchNorm pool).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..net import clock, wire
from .ends import Aborted, Ended, Overtaken, Superseded
from .mailbox import Mailbox


@dataclass(frozen=True)
class Scope:
    """Who exchanges what: one round, one attempt (-1: an exchange without attempts, such as
    the BatchNorm statistics of a committed round), these members (sorted), whether a `commit`
    of the round by another peer ends it, and when the exchange began (monotonic): a member
    counts as heard from then at the latest, so a peer that another member vouched for by putting
    it in the group gets dead_after_s to show up."""
    round: int
    attempt: int
    members: tuple[int, ...]
    overtaken_by_commit: bool = True
    since: float = field(default_factory=clock.now)
    seq: int = -1                   # the call number of a bnsync exchange within the attempt (stepsync.py)

    def others(self, me: int) -> list[int]:
        return [m for m in self.members if m != me]

    def fields(self) -> dict:
        """The header fields that place a message in this exchange."""
        return {"round": self.round, **({"attempt": self.attempt} if self.attempt >= 0 else {}),
                **({"seq": self.seq} if self.seq >= 0 else {})}


def collect(mailbox: Mailbox, kind: str, scope: Scope, deadline: float,
            accept: Callable[[int, wire.Message], None], allow_dead: bool = False) -> set[int]:
    """Hand each other member's `kind` message of this scope to accept(member, msg) as it
    arrives (accept raises Ended to reject it); return the members that delivered.
    With allow_dead, a member that dies is skipped instead of ending the exchange (a member
    that dies after the gather has already contributed)."""
    others = scope.others(mailbox.me)
    done: set[int] = set()
    while True:
        got = mailbox.get(kind, scope.round, scope.attempt, scope.seq)
        for m in others:
            if m in got and m not in done:
                done.add(m)
                accept(m, got[m])
        if scope.attempt >= 0:
            aborts = mailbox.get("abort", scope.round, scope.attempt)
            for m in others:
                if m in aborts:
                    raise Ended(Aborted(f"peer {m} aborted: {aborts[m]['reason']}"))
            readies = mailbox.get("ready", scope.round)
            for m in others:
                # a member ready again since this attempt began, having seen it or a later one: it is
                # not in this attempt (it ignores a group whose attempt it has already passed)
                r = readies.get(m)
                if r is not None and r.received > scope.since and r.header.get("tried", 0) >= scope.attempt > 0:
                    raise Ended(Aborted(f"peer {m} has tried attempt {r['tried']} of round {scope.round}; this "
                                        f"attempt {scope.attempt} is behind it"))
            if mailbox.groups(scope.round, scope.attempt):
                raise Ended(Superseded())
        missing = [m for m in others if m not in done]
        dead = [m for m in missing if not mailbox.alive(m, scope.since)]
        if dead and not allow_dead:
            raise Ended(Aborted(f"peer {dead[0]} died (silent for {mailbox.dead_after_s} s)", tuple(dead)))
        if not [m for m in missing if m not in dead]:
            return done
        if clock.now() > deadline:
            raise Ended(Aborted(f"no {kind} from {missing} within the exchange's deadline"))
        if scope.overtaken_by_commit:
            commits = mailbox.commits(scope.round)
            if commits:
                newest = max(commits, key=lambda c: c["round"])
                raise Ended(Overtaken(newest, f"round {newest['round']} was committed by peer {newest.sender}"))
        mailbox.wait(deadline, watch=missing, since=scope.since)


def agree(transport, mailbox: Mailbox, kind: str, scope: Scope, mine: str, deadline: float) -> dict[int, str]:
    """Broadcast my digest of the exchange's result and collect the other members' (a member
    that dies now is skipped). Returns member -> digest, me included; the caller applies its
    rule (the round: a strict majority, agreement.majority; BatchNorm statistics: all equal)."""
    transport.broadcast(scope.others(mailbox.me), wire.encode(kind, mailbox.me, **scope.fields(), digest=mine))
    digests = {mailbox.me: mine}

    def take(m: int, msg: wire.Message) -> None:
        digests[m] = msg["digest"]

    collect(mailbox, kind, scope, deadline, take, allow_dead=True)
    return digests


def majority(digests: dict[int, str], n_members: int) -> str | None:
    """The digest held by a strict majority of an attempt's n_members members (members that
    died before sending theirs count against every digest), or None: a tie or no majority."""
    counts: dict[str, int] = {}
    for d in digests.values():
        counts[d] = counts.get(d, 0) + 1
    best = max(counts, key=counts.get, default=None)
    return best if best is not None and 2 * counts[best] > n_members else None
