"""What a round ends with, as values: the averaging returns one of Averaged, Download or Failed.

`Committed` is the one shape of a committed round state, used by the averaging, downloads,
evaluation and checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import roundstate


class RoundError(RuntimeError):
    """The peer cannot go on (a round failed for good, a download is impossible, a bad
    checkpoint): the message says why and what to do; the peer exits 1."""


@dataclass(frozen=True)
class Committed:
    """A committed round state: `digest` covers `state` exactly; `members` averaged it. The
    evaluated and exported model is a Committed too: the model part, with BatchNorm statistics
    pooled over all members when `bn_pooled`."""
    round: int
    digest: str
    members: tuple[int, ...]
    state: dict
    bn_pooled: bool = False

    def model(self) -> "Committed":
        """The model part alone, with its own digest (the same object when there is nothing else)."""
        part, dg = roundstate.model_of(self.state, self.digest)
        return self if dg == self.digest else Committed(self.round, dg, self.members, part)


@dataclass(frozen=True)
class Averaged:
    """The round was averaged with me: its result, and how it went."""
    committed: Committed
    weights: tuple[int, ...]
    attempt: int
    wait_s: float               # from ready to the accepted group (others' training, failed attempts)
    averaging_s: float          # from the accepted group to the commit (the last attempt)
    bytes_sent: int
    events: tuple[str, ...] = field(default=())

    @property
    def sync_s(self) -> float:
        """ready -> commit."""
        return self.wait_s + self.averaging_s


@dataclass(frozen=True)
class Download:
    """The round's consensus is someone else's result: download a round >= `round` (of exactly
    this `digest` for that round, when known). `claimant`: a peer whose heartbeat says it is
    ahead, not yet backed by a model; if none can be fetched, its claims are distrusted and the
    round is averaged after all."""
    round: int
    reason: str
    digest: str | None = None
    claimant: int | None = None


@dataclass(frozen=True)
class Failed:
    """The round cannot complete (attempts or deadlines exhausted, or this peer must stop).
    alone: no other peer is alive (the run has ended, or this peer is cut off)."""
    reason: str
    alone: bool = False
