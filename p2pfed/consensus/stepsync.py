"""Sums over a round's members inside its training: what synchronized BatchNorm exchanges, once
per BatchNorm layer in the forward pass and once in the backward pass of every step (`bnsync`).

Each call is one gather of a small float64 vector from every member (exchange.collect: the same
deadline, dead-member and abort rules as the averaging), numbered in call order (`seq`): every
member makes the same calls in the same order, since they run the same model on the same number
of steps. The sum is taken in member order in float64, so every member gets the same bytes.
Anything wrong ends the step with Ended(Aborted(...)) (ends.py), which crosses torch's forward or
backward pass to the attempt's handler, which turns it into a failure:
the members restore the round's starting state and redo it among the survivors.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..net import clock, wire
from . import masked
from .ends import Aborted, Ended
from .exchange import Scope, collect
from .mailbox import Mailbox
from .secagg import RangeError


class StepSync:
    def __init__(self, transport, mailbox: Mailbox, scope: Scope, timeout_s: float, secure: masked.Secure | None = None):
        """secure: send each vector masked (secure aggregation): every member sees only the sum."""
        self.t, self.mb, self.scope, self.timeout_s, self.secure = transport, mailbox, scope, timeout_s, secure
        self.seq = 0

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        """The sum over the members of their `vector` (float64, the same length on every member)."""
        scope = dataclasses.replace(self.scope, seq=self.seq)
        self.seq += 1
        mine = np.ascontiguousarray(vector, dtype=np.float64)
        if self.secure:
            try:
                total = masked.masked_sum(self.t, self.mb, self.secure, "bnsync", scope, mine,
                                          clock.now() + self.timeout_s)
            except RangeError as e:          # a sum beyond the fixed-point range
                raise Ended(Aborted(f"BatchNorm sums of call {scope.seq}: {e}")) from None
            self.mb.drop("bnsync", scope.round, scope.attempt, scope.seq)
            return total
        self.t.broadcast(scope.others(self.mb.me), wire.encode("bnsync", self.mb.me, [mine], **scope.fields()))
        got = {self.mb.me: mine}

        def take(m: int, msg: wire.Message) -> None:
            arr = msg.arrays[0]
            if arr.shape != mine.shape:
                raise Ended(Aborted(f"peer {m} sent BatchNorm sums of length {arr.size} in call {scope.seq}, "
                                  f"expected {mine.size}"))
            got[m] = arr

        collect(self.mb, "bnsync", scope, clock.now() + self.timeout_s, take)
        self.mb.drop("bnsync", scope.round, scope.attempt, scope.seq)
        total = np.zeros_like(mine)
        for m in scope.members:
            total += got[m]
        return total
