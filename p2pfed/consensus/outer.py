"""The outer step: Nesterov momentum on the round's pseudo-gradient (SlowMo, Wang et al. 2020;
DiLoCo, Douillard et al. 2023), run identically by every member after the mean.

Every member holds the same previous round state (the anchor x and momentum m: they all adopted
the same committed result) and computes the same exact mean y of the round. With
d = x - y (the step the peers took together),

    m' = beta * m + d
    x' = x - lr * (d + beta * m')

for every trainable parameter; BatchNorm statistics, integer buffers and averaged optimizer
buffers take the mean. All arithmetic is elementwise float32 in this fixed order, so every
member computes the same bits, and the digest over (x', m') checks it. beta = 0 and lr = 1 would
give x' = y up to rounding; the peer then skips this step entirely. The first round has no agreed
anchor yet (the initial models may differ in their last bits across hosts), so its result is the
mean itself with zero momentum (`start`).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .roundstate import OUTER


def step(anchor: np.ndarray, mean: np.ndarray, momentum: np.ndarray, lr: float, beta: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """One outer step on float32 arrays; returns (new parameters, new momentum)."""
    lr32, beta32 = np.float32(lr), np.float32(beta)
    d = np.subtract(anchor, mean, dtype=np.float32)
    m = beta32 * np.asarray(momentum, np.float32) + d
    return anchor - lr32 * (d + beta32 * m), m


def start(mean: dict, like: dict) -> "OrderedDict[str, np.ndarray]":
    """The first round's result: the mean, with zero outer momentum (in the order of `like`)."""
    return OrderedDict((k, mean[k] if not k.startswith(OUTER) else np.zeros(v.shape, np.float32))
                       for k, v in like.items())


def apply(mean: dict, previous: dict, lr: float, beta: float) -> "OrderedDict[str, np.ndarray]":
    """The round's result from its exact mean (every exchanged entry) and the previous round
    state (anchor parameters and outer.* momentum), in the order of `previous`. The parameters
    stepped are those that have an outer.* momentum."""
    params = [k[len(OUTER):] for k in previous if k.startswith(OUTER)]
    stepped = {name: step(previous[name], mean[name], previous[OUTER + name], lr, beta) for name in params}
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, prev in previous.items():
        if name.startswith(OUTER):
            out[name] = stepped[name[len(OUTER):]][1]
        elif name in stepped:
            out[name] = stepped[name][0].reshape(prev.shape)
        else:                                   # BatchNorm statistics, integer and optimizer buffers
            out[name] = mean[name]
    return out
