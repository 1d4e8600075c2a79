"""Pooled BatchNorm statistics of a committed round: one gather and one agreement (exchange.py).

Each member brings a float64 vector of per-layer sums of its own data (learning/bnstats.py
computes it); the members' vectors are added in member order, so every member computes the
same bytes; `build` turns the sum into the pooled model, whose digest the members compare
(`bndigest`). The pooled model is used only if every live member holds the same digest; any
failure (a member dies, a vector of the wrong shape, the deadline, differing digests) returns
the reason instead, and the caller evaluates the plain consensus.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..net import clock, wire
from . import digest as digest_mod
from . import masked
from .ends import Aborted, Ended
from .exchange import Scope, agree, collect
from .mailbox import Mailbox
from .secagg import RangeError


def combine(vectors: list[np.ndarray]) -> np.ndarray:
    """Sum of the members' vectors, in the order given (members sorted by id), in float64."""
    total = np.zeros_like(vectors[0], dtype=np.float64)
    for v in vectors:
        total += v
    return total


def pool(transport, mailbox: Mailbox, rnd: int, members: tuple[int, ...], mine: np.ndarray,
         build: Callable[[np.ndarray], dict], timeout_s: float,
         secure: masked.Secure | None = None) -> tuple[dict, str] | str:
    """(the pooled state, its agreed digest), or why there is none. secure: the vectors travel
    masked and only their sum is seen (secure aggregation); a failure is not retried."""
    scope = Scope(rnd, -1, tuple(sorted(members)), overtaken_by_commit=False)
    deadline = clock.now() + timeout_s
    if secure:
        try:
            total = masked.masked_sum(transport, mailbox, secure, "bnstats", scope, mine, deadline)
            pooled = build(total)
            dg = digest_mod.digest(pooled)
            digests = agree(transport, mailbox, "bndigest", scope, dg, deadline)
        except (Ended, RangeError) as stop:
            return f"round {rnd}: pooled BatchNorm statistics failed ({stop})"
        return _agreed(rnd, pooled, dg, digests)
    transport.broadcast(scope.others(mailbox.me), wire.encode("bnstats", mailbox.me, [mine], round=rnd))
    vectors = {mailbox.me: mine}

    def take(m: int, msg: wire.Message) -> None:
        arr = msg.arrays[0]
        if arr.shape != mine.shape or arr.dtype != np.float64:
            raise Ended(Aborted(f"peer {m} sent BatchNorm statistics of shape {list(arr.shape)} {arr.dtype}, "
                              f"expected {list(mine.shape)} float64"))
        vectors[m] = arr

    try:
        collect(mailbox, "bnstats", scope, deadline, take)
        pooled = build(combine([vectors[m] for m in scope.members]))
        dg = digest_mod.digest(pooled)
        digests = agree(transport, mailbox, "bndigest", scope, dg, deadline)
    except Ended as stop:
        return f"round {rnd}: pooled BatchNorm statistics failed ({stop.end.reason})"
    return _agreed(rnd, pooled, dg, digests)


def _agreed(rnd: int, pooled: dict, dg: str, digests: dict[int, str]) -> tuple[dict, str] | str:
    wrong = {m: d[:12] for m, d in digests.items() if d != dg}
    if wrong:
        return f"round {rnd}: pooled BatchNorm digests differ ({wrong} vs mine {dg[:12]})"
    return pooled, dg
