"""How an exchange ends when it cannot finish, as values.

    Aborted(reason, dead)   a member aborted or died (dead: whom I saw die), something unusable
                            arrived, or the deadline passed: the attempt fails and is redone among
                            the survivors
    Superseded()            the leader proposed a newer attempt of the round: not a failure, its
                            group is already waiting
    Overtaken(commit)       someone committed the round meanwhile (commit: that message)
    RolledBack(sealed)      secure aggregation: members that have seen a sum of the round take
                            part, so the attempt commits the round's starting state (masked.py)
    Broken(reason)          secure aggregation: a masked sum did not cancel, so a member's masks
                            are wrong; a redo among the same members would fail alike, so the
                            round fails, naming why, and the others are told (an `abort`)

Code deep inside an exchange (a check of a received part, or synchronized BatchNorm's sums, called
from inside torch's forward and backward passes) ends it with `raise Ended(value)`. Each exchange
has exactly one handler that turns it back into the value (AllReduce's attempt, which routes
every end in one place, `AllReduce._route`; the BatchNorm pool, which reports it): no exception
leaves the consensus layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..net import wire


@dataclass(frozen=True)
class Aborted:
    reason: str
    dead: tuple[int, ...] = ()


@dataclass(frozen=True)
class Superseded:
    reason: str = "a newer attempt was proposed"


@dataclass(frozen=True)
class Overtaken:
    commit: wire.Message
    reason: str


@dataclass(frozen=True)
class RolledBack:
    sealed: tuple[int, ...]

    @property
    def reason(self) -> str:
        return f"peers {list(self.sealed)} have seen sums of this round; rolling back to the last committed round"


@dataclass(frozen=True)
class Broken:
    reason: str


End = Aborted | Superseded | Overtaken | RolledBack | Broken


class Ended(Exception):
    """Carries an End from deep inside an exchange to its one handler; never leaves consensus/."""

    def __init__(self, end: End):
        super().__init__(end.reason)
        self.end = end
