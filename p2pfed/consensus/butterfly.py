"""One attempt's butterfly all-reduce: scatter, reduce, gather (docs/protocol.md, steps 3-5).

    scatter  member i sends slice j of its flat float vector to member j (`part`)
    reduce   member j averages slice j over all members (float64, weights = sample counts)
    gather   member j sends its averaged slice to everyone (`reduced`); the lowest member also
             sends its integer buffers, which everyone copies. Each peer hashes every 1 MiB
             chunk of the result as soon as the chunk is complete.

Each member sends about 2x the model's float bytes whatever the group size; compressed
(train.compression, compress.py), the delta from the last committed round in half or a quarter
of that. Anything wrong
(a death, an abort, a part for another group, a shard of the wrong length, the deadline) ends
the attempt: `Ended(Aborted(...))` (ends.py).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..net import wire
from . import averaging, compress, digest
from .ends import Aborted, Ended
from .exchange import Scope, collect
from .faultpoints import FaultPoint
from .mailbox import Mailbox


@dataclass(frozen=True)
class Vector:
    """What I bring to a round: the exchanged state as one flat float32 vector, its integer
    buffers, and the state itself (names, shapes, dtypes). With a codec other than f32 what
    travels is the delta from `anchor` (the last committed round's flat vector), and `feedback`
    carries the rounding errors (compress.py)."""
    flat: np.ndarray
    ints: "OrderedDict[str, np.ndarray]"
    state: "OrderedDict[str, np.ndarray]"
    codec: str = "f32"
    anchor: np.ndarray | None = None
    base: str = ""                                 # the anchor's digest
    feedback: compress.ErrorFeedback | None = None

    @classmethod
    def of(cls, state: "OrderedDict[str, np.ndarray]") -> "Vector":
        ints = OrderedDict((k, v) for k, v in state.items() if not averaging.is_float(v))
        return cls(averaging.flatten(state), ints, state)

    def compressed(self, codec: str, anchor: np.ndarray, base: str, feedback: compress.ErrorFeedback) -> "Vector":
        """This vector sent as its delta from anchor (of digest base) in codec."""
        if anchor.shape != self.flat.shape:
            raise ValueError(f"anchor of {anchor.size} values for a vector of {self.flat.size}")
        return dataclasses.replace(self, codec=codec, anchor=anchor, base=base, feedback=feedback)

    def header(self) -> dict:
        """The part/reduced fields naming the codec (none for float32: those frames are unchanged)."""
        return {} if self.codec == "f32" else {"codec": self.codec, "base": self.base}


def exchange(transport, mailbox: Mailbox, scope: Scope, weights: tuple[int, ...], mine: Vector, deadline: float,
             faults, post: Callable[[dict], dict] | None = None) -> tuple[dict, str]:
    """The attempt's result (the exact weighted mean, or post(mean)) and its digest.
    faults.at(round, "exchange") is called with half my parts sent (faultpoints.py); True
    corrupts my own copy of the result by one ulp, as bad memory would."""
    b = Butterfly(transport, mailbox, scope, mine, deadline, faults)
    corrupt = b.scatter()
    reduced = b.reduce(weights)
    return b.gather(reduced, corrupt, post)


class Butterfly:
    """One attempt's three steps, in the order they run; the shards are averaging.shard_bounds."""

    REVEAL = False          # the masked butterfly calls faults at "reveal", with half its sums sent

    def __init__(self, transport, mailbox: Mailbox, scope: Scope, mine: Vector, deadline: float, faults):
        self.t, self.mb, self.scope, self.mine, self.deadline = transport, mailbox, scope, mine, deadline
        self.faults = faults
        self.me, self.members = mailbox.me, list(scope.members)
        self.pos = self.members.index(self.me)
        self.bounds = averaging.shard_bounds(mine.flat.size, len(self.members))

    def _at_half(self) -> bool:
        return bool(self.faults.at(self.scope.round, FaultPoint.EXCHANGE))

    def scatter(self) -> bool:
        """Send slice j of my vector to member j; the fault point `exchange` comes with half of them sent.
        Compressed: slice j of (my vector - anchor + my carried error), encoded; what rounding
        loses is my next carried error."""
        mine, codec = self.mine, self.mine.codec
        corrupt = False
        others = [j for j, m in enumerate(self.members) if m != self.me]
        if codec != "f32":
            delta = mine.flat - mine.anchor + mine.feedback.carried(mine.flat.size)
            decoded = np.empty_like(delta)
        for n, j in enumerate(others + [self.pos]):     # my own slice last: it is not sent
            if n == len(others) // 2 and others:
                corrupt = self._at_half()
            lo, hi = self.bounds[j]
            if codec == "f32":
                payload = [mine.flat[lo:hi]]
            else:
                payload, decoded[lo:hi] = compress.roundtrip(codec, delta[lo:hi])
            if j != self.pos:
                self.t.send(self.members[j], wire.encode("part", self.me, payload, **self.scope.fields(), shard=j,
                                                         members=self.members, **mine.header()))
        lo, hi = self.bounds[self.pos]
        self._own = mine.flat[lo:hi] if codec == "f32" else decoded[lo:hi]
        if codec != "f32":
            self._sent_error = delta - decoded
        return self._at_half() if not others else corrupt

    def reduce(self, weights: tuple[int, ...]) -> np.ndarray:
        """The weighted mean of my shard over every member's slice of it (a delta, compressed)."""
        lo, hi = self.bounds[self.pos]
        slices = {self.me: self._own}

        def take_part(m: int, msg: wire.Message) -> None:
            if msg["shard"] != self.pos or msg["members"] != self.members:
                raise Ended(Aborted(f"peer {m} sent shard {msg['shard']} of group {msg['members']}; "
                                  f"I expected shard {self.pos} of {self.members}"))
            slices[m] = self._decode(m, msg, hi - lo)

        collect(self.mb, "part", self.scope, self.deadline, take_part)
        return averaging.weighted_mean([slices[m] for m in self.members], list(weights))

    def gather(self, reduced: np.ndarray, corrupt: bool, post) -> tuple[dict, str]:
        """Send my reduced shard to everyone (the lowest member adds the integer buffers), place
        everyone's, and hash each chunk as soon as it is complete (once, after post, if any)."""
        mine, me, members, codec = self.mine, self.me, self.members, self.mine.codec
        lo, hi = self.bounds[self.pos]
        if codec == "f32":
            payload, own = [reduced], reduced
        else:                                   # the mean delta, with my carried error for this shard
            carried = reduced + mine.feedback.carried_reduced(lo, hi)
            payload, delta = compress.roundtrip(codec, carried)
            mine.feedback.stage(self._sent_error, (lo, hi), carried - delta)
            own = mine.anchor[lo:hi] + delta
        source = averaging.integer_source(members)
        extra = list(mine.ints.values()) if me == source else []
        frames = wire.encode("reduced", me, [*payload, *extra], **self.scope.fields(), shard=self.pos,
                             ints=list(mine.ints.keys()) if me == source else [], **mine.header())
        others = self.scope.others(me)
        for count, m in enumerate(others):
            if count == len(others) // 2 and self.REVEAL:
                self.faults.at(self.scope.round, FaultPoint.REVEAL)
            self.t.send(m, frames)
        out = np.empty_like(mine.flat)
        hasher = digest.IncrementalDigest(out) if post is None else None
        out[lo:hi] = own
        if corrupt and hi > lo:
            out[lo] = np.nextafter(out[lo], np.float32(np.inf))
        if hasher:
            hasher.placed(lo, hi)

        def take_reduced(m: int, msg: wire.Message) -> None:
            j = members.index(m)
            if msg["shard"] != j:
                raise Ended(Aborted(f"peer {m} sent reduced shard {msg['shard']}, expected {j}"))
            b0, b1 = self.bounds[j]
            got = self._decode(m, msg, b1 - b0)
            out[b0:b1] = got if codec == "f32" else mine.anchor[b0:b1] + got
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
            return wire.check_ints(msg["ints"], msg.arrays[compress.n_arrays(self.mine.codec):], self.mine.state)
        except wire.WireError as e:
            raise Ended(Aborted(f"peer {source}: {e}")) from None

    def _decode(self, m: int, msg: wire.Message, length: int) -> np.ndarray:
        """A received shard as float32 values; anything that does not fit ends the attempt."""
        codec, base = wire.codec_of(msg), msg.header.get("base", "")
        if codec != self.mine.codec or base != self.mine.base:
            raise Ended(Aborted(f"peer {m} sent a {codec} {msg.kind} shard from base {base[:12] or '-'}; this attempt "
                              f"sends {self.mine.codec} from base {self.mine.base[:12] or '-'}"))
        try:
            return compress.decode(self.mine.codec, msg.arrays, length)
        except compress.CodecError as e:
            raise Ended(Aborted(f"peer {m}: {msg.kind} shard {msg['shard']}: {e}")) from None
