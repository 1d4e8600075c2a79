"""One attempt's butterfly all-reduce: scatter, reduce, gather (docs/protocol.md, steps 3-5).

    scatter  member i sends slice j of its flat float vector to member j (`part`)
    reduce   member j averages slice j over all members (float64, weights = sample counts)
    gather   member j sends its averaged slice to everyone (`reduced`); the lowest member also
             sends its integer buffers, which everyone copies. Each peer hashes every 1 MiB
             chunk of the result as soon as the chunk is complete.

Each member sends about 2x the model's float bytes whatever the group size. Anything wrong
(a death, an abort, a part for another group, a shard of the wrong length, the deadline) ends
the attempt with exchange.Interrupted.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..net import wire
from . import averaging, digest
from .exchange import Interrupted, Scope, collect
from .mailbox import Mailbox


@dataclass(frozen=True)
class Vector:
    """What I bring to a round: the exchanged state as one flat float32 vector, its integer
    buffers, and the state itself (names, shapes, dtypes)."""
    flat: np.ndarray
    ints: "OrderedDict[str, np.ndarray]"
    state: "OrderedDict[str, np.ndarray]"

    @classmethod
    def of(cls, state: "OrderedDict[str, np.ndarray]") -> "Vector":
        ints = OrderedDict((k, v) for k, v in state.items() if not averaging.is_float(v))
        return cls(averaging.flatten(state), ints, state)


def exchange(transport, mailbox: Mailbox, scope: Scope, weights: tuple[int, ...], mine: Vector, deadline: float,
             at_half: Callable[[], bool], post: Callable[[dict], dict] | None = None) -> tuple[dict, str]:
    """The attempt's result (the exact weighted mean, or post(mean)) and its digest.
    at_half(): called with half my parts sent (fault injection); True corrupts my own copy of
    the result by one ulp, as bad memory would."""
    b = _Butterfly(transport, mailbox, scope, mine, deadline)
    corrupt = b.scatter(at_half)
    reduced = b.reduce(weights)
    return b.gather(reduced, corrupt, post)


class _Butterfly:
    """One attempt's three steps, in the order they run; the shards are averaging.shard_bounds."""

    def __init__(self, transport, mailbox: Mailbox, scope: Scope, mine: Vector, deadline: float):
        self.t, self.mb, self.scope, self.mine, self.deadline = transport, mailbox, scope, mine, deadline
        self.me, self.members = mailbox.me, list(scope.members)
        self.pos = self.members.index(self.me)
        self.bounds = averaging.shard_bounds(mine.flat.size, len(self.members))

    def scatter(self, at_half: Callable[[], bool]) -> bool:
        """Send slice j of my vector to member j; at_half() is called with half of them sent."""
        corrupt = False
        others = [j for j, m in enumerate(self.members) if m != self.me]
        for n, j in enumerate(others):
            if n == len(others) // 2:
                corrupt = at_half()
            lo, hi = self.bounds[j]
            self.t.send(self.members[j], wire.encode("part", self.me, [self.mine.flat[lo:hi]], **self.scope.fields(),
                                                     shard=j, members=self.members))
        return at_half() if not others else corrupt

    def reduce(self, weights: tuple[int, ...]) -> np.ndarray:
        """The weighted mean of my shard over every member's slice of it."""
        lo, hi = self.bounds[self.pos]
        slices = {self.me: self.mine.flat[lo:hi]}

        def take_part(m: int, msg: wire.Message) -> None:
            if msg["shard"] != self.pos or msg["members"] != self.members:
                raise Interrupted(f"peer {m} sent shard {msg['shard']} of group {msg['members']}; "
                                  f"I expected shard {self.pos} of {self.members}")
            slices[m] = _shard(m, msg, hi - lo)

        collect(self.mb, "part", self.scope, self.deadline, take_part)
        return averaging.weighted_mean([slices[m] for m in self.members], list(weights))

    def gather(self, reduced: np.ndarray, corrupt: bool, post) -> tuple[dict, str]:
        """Send my reduced shard to everyone (the lowest member adds the integer buffers), place
        everyone's, and hash each chunk as soon as it is complete (once, after post, if any)."""
        mine, me, members = self.mine, self.me, self.members
        source = averaging.integer_source(members)
        extra = list(mine.ints.values()) if me == source else []
        self.t.broadcast(members, wire.encode("reduced", me, [reduced, *extra], **self.scope.fields(), shard=self.pos,
                                              ints=list(mine.ints.keys()) if me == source else []))
        out = np.empty_like(mine.flat)
        hasher = digest.IncrementalDigest(out) if post is None else None
        lo, hi = self.bounds[self.pos]
        out[lo:hi] = reduced
        if corrupt and hi > lo:
            out[lo] = np.nextafter(out[lo], np.float32(np.inf))
        if hasher:
            hasher.placed(lo, hi)

        def take_reduced(m: int, msg: wire.Message) -> None:
            j = members.index(m)
            if msg["shard"] != j:
                raise Interrupted(f"peer {m} sent reduced shard {msg['shard']}, expected {j}")
            out[self.bounds[j][0]:self.bounds[j][1]] = _shard(m, msg, self.bounds[j][1] - self.bounds[j][0])
            if hasher:
                hasher.placed(*self.bounds[j])

        collect(self.mb, "reduced", self.scope, self.deadline, take_reduced)
        result = averaging.unflatten(out, self._ints(source), mine.state, copy=False)
        if hasher:
            return result, hasher.digest(digest.layout(mine.state), [result[k] for k in mine.ints])
        result = post(result)
        return result, digest.digest(result)

    def _ints(self, source: int) -> dict:
        if self.me == source:
            return self.mine.ints
        msg = self.mb.get("reduced", self.scope.round, self.scope.attempt)[source]
        try:
            return wire.check_ints(msg["ints"], msg.arrays[1:], self.mine.state)
        except wire.WireError as e:
            raise Interrupted(f"peer {source}: {e}") from None


def _shard(m: int, msg: wire.Message, length: int) -> np.ndarray:
    try:
        return wire.check_shard(msg, length)
    except wire.WireError as e:
        raise Interrupted(f"peer {m}: {e}") from None
