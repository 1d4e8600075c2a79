"""train.auto_steps: how many local steps a round takes, and whether its shards are compressed,
chosen once from measured costs that the members agreed on.

Every member's round state carries two float32 entries (roundstate.AUTO):

    auto.cost    [exchange_s, step_s]: my mean time from `ready` to commit over the rounds
                 before, and my mean time per local step (both from round 2 on), sent every
                 round and averaged like everything else, so the mean is agreed bit for bit
    auto.choice  [multiplier, compress]: the choice in force (zeros before it is made)

After round DECIDE_ROUND every member computes the choice from that round's agreed `auto.cost`
(choose); from then on it sends the choice in `auto.choice`, so a peer that downloads a later
round reads it there (rounded to integers, which a compressed mean cannot disturb). Nobody
decides from its own clock alone. Pure: numpy only.
"""
from __future__ import annotations

import math

import numpy as np

DECIDE_ROUND = 4          # the choice is made from this round's agreed costs
MAX_MULTIPLIER = 4        # local_steps x at most this: x 16 lost 11 points in a 3-epoch run
                          # (docs/history/links.md, "train.auto_steps over the same links")
SHARE_TARGET = 0.2        # the exchange's share of a round the choice aims at
COST, CHOICE = "auto.cost", "auto.choice"


def choose(exchange_s: float, step_s: float, k: int, compression: str) -> tuple[int, bool]:
    """(multiplier of local_steps, turn int8 compression on). With rho = exchange_s / (k step_s),
    the exchange's share of a round is rho / (1 + rho); the multiplier m is the smallest power of
    two with rho / m <= SHARE_TARGET / (1 - SHARE_TARGET), at most MAX_MULTIPLIER. Compression is
    turned on (if it is off) when the exchange takes longer than the round's steps (rho > 1),
    and counted as halving the exchange."""
    if not (math.isfinite(exchange_s) and math.isfinite(step_s)) or step_s <= 0 or exchange_s <= 0 or k < 1:
        return 1, False
    rho = exchange_s / (k * step_s)
    compress = compression == "none" and rho > 1.0
    if compress:
        rho /= 2
    m = 1
    while m < MAX_MULTIPLIER and rho / m > SHARE_TARGET / (1 - SHARE_TARGET):
        m *= 2
    return m, compress


def entries(cost: tuple[float, float], choice: tuple[int, bool] | None) -> dict[str, np.ndarray]:
    """What I send in the auto.* entries of my round state."""
    m, compress = choice or (0, False)
    return {COST: np.array(cost, np.float32), CHOICE: np.array([m, float(compress)], np.float32)}


def decided(state: dict, rnd: int, k: int, compression: str) -> tuple[int, bool] | None:
    """The choice in force after committed round rnd, from its state: none before DECIDE_ROUND;
    made from the agreed auto.cost in DECIDE_ROUND (k: that round's local steps); read from
    auto.choice after it."""
    if rnd < DECIDE_ROUND or COST not in state:
        return None
    if rnd == DECIDE_ROUND:
        cost = np.asarray(state[COST], np.float64)
        return choose(float(cost[0]), float(cost[1]), k, compression)
    c = np.asarray(state[CHOICE], np.float64)
    m = int(round(float(c[0]))) if math.isfinite(c[0]) else 0
    return (min(max(m, 1), MAX_MULTIPLIER), bool(round(float(c[1])))) if m >= 1 else None
