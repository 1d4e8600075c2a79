"""Sample-target rounds (train.round_target = "samples"): how a round's images are shared out
among its members by their measured training speed, so that all of them finish their k steps at
about the same moment and a slow peer does not hold the round.

Each step of a round processes members x batch_size images in all, as in a round of equal
peers; member i's batch is that total times its speed over the sum of the speeds, rounded by
largest remainders (ties to the lower id) so that the batches add up to the total exactly. A
share below MIN_BATCH images (BatchNorm needs 2 to normalize in training) becomes MIN_BATCH. The
shares are each member's own scheduling decision, not part of the agreement: what makes the
mean exact and agreed is that every member is weighted by the images it reports in its `ready`.
"""
from __future__ import annotations

import math

MIN_BATCH = 2


def rate(samples: int, train_s: float) -> float | None:
    """Images per second of training, or None where it cannot be measured."""
    if samples <= 0 or not math.isfinite(train_s) or train_s <= 0:
        return None
    return samples / train_s


def shares(rates: dict[int, float | None], members: list[int], batch_size: int) -> dict[int, int]:
    """member -> its batch this round: len(members) x batch_size images shared by speed. A member
    without a measured rate counts at the mean of those measured (all equal when none is)."""
    if not members:
        return {}
    known = [r for m in members if (r := rates.get(m)) is not None and math.isfinite(r) and r > 0]
    mean = sum(known) / len(known) if known else 1.0
    speed = {m: r if (r := rates.get(m)) is not None and math.isfinite(r) and r > 0 else mean for m in members}
    total = len(members) * batch_size
    exact = {m: total * speed[m] / sum(speed.values()) for m in members}
    out = {m: math.floor(x) for m, x in exact.items()}
    for m in sorted(members, key=lambda m: (out[m] - exact[m], m))[:total - sum(out.values())]:
        out[m] += 1
    return {m: max(MIN_BATCH, b) for m, b in out.items()}
