"""One attempt's butterfly with secure aggregation (security.secure_aggregation; docs/protocol.md,
"Secure aggregation"): no member sees another member's part, only sums over every member.

    keys     the members' mask keys, from their `ready` (Mailbox.mask_keys)
    scatter  member i sends slice j of  encode(w_i x_i) + pair masks + its self-mask  to member j
             (`part`, codec m64), flagged `sealed` if it has already seen a sum of this round; the
             pair masks of slice j are those of the pairs without member j (secagg.part_masks)
    reduce   member j adds the parts of slice j mod 2^64: the pair masks cancel, the self-masks
             stay. If any part is flagged sealed, the attempt is a rollback (below).
    barrier  member j says `held` once it holds every part of slice j, and waits for every member's
    seeds    then releases its self-mask seed (`seed`); with every seed, member j removes the
             self-masks of slice j and checks that the masks cancelled: the weighted sum of slice j,
             decoded to float32
    reveal   member j sends that sum to every member (`reduced`): butterfly.py's gather, unchanged

Until every seed is out nobody can see any sum, so an attempt that fails before then is simply
redone among the survivors with fresh masks. A member that has seen a sum of the round (it held
every seed, or received a `reduced`) is *sealed*: a redo among fewer members would let it subtract
the two sums, so it flags its parts, and an attempt with any flagged part commits the round's
starting state (the last committed round) instead of a new mean: a rollback, which reveals
nothing. See docs/security.md.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..config import SECURE_MIN_MEMBERS
from ..net import clock, wire
from . import averaging, secagg
from .butterfly import Butterfly
from .ends import Aborted, Broken, Ended, RolledBack
from .exchange import Scope, collect
from .faultpoints import FaultPoint
from .group import IMPLICIT
from .mailbox import Mailbox

log = logging.getLogger("p2pfed.consensus.masked")

CODEC = "m64"                   # part codec of a masked shard: uint64, fixed point mod 2^64


class Ahead:
    """The masks of one attempt, computed before it starts (on a thread while the peer trains, or
    at once): secagg.masks for round rnd, attempt IMPLICIT (the group every member derives from
    the readies), these members' keys and a fresh seed. Used at most once, and only by exactly
    that attempt: any other round, attempt, member set, key or vector size gets fresh masks."""

    def __init__(self, key: secagg.MaskKey, me: int, rnd: int, keys: dict[int, str], size: int,
                 background: bool = True, degree: int = 0):
        self.label = (rnd, IMPLICIT, tuple(sorted(keys.items())), size)
        self.seed = secagg.new_seed()
        self._args = (key, me, keys, self.seed, rnd, IMPLICIT, averaging.shard_bounds(size, len(keys)), degree)
        self._masks: np.ndarray | None = None
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._compute, name=f"masks-r{rnd}", daemon=True)
            self._thread.start()
        else:
            self._compute()

    def _compute(self) -> None:
        try:
            self._masks = secagg.masks(*self._args)
        except Exception:  # noqa: BLE001  (a thread must not die loudly: the exchange computes them itself)
            log.exception("computing round %d's masks ahead failed; the exchange computes them", self.label[0])

    def masks(self, label: tuple, deadline: float) -> np.ndarray | None:
        """The masks, if they were computed for `label` and are ready by the deadline."""
        if label != self.label:
            return None
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - clock.now()))
            if self._thread.is_alive():
                return None
        return self._masks


@dataclass
class Secure:
    """A peer's side of secure aggregation: its mask key, and the round it is sealed in (if any).
    persist(round): keeps the seal where a restarted process of this peer finds it (the peer
    writes it atomically next to its checkpoint), called before the seal counts."""
    key: secagg.MaskKey = field(default_factory=secagg.MaskKey)
    sealed_round: int = 0
    persist: Callable[[int], None] = lambda rnd: None
    background: bool = True          # compute the next round's masks on a thread (the simulator: at once)
    degree: int = 0                  # security.mask_degree: pair masks with this many neighbours (0: all)
    ahead: Ahead | None = field(default=None, repr=False)

    def prepare(self, mailbox: Mailbox, rnd: int, members, size: int) -> None:
        """Start computing the masks of round rnd's derived attempt for these members (the last
        round's), so that the exchange, if its group is the same, is one add away. Without every
        member's mask key, nothing is prepared."""
        keys = {m: (self.key.public if m == mailbox.me else mailbox.mask_key(m)) for m in members}
        self.ahead = None
        if mailbox.me in keys and all(keys.values()) and len(keys) > 1:
            self.ahead = Ahead(self.key, mailbox.me, rnd, keys, size, self.background, self.degree)

    def take(self, rnd: int, attempt: int, keys: dict[int, str], size: int,
             deadline: float) -> tuple[np.ndarray, bytes] | None:
        """(masks, their seed) computed ahead for exactly this attempt, once; else None (and
        masks computed for another round, attempt, member set or keys are dropped)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        masks = ahead.masks((rnd, attempt, tuple(sorted(keys.items())), size), deadline)
        if masks is None:
            log.debug("round %d attempt %d: the masks computed ahead were for %s; computing new ones",
                      rnd, attempt, ahead.label[:2] + (sorted(m for m, _ in ahead.label[2]),))
            return None
        return masks, ahead.seed

    def sealed(self, rnd: int) -> bool:
        return self.sealed_round == rnd

    def seal(self, rnd: int) -> None:
        if self.sealed_round != rnd:
            self.persist(rnd)
        self.sealed_round = rnd

    def watch(self, mailbox: Mailbox) -> None:
        """Seal the round as soon as a filed seed lets me unmask a sum of it (could_unmask),
        before any code of mine looks at the sum; with persist, before a crash can lose it."""
        def filed(msg) -> None:
            if msg.kind == "seed" and not self.sealed(msg["round"]) and \
                    could_unmask(mailbox, msg["round"], msg["attempt"]):
                self.seal(msg["round"])
        mailbox.watchers.append(filed)


def member_keys(mailbox: Mailbox, scope: Scope, mine: secagg.MaskKey, deadline: float) -> dict[int, str]:
    """member -> mask key, waiting (the exchange's deadline and dead-member rules) for members
    whose `ready` with a key has not arrived yet, or came from a process before its restart
    (Mailbox.mask_key). A key I cannot agree a pair key with (my own key, a low-order point) ends
    the exchange, naming its peer."""
    if len(scope.members) < SECURE_MIN_MEMBERS:     # never a sum over two: it shows each the other's update
        raise Ended(Aborted(f"a masked exchange of {len(scope.members)} members {list(scope.members)}: secure "
                            f"aggregation needs at least {SECURE_MIN_MEMBERS}; not taking part"))
    others = scope.others(mailbox.me)
    while True:
        known = {m: mailbox.mask_key(m) for m in others}
        missing = [m for m in others if known[m] is None]
        if not missing:
            keys = {mailbox.me: mine.public, **known}
            for m in others:
                try:
                    mine.pair_key(keys[m])
                except ValueError as e:
                    raise Ended(Aborted(f"peer {m}'s mask key is unusable ({e})")) from None
            return keys
        dead = [m for m in missing if not mailbox.alive(m, scope.since)]
        if dead:
            raise Ended(Aborted(f"peer {dead[0]} died before its mask key arrived", tuple(dead)))
        if clock.now() > deadline:
            raise Ended(Aborted(f"no mask key from {missing} (security.secure_aggregation: a peer sends it in `ready`)"))
        mailbox.wait(deadline, watch=missing, since=scope.since)


def could_unmask(mailbox: Mailbox, rnd: int, attempt: int) -> bool:
    """Do I hold every other member's part and seed of this attempt? Then I could unmask my
    slice's sum, wherever I am in the exchange (a `held` that never came keeps me in the barrier
    while the others' seeds arrive)."""
    parts = mailbox.get("part", rnd, attempt)
    if not parts:
        return False
    members = next(iter(parts.values()))["members"]
    seeds = mailbox.get("seed", rnd, attempt)
    return all(m in parts and m in seeds for m in members if m != mailbox.me)


def masked_sum(transport, mailbox: Mailbox, secure: Secure, kind: str, scope: Scope, vector: np.ndarray,
               deadline: float) -> np.ndarray:
    """The sum over the members of their float64 `vector`s, each sent masked in 128-bit fixed
    point (BatchNorm sums: `bnsync`, `bnstats`). No self-masks: every member sees the sum at once."""
    keys = member_keys(mailbox, scope, secure.key, deadline)
    kd = secagg.keys_digest([keys[m] for m in scope.members])
    purpose = f"{kind}/{scope.seq}"
    mine = secagg.wide_add(secagg.wide_encode(vector),
                           secagg.pair_mask(secure.key, mailbox.me, keys, secagg.nonce(scope.round, scope.attempt,
                                                                                      scope.members, purpose),
                                            vector.size, words=2))
    transport.broadcast(scope.others(mailbox.me), wire.encode(kind, mailbox.me, [mine], **scope.fields(), keys=kd))
    total = [mine]

    def take(m: int, msg: wire.Message) -> None:
        arr = msg.arrays[0]
        if msg.header.get("keys") != kd or arr.dtype != secagg.U64 or arr.shape != mine.shape:
            raise Ended(Aborted(f"peer {m} sent a {kind} vector {arr.dtype}{list(arr.shape)} with keys "
                              f"{str(msg.header.get('keys', '-'))[:12]}; expected masked uint64{list(mine.shape)} "
                              f"with keys {kd[:12]}"))
        total[0] = secagg.wide_add(total[0], arr)

    collect(mailbox, kind, scope, deadline, take)
    try:
        secagg.check_wide_cancelled(total[0], len(scope.members))
    except secagg.NotCancelled as e:
        raise Ended(Broken(not_cancelled(f"the masked {kind} sum", scope.members, e))) from None
    return secagg.wide_decode(total[0])


def not_cancelled(what: str, members, e: secagg.NotCancelled) -> str:
    """Why a round fails whose masked sum did not cancel. A member's wrong masks spoil every
    shard but its own, and no reducer sees the others' shards, so the protocol cannot tell whose."""
    return (f"{what} did not cancel: a member's masks are wrong (a bug, another version of the protocol, or "
            f"a member that deviates from it), and the sum cannot say whose; nothing of it is revealed or "
            f"committed ({e}; members {list(members)})")


def exchange(transport, mailbox: Mailbox, scope: Scope, weights: tuple[int, ...], mine, deadline: float,
             secure: Secure, faults, post=None) -> tuple[dict, str]:
    """The attempt's result (the weighted mean, decoded from fixed point; or post(mean)) and its
    digest. Ends with Ended(Aborted) (a redo) or Ended(RolledBack) (commit the round's starting
    state). faults: at "exchange", "seed" and "reveal" (faultpoints.py)."""
    b = _MaskedButterfly(transport, mailbox, scope, mine, deadline, secure, weights, faults)
    corrupt = b.scatter()
    reduced = b.reduce(weights)
    return b.gather(reduced, corrupt, post)        # the reveal: butterfly.py's gather of float32 shards


class _MaskedButterfly(Butterfly):
    """The butterfly's attempt with a masked scatter and reduce; the gather is the plain one.
    The weights are known at the start: each member encodes its own weighted values."""

    REVEAL = True

    def __init__(self, transport, mailbox: Mailbox, scope: Scope, mine, deadline: float, secure: Secure,
                 weights: tuple[int, ...], faults):
        super().__init__(transport, mailbox, scope, mine, deadline, faults)
        self.secure, self.rnd, self.weights = secure, scope.round, weights

    def scatter(self) -> bool:
        """Send every other member its slice of my masked, weighted vector."""
        keys = member_keys(self.mb, self.scope, self.secure.key, self.deadline)
        self.kd = secagg.keys_digest([keys[m] for m in self.members])
        weight = float(self.weights[self.pos]) / float(sum(self.weights))
        ahead = self.secure.take(self.rnd, self.scope.attempt, keys, self.mine.flat.size, self.deadline)
        self.seed = ahead[1] if ahead else secagg.new_seed()
        try:
            masked = secagg.masked_vector(self.mine.flat, weight, self.secure.key, self.me, keys, self.seed,
                                          self.rnd, self.scope.attempt, self.bounds, ahead[0] if ahead else None,
                                          self.secure.degree)
        except secagg.RangeError as e:
            raise Ended(Aborted(f"my round state: {e}")) from None
        sealed = self._seen_sums()
        others = [j for j, m in enumerate(self.members) if m != self.me]
        corrupt = False
        for count, j in enumerate(others):
            if count == len(others) // 2:
                corrupt = self._at_half()
            lo, hi = self.bounds[j]
            self.t.send(self.members[j], wire.encode("part", self.me, [masked[lo:hi]], **self.scope.fields(), shard=j,
                                                     members=self.members, codec=CODEC, keys=self.kd, sealed=sealed))
        lo, hi = self.bounds[self.pos]
        self._own = masked[lo:hi].copy()
        self._sealed = [self.me] if sealed else []
        return self._at_half() if not others else corrupt

    def reduce(self, weights: tuple[int, ...]) -> np.ndarray:
        """The weighted mean of my slice: add every member's part (still self-masked; the weights
        are in the parts); any part flagged sealed makes the attempt a rollback; then the barrier
        (`held`) and the seeds; then unmask, checking that the masks cancelled."""
        lo, hi = self.bounds[self.pos]
        total = self._own                   # a copy: added to in place

        def take_part(m: int, msg: wire.Message) -> None:
            arr = msg.arrays[0]
            if (msg["shard"] != self.pos or msg["members"] != self.members or wire.codec_of(msg) != CODEC
                    or msg.header.get("keys") != self.kd or arr.size != hi - lo):
                raise Ended(Aborted(f"peer {m} sent {wire.codec_of(msg)} shard {msg['shard']} of group {msg['members']} "
                                  f"({arr.size} values, keys {str(msg.header.get('keys', '-'))[:12]}); I expected "
                                  f"{CODEC} shard {self.pos} of {self.members} ({hi - lo} values, keys {self.kd[:12]})"))
            if msg.header.get("sealed"):
                self._sealed.append(m)
            np.add(total, arr, out=total)

        collect(self.mb, "part", self.scope, self.deadline, take_part)
        if self._sealed:
            raise Ended(RolledBack(tuple(sorted(self._sealed))))
        if self._seen_sums():               # a sum of an earlier attempt arrived since my scatter: no `held`,
            raise Ended(Aborted("I received a sum of an earlier attempt of this round after sending my parts; "
                                "my next parts say so (a rollback)"))      # so nobody sends me a seed
        self._barrier("held", {})
        self.faults.at(self.rnd, FaultPoint.SEED)
        seeds = {self.me: self.seed}

        def take_seed(m: int, msg: wire.Message) -> None:
            seeds[m] = bytes.fromhex(msg["seed"])
            if len(seeds) == len(self.members):
                self.secure.seal(self.rnd)  # with every seed I can see my slice's sum: no redo among fewer

        self._barrier("seed", {"seed": self.seed.hex()}, take_seed)
        self.secure.seal(self.rnd)
        try:
            return secagg.unmasked(total, seeds, self.me, self.rnd, self.scope.attempt, lo, hi)
        except secagg.NotCancelled as e:
            raise Ended(Broken(not_cancelled(f"the masked sum of my shard {self.pos}", self.members, e))) from None

    def _seen_sums(self) -> bool:
        """Have I seen a sum of this round: my own slice's, or anyone's `reduced`?"""
        return self.secure.sealed(self.rnd) or self.mb.filed("reduced", self.rnd)

    def _barrier(self, kind: str, fields: dict, take: Callable | None = None) -> None:
        self.t.broadcast(self.scope.others(self.me), wire.encode(kind, self.me, **self.scope.fields(), **fields))
        collect(self.mb, kind, self.scope, self.deadline, take or (lambda m, msg: None))
